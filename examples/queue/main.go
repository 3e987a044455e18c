// Command queue runs a producer and a pool of workers on one queue: the
// producer enqueues a batch and a few delayed messages, the workers handle
// them (one fails once and is retried, one can never succeed and is
// dead-lettered at once), and the program prints the dead letters and the
// stats and exits. It uses the Redis at REDIS_ADDR, or an embedded miniredis
// when REDIS_ADDR is unset.
package main

import (
	"context"
	"errors"
	"fmt"
	"log"
	"os"
	"sync/atomic"
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
		addr = mr.Addr()
		fmt.Println("REDIS_ADDR unset: using an embedded miniredis at", addr)
	}
	client := redis.NewClient(&redis.Options{Addr: addr})
	defer client.Close()

	queue := redlease.NewQueue(client, "emails",
		redlease.WithPrefix("example"),
		redlease.WithLease(5*time.Second),
		redlease.WithMaxAttempts(3),
		redlease.WithRetryBackoff(func(attempt int) time.Duration { return 100 * time.Millisecond }),
	)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	// Producer: a batch in one round trip, then two delayed messages.
	batch := [][]byte{[]byte("welcome email to nobody@")} // no valid address: no retry will help
	for i := 1; i <= 20; i++ {
		batch = append(batch, fmt.Appendf(nil, "welcome email #%d", i))
	}
	if _, err := queue.EnqueueBatch(ctx, batch); err != nil {
		log.Fatal(err)
	}
	for _, d := range []time.Duration{300 * time.Millisecond, 600 * time.Millisecond} {
		if _, err := queue.Enqueue(ctx, fmt.Appendf(nil, "reminder after %v", d), redlease.WithDelay(d)); err != nil {
			log.Fatal(err)
		}
	}
	const total = 23

	// Workers: four handlers at once; stop once every message is done.
	// When consumeCtx ends, handlers still running get 5s to finish.
	var done atomic.Int32
	failedOnce := atomic.Bool{}
	consumeCtx, stop := context.WithCancel(ctx)
	err := queue.Consume(consumeCtx, func(ctx context.Context, m *redlease.Message) error {
		if string(m.Payload) == "welcome email to nobody@" {
			fmt.Printf("%q cannot be sent: dead-lettered at once\n", m.Payload)
			if done.Add(1) == total {
				stop()
			}
			return fmt.Errorf("no valid address: %w", redlease.ErrSkipRetry)
		}
		if string(m.Payload) == "welcome email #7" && failedOnce.CompareAndSwap(false, true) {
			fmt.Printf("attempt %d of %q failed: it will be retried\n", m.Attempt, m.Payload)
			return errors.New("smtp server busy")
		}
		fmt.Printf("sent %q (attempt %d)\n", m.Payload, m.Attempt)
		if done.Add(1) == total {
			stop()
		}
		return nil
	}, redlease.WithConcurrency(4), redlease.WithShutdownTimeout(5*time.Second))
	if !errors.Is(err, context.Canceled) {
		log.Fatal(err)
	}
	dead, err := queue.DeadLetters(ctx, 10)
	if err != nil {
		log.Fatal(err)
	}
	for _, d := range dead {
		fmt.Printf("dead letter %q after %d attempt(s): %s\n", d.Payload, d.Attempts, d.Err)
	}
	stats, err := queue.Stats(ctx)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("done: %d messages handled; stats %+v\n", done.Load(), stats)
	// queue.RetryDead(ctx) would move the dead letter back to ready, and
	// queue.DeleteDead(ctx) would delete it.
}
