package e2e

import (
	"flag"
	"log/slog"
	"os"
	"testing"
)

func TestMain(m *testing.M) {
	// The library logs dead letters at Warn; the test makes them on purpose.
	flag.Parse()
	if !testing.Verbose() {
		slog.SetDefault(slog.New(slog.DiscardHandler))
	}
	os.Exit(m.Run())
}
