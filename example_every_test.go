package redlease_test

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/redlease/redlease"
)

// Every runs a periodic job once per slot across all the processes that
// run it; here two Lockers stand for two processes. Each 100ms slot runs
// on one of them, never on both, and while one is alive no slot is missed.
func ExampleLocker_Every() {
	client, stop := startRedis()
	defer stop()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	var mu sync.Mutex // runs never overlap; the mutex is for the race detector's sake
	runs := 0
	sweep := func(ctx context.Context) error {
		mu.Lock()
		defer mu.Unlock()
		runs++
		fmt.Println("sweeping expired sessions, run", runs)
		if runs == 3 {
			cancel() // stops both processes
		}
		return nil // an error would be logged, and the next slot runs all the same
	}

	var wg sync.WaitGroup
	errs := make([]error, 2)
	for i := range errs {
		locker := redlease.NewLocker(client)
		defer locker.Close()
		wg.Go(func() { errs[i] = locker.Every(ctx, "sweep-sessions", 100*time.Millisecond, sweep) })
	}
	wg.Wait()
	fmt.Println(errs[0], errs[1])
	// Output:
	// sweeping expired sessions, run 1
	// sweeping expired sessions, run 2
	// sweeping expired sessions, run 3
	// context canceled context canceled
}
