package redlease

import (
	"context"
	"errors"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// A continuous stream of overlapping shared leases, from several Lockers,
// does not starve a writer: once its Obtain is queued, new shared leases
// queue behind it (ObtainShared) or fail (TryObtainShared), so it waits
// only for the shares held when it queued, and those in flight then, to
// end: one hold (at most readerHold) and a few round trips, however long
// the stream runs. Throughout, no shared lease is held with an exclusive
// one, and the readers resume once the writer releases.
func TestWriterNotStarvedByReaders(t *testing.T) {
	c := realRedis(t)
	ctx := context.Background()
	ls := lockers(t, c.Options().Addr, 4)
	const (
		readers    = 6
		readerHold = 20 * time.Millisecond
		stream     = 3 * time.Second // at least; longer if the writer is slower
		rounds     = 3
		writerGap  = 400 * time.Millisecond // of stream before each round
		// The writer's bound: one hold of the readers, plus scheduling and
		// round trips on a loaded 2-core machine under -race.
		writerBound = time.Second
	)

	// holders counts shared holders, plus exclusive ones times excl: what
	// each holder sees inside its hold says whether both kinds overlapped.
	var holders atomic.Int64
	const excl = 1000
	var shares, peak atomic.Int64 // shared leases taken; most held at once
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for i := range readers {
		l := ls[i%3]
		try := i%2 == 1 // TryObtainShared in a loop; the others queue with ObtainShared
		wg.Go(func() {
			for n := 0; n < 100_000; n++ {
				select {
				case <-stop:
					return
				default:
				}
				var lk *Lock
				var err error
				if try {
					lk, err = l.TryObtainShared(ctx, "k")
					if errors.Is(err, ErrNotObtained) {
						time.Sleep(time.Millisecond)
						continue
					}
				} else {
					octx, cancel := context.WithTimeout(ctx, 5*time.Second)
					lk, err = l.ObtainShared(octx, "k")
					cancel()
				}
				if err != nil {
					t.Errorf("reader %d: %v", i, err)
					return
				}
				v := holders.Add(1)
				if v >= excl {
					t.Errorf("reader %d got a shared lease while an exclusive one was held (%d)", i, v)
				}
				for p := peak.Load(); v%excl > p && !peak.CompareAndSwap(p, v%excl); p = peak.Load() {
				}
				shares.Add(1)
				time.Sleep(time.Duration(1+rand.IntN(int(readerHold/time.Millisecond))) * time.Millisecond)
				if v := holders.Load(); v >= excl {
					t.Errorf("reader %d: an exclusive lease was granted during its share (%d)", i, v)
				}
				holders.Add(-1)
				if err := lk.Release(ctx); err != nil {
					t.Errorf("reader %d: %v", i, err)
					return
				}
			}
		})
	}

	start := time.Now()
	writer := ls[3]
	var waits []time.Duration
	func() {
		defer func() {
			// Stop the stream once it has run long enough.
			time.Sleep(time.Until(start.Add(stream)))
			close(stop)
			wg.Wait()
		}()
		for range rounds {
			time.Sleep(writerGap)
			call := time.Now()
			octx, cancel := context.WithTimeout(ctx, 10*time.Second)
			w, err := writer.Obtain(octx, "k")
			cancel()
			waited := time.Since(call)
			if err != nil {
				t.Errorf("writer: %v after %v", err, waited)
				return
			}
			waits = append(waits, waited)
			if v := holders.Add(excl); v != excl {
				t.Errorf("the writer got the lock with %d shared holders", v-excl)
			}
			time.Sleep(50 * time.Millisecond)
			if v := holders.Load(); v != excl {
				t.Errorf("shared leases were granted during the writer's hold (%d)", v-excl)
			}
			holders.Add(-excl)
			after := shares.Load()
			released := time.Now()
			require.NoError(t, w.Release(ctx))
			// The release lets the queued readers in; the others' next
			// TryObtainShared succeeds.
			deadline := time.Now().Add(2 * time.Second)
			for shares.Load() == after && time.Now().Before(deadline) {
				time.Sleep(time.Millisecond)
			}
			if shares.Load() == after {
				t.Errorf("no reader got a shared lease within 2s of the writer's release")
			} else {
				t.Logf("writer waited %v; readers resumed %v after its release", waited, time.Since(released))
			}
			if waited > writerBound {
				t.Errorf("the writer waited %v for the lock, over %v: readers overtook it", waited, writerBound)
			}
		}
	}()
	t.Logf("stream of %v: %d shared leases, at most %d at once; writer waits %v", time.Since(start).Round(time.Millisecond), shares.Load(), peak.Load(), waits)
	if peak.Load() < 2 {
		t.Errorf("the shared leases never overlapped (at most %d at once): the stream does not test writer preference", peak.Load())
	}
}
