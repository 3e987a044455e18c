package redlease

import (
	"context"
	"errors"
	"log/slog"
)

// orDefault is log, or, when log is nil, slog's default as it is now,
// keeping only records at Warn level and above: with no WithLogger,
// nothing important is silent and routine events stay quiet.
func orDefault(log *slog.Logger) *slog.Logger {
	if log != nil {
		return log
	}
	return slog.New(warnAndAbove{slog.Default().Handler()})
}

// warnAndAbove passes on the records of its handler at Warn level and above.
type warnAndAbove struct{ slog.Handler }

func (h warnAndAbove) Enabled(ctx context.Context, l slog.Level) bool {
	return l >= slog.LevelWarn && h.Handler.Enabled(ctx, l)
}

func (h warnAndAbove) WithAttrs(attrs []slog.Attr) slog.Handler {
	return warnAndAbove{h.Handler.WithAttrs(attrs)}
}

func (h warnAndAbove) WithGroup(name string) slog.Handler {
	return warnAndAbove{h.Handler.WithGroup(name)}
}

// leaseNews logs and observes what happened to one of the Locker's leases.
// A lease the closing Locker stops renewing, or one without the watchdog
// that ran out (as such leases do), is reported at Info level.
func (l *Locker) leaseNews(n leaseNews) {
	ctx := context.Background()
	switch n.kind {
	case leaseLost:
		level := slog.LevelWarn
		if errors.Is(n.err, ErrClosed) || !n.renew {
			level = slog.LevelInfo
		}
		l.logger().Log(ctx, level, "redlease: lock lost", "key", n.name, "fence", n.fence, "shared", n.share, "err", n.err)
		l.observe(ctx, Observation{Kind: LockLost, Name: n.name, Shared: n.share, Fence: n.fence, Err: n.err})
	case leaseRenewFailed:
		l.logger().Warn("redlease: lock renewal failed; retrying", "key", n.name, "fence", n.fence, "shared", n.share, "err", n.err)
		l.observe(ctx, Observation{Kind: LockRenewFailed, Name: n.name, Shared: n.share, Fence: n.fence, Err: n.err})
	case leaseRenewed:
		l.observe(ctx, Observation{Kind: LockRenewed, Name: n.name, Shared: n.share, Fence: n.fence})
	}
}

// claimNews logs what happened to the lease of a message Consume handles.
func (q *Queue) claimNews(n leaseNews) {
	switch n.kind {
	case leaseLost:
		q.logger().Warn("redlease: claim lost", "queue", q.name, "id", n.name, "attempt", n.fence, "err", n.err)
	case leaseRenewFailed:
		q.logger().Warn("redlease: claim renewal failed; retrying", "queue", q.name, "id", n.name, "attempt", n.fence, "err", n.err)
	}
}
