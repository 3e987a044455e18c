// Command redlease inspects redlease locks, queues and topics in Redis,
// settles dead letters, and serves a small web dashboard.
//
//	go install github.com/redlease/redlease/cmd/redlease@latest
//	redlease --help
//
// See README.md in this directory.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/redis/go-redis/v9"
)

// quiet drops go-redis's log lines.
type quiet struct{}

func (quiet) Printf(context.Context, string, ...any) {}

func main() {
	redis.SetLogger(quiet{}) // its pool's dial errors reach the user as the command's error
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr, os.Getenv)
	stop()
	os.Exit(code)
}
