package redlease_test

import (
	"context"
	"fmt"
	"log"
	"time"

	"github.com/redlease/redlease"
)

func ExampleLocker_Inspect() {
	client, stop := startRedis()
	defer stop()
	ctx := context.Background()
	locker := redlease.NewLocker(client)
	defer locker.Close()

	lock, err := locker.TryObtain(ctx, "invoice:42", redlease.WithTTL(10*time.Second))
	if err != nil {
		log.Fatal(err)
	}
	info, err := locker.Inspect(ctx, "invoice:42")
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("held:", info.Held, "by us:", info.Holder == lock.Token(), "fence:", info.Fence)

	if err := lock.Release(ctx); err != nil {
		log.Fatal(err)
	}
	info, err = locker.Inspect(ctx, "invoice:42")
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("held:", info.Held, "waiters:", info.WaiterCount)
	// Output:
	// held: true by us: true fence: 1
	// held: false waiters: 0
}
