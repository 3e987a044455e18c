package redlease_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"time"

	"github.com/redlease/redlease"
)

// A topic's subscriptions are Queues. Each receives every message published
// after it subscribed, whether or not anyone consumes it yet.
func ExampleNewTopic() {
	client, stop := startRedis()
	defer stop()
	ctx := context.Background()
	// The options are the defaults of every subscription's Queue.
	orders := redlease.NewTopic(client, "orders", redlease.WithMaxAttempts(5))

	// With no subscription yet, a message reaches live listeners only.
	if _, err := orders.Publish(ctx, []byte("order 1")); err != nil {
		log.Fatal(err)
	}
	billing, err := orders.Subscribe(ctx, "billing")
	if err != nil {
		log.Fatal(err)
	}
	// A subscription's own options come after the topic's.
	shipping, err := orders.Subscribe(ctx, "shipping", redlease.WithLease(time.Minute))
	if err != nil {
		log.Fatal(err)
	}
	if _, err := orders.Publish(ctx, []byte("order 2")); err != nil {
		log.Fatal(err)
	}

	names, err := orders.Subscriptions(ctx)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(names)
	for _, q := range []*redlease.Queue{billing, shipping} {
		stats, err := q.Stats(ctx)
		if err != nil {
			log.Fatal(err)
		}
		fmt.Println("ready:", stats.Ready)
	}
	// Output:
	// [billing shipping]
	// ready: 1
	// ready: 1
}

// Every subscription gets its own copy of a message, with the same id, and
// settles it on its own: a retry in one leaves the others alone.
func ExampleTopic_Publish() {
	client, stop := startRedis()
	defer stop()
	ctx := context.Background()
	// Retry a nacked message at once (the default backoff waits 1s, then more).
	orders := redlease.NewTopic(client, "orders",
		redlease.WithRetryBackoff(func(attempt int) time.Duration { return 0 }))
	billing, err := orders.Subscribe(ctx, "billing")
	if err != nil {
		log.Fatal(err)
	}
	shipping, err := orders.Subscribe(ctx, "shipping")
	if err != nil {
		log.Fatal(err)
	}

	// One round trip adds the message to every subscription, or to none.
	id, err := orders.Publish(ctx, []byte("order 42"))
	if err != nil {
		log.Fatal(err)
	}

	m, err := billing.Claim(ctx)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("billing: %s, attempt %d, same id: %v: failed\n", m.Payload, m.Attempt, m.ID == id)
	if err := m.Nack(ctx); err != nil {
		log.Fatal(err)
	}
	m, err = billing.Claim(ctx)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("billing: %s, attempt %d: done\n", m.Payload, m.Attempt)
	if err := m.Ack(ctx); err != nil {
		log.Fatal(err)
	}

	m, err = shipping.Claim(ctx)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("shipping: %s, attempt %d, same id: %v: done\n", m.Payload, m.Attempt, m.ID == id)
	if err := m.Ack(ctx); err != nil {
		log.Fatal(err)
	}
	// Output:
	// billing: order 42, attempt 1, same id: true: failed
	// billing: order 42, attempt 2: done
	// shipping: order 42, attempt 1, same id: true: done
}

// WithID dedupes per subscription. Publish reports ErrDuplicate only when
// the id is live in every subscription, and then adds nothing.
func ExampleTopic_Publish_withID() {
	client, stop := startRedis()
	defer stop()
	ctx := context.Background()
	orders := redlease.NewTopic(client, "orders")
	billing, err := orders.Subscribe(ctx, "billing")
	if err != nil {
		log.Fatal(err)
	}
	shipping, err := orders.Subscribe(ctx, "shipping")
	if err != nil {
		log.Fatal(err)
	}

	_, err = orders.Publish(ctx, []byte("order 42"), redlease.WithID("order-42"))
	fmt.Println("first:", err)
	_, err = orders.Publish(ctx, []byte("order 42"), redlease.WithID("order-42"))
	fmt.Println("again, live everywhere:", errors.Is(err, redlease.ErrDuplicate))

	// Billing finishes with it; shipping still holds it.
	m, err := billing.Claim(ctx)
	if err != nil {
		log.Fatal(err)
	}
	if err := m.Ack(ctx); err != nil {
		log.Fatal(err)
	}
	_, err = orders.Publish(ctx, []byte("order 42, amended"), redlease.WithID("order-42"))
	fmt.Println("again, live in shipping only:", err)

	for _, q := range []*redlease.Queue{billing, shipping} {
		m, err := q.Claim(ctx)
		if err != nil {
			log.Fatal(err)
		}
		fmt.Printf("%s\n", m.Payload)
		if err := m.Ack(ctx); err != nil {
			log.Fatal(err)
		}
	}
	// Output:
	// first: <nil>
	// again, live everywhere: true
	// again, live in shipping only: <nil>
	// order 42, amended
	// order 42
}

// Listen delivers messages live, at most once: nothing is stored for a
// listener, and one that is not listening misses what is published.
func ExampleTopic_Listen() {
	client, stop := startRedis()
	defer stop()
	orders := redlease.NewTopic(client, "orders")

	// The channel closes when ctx ends.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	events, err := orders.Listen(ctx)
	if err != nil {
		log.Fatal(err)
	}
	// Listen has returned: the listener is subscribed, so it hears both.
	var ids []string
	for _, p := range []string{"price of sku-1 changed", "price of sku-2 changed"} {
		id, err := orders.Publish(ctx, []byte(p))
		if err != nil {
			log.Fatal(err)
		}
		ids = append(ids, id)
	}
	for i := range 2 {
		ev := <-events
		fmt.Printf("drop cache entry: %s (id as published: %v)\n", ev.Payload, ev.ID == ids[i])
	}
	cancel()
	_, open := <-events
	fmt.Println("open:", open)
	// Output:
	// drop cache entry: price of sku-1 changed (id as published: true)
	// drop cache entry: price of sku-2 changed (id as published: true)
	// open: false
}

// Unsubscribe deletes a subscription with its whole backlog. Its consumers
// find nothing more, and a claim they held can no longer be settled.
func ExampleTopic_Unsubscribe() {
	client, stop := startRedis()
	defer stop()
	ctx := context.Background()
	orders := redlease.NewTopic(client, "orders")
	audit, err := orders.Subscribe(ctx, "audit")
	if err != nil {
		log.Fatal(err)
	}
	if _, err := orders.PublishBatch(ctx, [][]byte{[]byte("order 1"), []byte("order 2"), []byte("order 3")}); err != nil {
		log.Fatal(err)
	}
	m, err := audit.Claim(ctx)
	if err != nil {
		log.Fatal(err)
	}

	if err := orders.Unsubscribe(ctx, "audit"); err != nil {
		log.Fatal(err)
	}
	fmt.Println("ack:", errors.Is(m.Ack(ctx), redlease.ErrNotHeld))
	names, err := orders.Subscriptions(ctx)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("subscriptions:", names)

	// The name is free at once; a new subscription starts empty.
	audit, err = orders.Subscribe(ctx, "audit")
	if err != nil {
		log.Fatal(err)
	}
	stats, err := audit.Stats(ctx)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("%+v\n", stats)
	// Output:
	// ack: true
	// subscriptions: []
	// {Ready:0 Delayed:0 InFlight:0 Dead:0 Enqueued:0 Acked:0 Nacked:0 DeadLettered:0}
}
