package redlease_test

import (
	"context"
	"fmt"
	"log"

	"github.com/redis/go-redis/v9"

	"github.com/redlease/redlease"
)

// A quorum Locker keeps each lease on a majority of independent Redis
// masters, so its locks survive the loss of a minority of them.
func ExampleNewQuorumLocker() {
	ctx := context.Background()
	var nodes []redis.UniversalClient
	var stops []func()
	for range 3 {
		client, stop := startRedis()
		defer stop()
		nodes = append(nodes, client)
		stops = append(stops, stop)
	}
	locker := redlease.NewQuorumLocker(nodes)
	defer locker.Close()

	lock, err := locker.Obtain(ctx, "migration")
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("obtained on 3 nodes, fence", lock.Fence())
	if err := lock.Release(ctx); err != nil {
		log.Fatal(err)
	}

	stops[2]() // one node goes down: two of three are still a majority
	lock, err = locker.Obtain(ctx, "migration")
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("obtained on 2 nodes, fence", lock.Fence())
	if err := lock.Release(ctx); err != nil {
		log.Fatal(err)
	}
	// Output:
	// obtained on 3 nodes, fence 1
	// obtained on 2 nodes, fence 2
}
