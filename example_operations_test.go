package redlease_test

import (
	"context"
	"fmt"
	"log"
	"log/slog"
	"os"
	"sync/atomic"

	"github.com/redlease/redlease"
)

func ExampleWithHeaders() {
	client, stop := startRedis()
	defer stop()
	ctx := context.Background()
	queue := redlease.NewQueue(client, "invoices")

	// Headers travel with the message: through retries, dead letters and
	// every subscription of a topic.
	_, err := queue.Enqueue(ctx, []byte(`{"invoice":42}`),
		redlease.WithHeaders(map[string]string{"tenant": "acme", "schema": "v2"}))
	if err != nil {
		log.Fatal(err)
	}
	m, err := queue.Claim(ctx)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(m.Headers["tenant"], m.Headers["schema"], string(m.Payload))
	if err := m.Ack(ctx); err != nil {
		log.Fatal(err)
	}
	// Output:
	// acme v2 {"invoice":42}
}

// counter is a Hook that counts acks and handler calls; see the module
// redleaseotel for one that records OpenTelemetry metrics and traces.
type counter struct {
	acked   atomic.Int64
	handled atomic.Int64
}

func (c *counter) Observe(_ context.Context, o redlease.Observation) {
	if o.Kind == redlease.MessageAcked {
		c.acked.Add(1)
	}
}

func (c *counter) Enqueue(ctx context.Context, dest string, headers map[string]string, next redlease.EnqueueFunc) (string, error) {
	return next(ctx, headers) // a tracer would add its context to a copy of headers here
}

func (c *counter) Handle(ctx context.Context, m *redlease.Message, next func(context.Context, *redlease.Message) error) error {
	defer c.handled.Add(1) // a tracer would start a span here, a histogram time the call
	return next(ctx, m)
}

func ExampleWithHook() {
	client, stop := startRedis()
	defer stop()
	hook := &counter{}
	queue := redlease.NewQueue(client, "jobs", redlease.WithHook(hook))
	for range 3 {
		if _, err := queue.Enqueue(context.Background(), nil); err != nil {
			log.Fatal(err)
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	err := queue.Consume(ctx, func(ctx context.Context, m *redlease.Message) error {
		if hook.handled.Load() == 2 { // this is the third
			cancel()
		}
		return nil
	})
	fmt.Println(err, hook.handled.Load(), "handled,", hook.acked.Load(), "acked")
	// Output:
	// context canceled 3 handled, 3 acked
}

func ExampleWithLogger() {
	client, stop := startRedis()
	defer stop()
	// Without WithLogger, Warn and above go to slog.Default(). Here Info
	// and above go to stdout, without the time, for the example's output.
	logger := slog.New(slog.NewTextHandler(os.Stdout, &slog.HandlerOptions{
		ReplaceAttr: func(_ []string, a slog.Attr) slog.Attr {
			if a.Key == slog.TimeKey {
				return slog.Attr{}
			}
			return a
		},
	}))
	queue := redlease.NewQueue(client, "jobs", redlease.WithLogger(logger), redlease.WithMaxAttempts(1))
	if _, err := queue.Enqueue(context.Background(), nil, redlease.WithID("job-1")); err != nil {
		log.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	_ = queue.Consume(ctx, func(context.Context, *redlease.Message) error {
		cancel()
		return fmt.Errorf("no such customer")
	})
	// Output:
	// level=WARN msg="redlease: handler failed" queue=jobs id=job-1 attempt=1 err="no such customer"
	// level=WARN msg="redlease: message dead-lettered" queue=jobs id=job-1 attempt=1 err="no such customer"
}
