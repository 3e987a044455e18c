// Command pubsub publishes orders on one topic with two durable
// subscriptions, billing and shipping, each consumed by its own pool of
// handlers, and a live listener that stands in for a cache. Billing fails
// once on one order, which is retried in billing only; shipping never sees
// the failure. The program prints what each part does, then each
// subscription's stats, and exits. It uses the Redis at REDIS_ADDR, or an
// embedded miniredis when REDIS_ADDR is unset.
package main

import (
	"context"
	"errors"
	"fmt"
	"log"
	"os"
	"sync"
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

	// The options are every subscription's defaults; Subscribe can add its own.
	orders := redlease.NewTopic(client, "orders",
		redlease.WithPrefix("example"),
		redlease.WithLease(5*time.Second),
		redlease.WithMaxAttempts(3),
		redlease.WithRetryBackoff(func(attempt int) time.Duration { return 100 * time.Millisecond }),
	)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	// Subscriptions are durable: they receive every message published from
	// now on, whether or not anyone consumes them yet. Subscribing again
	// (the next run of this program) finds the same ones.
	billing, err := orders.Subscribe(ctx, "billing")
	if err != nil {
		log.Fatal(err)
	}
	shipping, err := orders.Subscribe(ctx, "shipping")
	if err != nil {
		log.Fatal(err)
	}

	// A listener sees messages live, at most once, and only while it
	// listens: fine for dropping a cache entry, not for work that must be
	// done. Listen returns once it is subscribed, so it sees every message
	// published after this.
	listenCtx, stopListening := context.WithCancel(ctx)
	defer stopListening()
	events, err := orders.Listen(listenCtx)
	if err != nil {
		log.Fatal(err)
	}
	var heard atomic.Int32
	var listening sync.WaitGroup
	listening.Go(func() {
		for ev := range events { // closes when listenCtx ends
			fmt.Printf("cache: drop %q\n", ev.Payload)
			heard.Add(1)
		}
	})

	// A batch in one round trip, then an order due later. A delayed message
	// waits in each subscription; listeners hear of it at once.
	var batch [][]byte
	for i := 1; i <= 5; i++ {
		batch = append(batch, fmt.Appendf(nil, "order %d", i))
	}
	if _, err := orders.PublishBatch(ctx, batch); err != nil {
		log.Fatal(err)
	}
	if _, err := orders.Publish(ctx, []byte("order 6"), redlease.WithDelay(300*time.Millisecond)); err != nil {
		log.Fatal(err)
	}
	const total = 6

	// Each subscription is a Queue with its own claims, retries and dead
	// letters. Billing's failure on order 3 is retried in billing only.
	var consuming sync.WaitGroup
	consume := func(name string, q *redlease.Queue, h func(m *redlease.Message) error) {
		consuming.Go(func() {
			var done atomic.Int32
			consumeCtx, stop := context.WithCancel(ctx)
			defer stop()
			err := q.Consume(consumeCtx, func(ctx context.Context, m *redlease.Message) error {
				if err := h(m); err != nil {
					fmt.Printf("%s: attempt %d of %q failed: it will be retried\n", name, m.Attempt, m.Payload)
					return err
				}
				if done.Add(1) == total {
					stop()
				}
				return nil
			}, redlease.WithConcurrency(2))
			if !errors.Is(err, context.Canceled) {
				log.Fatal(err)
			}
		})
	}
	var declined atomic.Bool
	consume("billing", billing, func(m *redlease.Message) error {
		if string(m.Payload) == "order 3" && declined.CompareAndSwap(false, true) {
			return errors.New("payment gateway timed out")
		}
		fmt.Printf("billing: charged %q (attempt %d)\n", m.Payload, m.Attempt)
		return nil
	})
	consume("shipping", shipping, func(m *redlease.Message) error {
		fmt.Printf("shipping: packed %q (attempt %d)\n", m.Payload, m.Attempt)
		return nil
	})
	consuming.Wait()

	// The listener has most likely heard every event by now. Give it a
	// moment if not, then stop it: its channel closes.
	for i := 0; heard.Load() < total && i < 100; i++ {
		time.Sleep(10 * time.Millisecond)
	}
	stopListening()
	listening.Wait()

	for _, s := range []struct {
		name string
		q    *redlease.Queue
	}{{"billing", billing}, {"shipping", shipping}} {
		stats, err := s.q.Stats(ctx)
		if err != nil {
			log.Fatal(err)
		}
		fmt.Printf("%s: stats %+v\n", s.name, stats)
	}
	fmt.Printf("cache: %d events heard\n", heard.Load())
}
