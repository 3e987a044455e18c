// Command lock runs two workers that take turns holding one lock and print
// who holds it with which fencing token. It uses the Redis at REDIS_ADDR,
// or an embedded miniredis when REDIS_ADDR is unset.
package main

import (
	"context"
	"fmt"
	"log"
	"os"
	"sync"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"

	"github.com/redlease/redlease"
)

func main() {
	addr := os.Getenv("REDIS_ADDR")
	if addr == "" {
		mr, err := miniredis.Run()
		if err != nil {
			log.Fatal(err)
		}
		defer mr.Close()
		mr.ClockTTL(true) // expire keys by the wall clock, as Redis does
		addr = mr.Addr()
		fmt.Println("REDIS_ADDR unset: using an embedded miniredis at", addr)
	}
	client := redis.NewClient(&redis.Options{Addr: addr})
	defer client.Close()

	locker := redlease.NewLocker(client, redlease.WithPrefix("example"))
	defer locker.Close()

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	// The resource checks fences: a write with a fence lower than one it
	// has seen comes from a holder whose lease ended, and is refused.
	var mu sync.Mutex
	var highest int64
	write := func(worker string, fence int64) error {
		mu.Lock()
		defer mu.Unlock()
		if fence <= highest {
			return fmt.Errorf("stale fence %d (seen %d)", fence, highest)
		}
		highest = fence
		return nil
	}

	var wg sync.WaitGroup
	for _, worker := range []string{"alice", "bob"} {
		wg.Go(func() {
			for range 3 {
				lock, err := locker.Obtain(ctx, "report", redlease.WithTTL(2*time.Second))
				if err != nil {
					log.Fatalf("%s: %v", worker, err)
				}
				fmt.Printf("%-5s holds %q with fence %d\n", worker, lock.Key(), lock.Fence())
				if err := write(worker, lock.Fence()); err != nil {
					log.Fatalf("%s: %v", worker, err)
				}
				select {
				case <-time.After(200 * time.Millisecond): // work
				case <-lock.Lost():
					log.Fatalf("%s lost the lock: %v", worker, lock.Err())
				}
				if err := lock.Release(ctx); err != nil {
					log.Fatalf("%s: %v", worker, err)
				}
				fmt.Printf("%-5s released it\n", worker)
			}
		})
	}
	wg.Wait()
	fmt.Println("done: every write carried a larger fence than the one before")
}
