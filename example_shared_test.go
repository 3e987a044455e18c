package redlease_test

import (
	"context"
	"errors"
	"fmt"
	"log"

	"github.com/redlease/redlease"
)

// Readers share a lock; a writer excludes them, and while it waits new
// readers wait behind it.
func ExampleLocker_ObtainShared() {
	client, stop := startRedis()
	defer stop()
	locker := redlease.NewLocker(client)
	defer locker.Close()
	ctx := context.Background()

	r1, err := locker.ObtainShared(ctx, "catalog")
	if err != nil {
		log.Fatal(err)
	}
	r2, err := locker.ObtainShared(ctx, "catalog")
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("two readers hold it:", r1.Shared(), r2.Shared())

	_, err = locker.TryObtain(ctx, "catalog")
	fmt.Println("a writer's attempt:", errors.Is(err, redlease.ErrNotObtained))

	if err := r1.Release(ctx); err != nil {
		log.Fatal(err)
	}
	if err := r2.Release(ctx); err != nil {
		log.Fatal(err)
	}
	w, err := locker.TryObtain(ctx, "catalog")
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("the writer's fence is above the readers':", w.Fence() > r2.Fence())
	if err := w.Release(ctx); err != nil {
		log.Fatal(err)
	}
	// Output:
	// two readers hold it: true true
	// a writer's attempt: true
	// the writer's fence is above the readers': true
}

// WithLimit makes shared leases a semaphore: at most n at once, across
// every process; each permit is a lease, so a crashed holder's permit comes
// back when its TTL ends.
func ExampleWithLimit() {
	client, stop := startRedis()
	defer stop()
	locker := redlease.NewLocker(client)
	defer locker.Close()
	ctx := context.Background()

	var permits []*redlease.Lock
	for i := range 3 {
		lk, err := locker.TryObtainShared(ctx, "exports", redlease.WithLimit(2))
		if err != nil {
			fmt.Printf("export %d: %v\n", i, errors.Is(err, redlease.ErrNotObtained))
			continue
		}
		fmt.Printf("export %d runs\n", i)
		permits = append(permits, lk)
	}
	for _, lk := range permits {
		if err := lk.Release(ctx); err != nil {
			log.Fatal(err)
		}
	}
	// Output:
	// export 0 runs
	// export 1 runs
	// export 2: true
}

// DoShared runs a function under a shared lease, cancelling its context if
// the lease is lost.
func ExampleLocker_DoShared() {
	client, stop := startRedis()
	defer stop()
	locker := redlease.NewLocker(client)
	defer locker.Close()
	ctx := context.Background()

	err := locker.DoShared(ctx, "catalog", func(ctx context.Context) error {
		fmt.Println("serving reads")
		return nil
	})
	fmt.Println("done:", err)
	// Output:
	// serving reads
	// done: <nil>
}
