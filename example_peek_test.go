package redlease_test

import (
	"context"
	"fmt"
	"log"

	"github.com/redlease/redlease"
)

func ExampleQueue_Peek() {
	client, stop := startRedis()
	defer stop()
	ctx := context.Background()
	queue := redlease.NewQueue(client, "emails")

	for _, to := range []string{"ann", "bob"} {
		if _, err := queue.Enqueue(ctx, []byte(to), redlease.WithID("mail-"+to)); err != nil {
			log.Fatal(err)
		}
	}
	ready, err := queue.Peek(ctx, 10) // claims nothing
	if err != nil {
		log.Fatal(err)
	}
	for _, m := range ready {
		fmt.Printf("%s %q after %d attempt(s)\n", m.ID, m.Payload, m.Attempts)
	}
	// Output:
	// mail-ann "ann" after 0 attempt(s)
	// mail-bob "bob" after 0 attempt(s)
}
