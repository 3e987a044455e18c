package redlease_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"slices"
	"time"

	"github.com/redlease/redlease"
)

func ExampleQueue_Consume() {
	client, stop := startRedis()
	defer stop()
	queue := redlease.NewQueue(client, "emails", redlease.WithLease(30*time.Second), redlease.WithMaxAttempts(5))

	for _, to := range []string{"ann", "bob", "cyd"} {
		if _, err := queue.Enqueue(context.Background(), []byte(to)); err != nil {
			log.Fatal(err)
		}
	}

	// Consume runs the handler on each message until ctx ends (here, once
	// all three are sent; in a service, at shutdown). WithConcurrency(n)
	// runs n handlers at once.
	ctx, cancel := context.WithCancel(context.Background())
	sent := 0
	err := queue.Consume(ctx, func(ctx context.Context, m *redlease.Message) error {
		fmt.Printf("email to %s (attempt %d)\n", m.Payload, m.Attempt)
		if sent++; sent == 3 {
			cancel()
		}
		return nil // acks; an error or a panic nacks
	})
	fmt.Println(err)

	stats, err := queue.Stats(context.Background())
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("%+v\n", stats)
	// Output:
	// email to ann (attempt 1)
	// email to bob (attempt 1)
	// email to cyd (attempt 1)
	// context canceled
	// {Ready:0 Delayed:0 InFlight:0 Dead:0}
}

// Claim, Ack, Nack and Extend give a consumer full control over each claim.
func ExampleQueue_Claim() {
	client, stop := startRedis()
	defer stop()
	ctx := context.Background()
	// Retry a nacked message at once (the default backoff waits 1s, then more).
	queue := redlease.NewQueue(client, "invoices",
		redlease.WithRetryBackoff(func(attempt int) time.Duration { return 0 }))

	if _, err := queue.Enqueue(ctx, []byte("invoice 42")); err != nil {
		log.Fatal(err)
	}
	m, err := queue.Claim(ctx) // waits for a message
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("%s, attempt %d: failed\n", m.Payload, m.Attempt)
	if err := m.Nack(ctx); err != nil { // deliver it again after the backoff
		log.Fatal(err)
	}

	m, err = queue.Claim(ctx)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("%s, attempt %d: done\n", m.Payload, m.Attempt)
	if err := m.Extend(ctx, time.Minute); err != nil { // the claim lasts a minute from now
		log.Fatal(err)
	}
	if err := m.Ack(ctx); err != nil {
		log.Fatal(err)
	}

	// A claim that is over (acked, nacked, expired, or claimed by another
	// consumer since) can no longer ack, nack or extend.
	err = m.Ack(ctx)
	fmt.Println(errors.Is(err, redlease.ErrNotHeld))
	// Output:
	// invoice 42, attempt 1: failed
	// invoice 42, attempt 2: done
	// true
}

// A message whose last attempt fails is moved to the dead-letter list.
func ExampleQueue_DeadLetters() {
	client, stop := startRedis()
	defer stop()
	ctx := context.Background()
	queue := redlease.NewQueue(client, "payments", redlease.WithMaxAttempts(1))

	if _, err := queue.Enqueue(ctx, []byte("charge 10 EUR"), redlease.WithID("payment-7")); err != nil {
		log.Fatal(err)
	}
	m, err := queue.Claim(ctx)
	if err != nil {
		log.Fatal(err)
	}
	if err := m.Nack(ctx); err != nil { // the first attempt was the last
		log.Fatal(err)
	}

	dead, err := queue.DeadLetters(ctx, 10)
	if err != nil {
		log.Fatal(err)
	}
	for _, d := range dead {
		fmt.Printf("%s %q: %d attempt(s)\n", d.ID, d.Payload, d.Attempts)
	}
	// Output:
	// payment-7 "charge 10 EUR": 1 attempt(s)
}

func ExampleWithID() {
	client, stop := startRedis()
	defer stop()
	ctx := context.Background()
	queue := redlease.NewQueue(client, "orders")

	// While a message with this id is ready, delayed or in flight, the same
	// id is refused: a producer can retry without enqueueing twice.
	for range 2 {
		_, err := queue.Enqueue(ctx, []byte("ship order 42"), redlease.WithID("order-42"))
		fmt.Println("duplicate:", errors.Is(err, redlease.ErrDuplicate))
	}
	// Output:
	// duplicate: false
	// duplicate: true
}

func ExampleWithDelay() {
	client, stop := startRedis()
	defer stop()
	ctx := context.Background()
	queue := redlease.NewQueue(client, "reminders")

	if _, err := queue.Enqueue(ctx, []byte("renew your plan"), redlease.WithDelay(50*time.Millisecond)); err != nil {
		log.Fatal(err)
	}
	stats, err := queue.Stats(ctx)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("delayed:", stats.Delayed)

	m, err := queue.Claim(ctx) // waits until the message is due
	if err != nil {
		log.Fatal(err)
	}
	if err := m.Ack(ctx); err != nil {
		log.Fatal(err)
	}
	fmt.Printf("%s\n", m.Payload)
	// Output:
	// delayed: 1
	// renew your plan
}

// WithShards spreads a queue over several hash tags, so that Redis Cluster
// puts them on different masters. Order across shards is not kept.
func ExampleWithShards() {
	client, stop := startRedis()
	defer stop()
	ctx := context.Background()
	queue := redlease.NewQueue(client, "thumbnails", redlease.WithShards(4))

	if _, err := queue.EnqueueBatch(ctx, [][]byte{[]byte("a.jpg"), []byte("b.jpg"), []byte("c.jpg")}); err != nil {
		log.Fatal(err)
	}
	var done []string
	for range 3 {
		m, err := queue.Claim(ctx) // from each shard in turn
		if err != nil {
			log.Fatal(err)
		}
		done = append(done, string(m.Payload))
		if err := m.Ack(ctx); err != nil {
			log.Fatal(err)
		}
	}
	slices.Sort(done)
	fmt.Println(done)
	// Output:
	// [a.jpg b.jpg c.jpg]
}
