package redlease_test

import (
	"context"
	"encoding/json"
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
	// {Ready:0 Delayed:0 InFlight:0 Dead:0 Enqueued:3 Acked:3 Nacked:0 DeadLettered:0}
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

// A message that no retry can mend is dead-lettered at once: Nack it with
// a cause that wraps ErrSkipRetry. RetryDead moves it back to ready, with
// the same id and payload, and it starts over at attempt 1.
func ExampleQueue_RetryDead() {
	client, stop := startRedis()
	defer stop()
	ctx := context.Background()
	queue := redlease.NewQueue(client, "payments", redlease.WithMaxAttempts(5))

	if _, err := queue.Enqueue(ctx, []byte("charge 10 EUR"), redlease.WithID("payment-7")); err != nil {
		log.Fatal(err)
	}
	m, err := queue.Claim(ctx)
	if err != nil {
		log.Fatal(err)
	}
	cause := fmt.Errorf("card expired: %w", redlease.ErrSkipRetry)
	if err := m.Nack(ctx, redlease.WithCause(cause)); err != nil { // dead now, 4 attempts unused
		log.Fatal(err)
	}

	dead, err := queue.DeadLetters(ctx, 10)
	if err != nil {
		log.Fatal(err)
	}
	for _, d := range dead {
		fmt.Printf("dead: %s %q after %d attempt(s): %s\n", d.ID, d.Payload, d.Attempts, d.Err)
	}

	// The card is renewed: try again.
	n, err := queue.RetryDead(ctx, "payment-7") // or RetryDead(ctx): every dead letter
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("retried:", n)

	m, err = queue.Claim(ctx)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("%s %q, attempt %d\n", m.ID, m.Payload, m.Attempt)
	if err := m.Ack(ctx); err != nil {
		log.Fatal(err)
	}
	// Output:
	// dead: payment-7 "charge 10 EUR" after 1 attempt(s): card expired: redlease: do not retry
	// retried: 1
	// payment-7 "charge 10 EUR", attempt 1
}

// In Consume, a handler error that wraps ErrSkipRetry dead-letters the
// message at once; the error's text is kept in the dead letter.
func ExampleErrSkipRetry() {
	client, stop := startRedis()
	defer stop()
	queue := redlease.NewQueue(client, "imports")

	if _, err := queue.Enqueue(context.Background(), []byte("{not json"), redlease.WithID("import-1")); err != nil {
		log.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	err := queue.Consume(ctx, func(ctx context.Context, m *redlease.Message) error {
		defer cancel() // one message is enough here
		if !json.Valid(m.Payload) {
			return fmt.Errorf("%s is not JSON: %w", m.ID, redlease.ErrSkipRetry)
		}
		return nil
	}, redlease.WithErrorHandler(func(error) {})) // quiet: the example prints the dead letter
	fmt.Println(err)

	dead, err := queue.DeadLetters(context.Background(), 10)
	if err != nil {
		log.Fatal(err)
	}
	for _, d := range dead {
		fmt.Printf("%s after %d attempt(s): %s\n", d.ID, d.Attempts, d.Err)
	}
	// Output:
	// context canceled
	// import-1 after 1 attempt(s): import-1 is not JSON: redlease: do not retry
}

// DeadLettersAfter reads the dead-letter list page by page, oldest first;
// DeleteDead deletes dead letters by id, or all of them.
func ExampleQueue_DeadLettersAfter() {
	client, stop := startRedis()
	defer stop()
	ctx := context.Background()
	queue := redlease.NewQueue(client, "reports", redlease.WithMaxAttempts(1))

	for i := 1; i <= 5; i++ {
		if _, err := queue.Enqueue(ctx, []byte("build report"), redlease.WithID(fmt.Sprintf("report-%d", i))); err != nil {
			log.Fatal(err)
		}
		m, err := queue.Claim(ctx)
		if err != nil {
			log.Fatal(err)
		}
		if err := m.Nack(ctx); err != nil { // the first attempt was the last
			log.Fatal(err)
		}
	}

	page, err := queue.DeadLetters(ctx, 2)
	for err == nil && len(page) > 0 {
		var ids []string
		for _, d := range page {
			ids = append(ids, d.ID)
		}
		fmt.Println(ids)
		page, err = queue.DeadLettersAfter(ctx, page[len(page)-1], 2)
	}
	if err != nil {
		log.Fatal(err)
	}

	n, err := queue.DeleteDead(ctx, "report-1", "report-9") // report-9 is not dead: it counts 0
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("deleted:", n)
	n, err = queue.DeleteDead(ctx) // no ids: every dead letter
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("deleted:", n)
	// Output:
	// [report-1 report-2]
	// [report-3 report-4]
	// [report-5]
	// deleted: 1
	// deleted: 4
}

// WithUniqueFor keeps an id taken for a while after its enqueue, even once
// its message is acked: a job that several schedulers enqueue runs once
// per window.
func ExampleWithUniqueFor() {
	client, stop := startRedis()
	defer stop()
	ctx := context.Background()
	queue := redlease.NewQueue(client, "digests")

	enqueue := func() {
		_, err := queue.Enqueue(ctx, []byte("send the daily digest"),
			redlease.WithID("digest-2026-12-01"), redlease.WithUniqueFor(24*time.Hour))
		fmt.Println("duplicate:", errors.Is(err, redlease.ErrDuplicate))
	}
	enqueue()
	m, err := queue.Claim(ctx)
	if err != nil {
		log.Fatal(err)
	}
	if err := m.Ack(ctx); err != nil {
		log.Fatal(err)
	}
	enqueue() // acked, but the id is still taken for 24 hours

	// Without WithID there is no id to keep.
	_, err = queue.Enqueue(ctx, nil, redlease.WithUniqueFor(time.Hour))
	fmt.Println("invalid:", errors.Is(err, redlease.ErrInvalidArgument))
	// Output:
	// duplicate: false
	// duplicate: true
	// invalid: true
}

// When Consume's context ends, running handlers get the shutdown timeout
// to finish; then their contexts are cancelled. A handler that returns
// then has its message acked or nacked as usual.
func ExampleWithShutdownTimeout() {
	client, stop := startRedis()
	defer stop()
	queue := redlease.NewQueue(client, "videos")

	if _, err := queue.Enqueue(context.Background(), []byte("transcode a.mp4")); err != nil {
		log.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	started := make(chan struct{})
	go func() {
		<-started
		cancel() // shut down while the handler runs
	}()
	err := queue.Consume(ctx, func(ctx context.Context, m *redlease.Message) error {
		close(started)
		<-ctx.Done() // a long job that checks its context
		fmt.Println("handler stopped:", context.Cause(ctx))
		return ctx.Err() // nacked: delivered again after the retry backoff
	}, redlease.WithShutdownTimeout(10*time.Millisecond), redlease.WithErrorHandler(func(error) {}))
	fmt.Println("consume:", err)

	stats, err := queue.Stats(context.Background())
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("%+v\n", stats)
	// Output:
	// handler stopped: redlease: consume's shutdown timeout passed
	// consume: context canceled
	// {Ready:0 Delayed:1 InFlight:0 Dead:0 Enqueued:1 Acked:0 Nacked:1 DeadLettered:0}
}
