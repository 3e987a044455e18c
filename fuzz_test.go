package redlease

import (
	"bytes"
	"strconv"
	"testing"
	"time"
)

// Fuzz targets for every parser of data that comes back from Redis or from
// a user. CI runs each for a few seconds; seeds are in testdata/fuzz.

// encodeDeadLetter mirrors bury in lua/queue.lua: the dead letter's body.
func encodeDeadLetter(d DeadLetter) string {
	return strconv.Itoa(d.Attempts) + ":" + strconv.FormatInt(d.DiedAt.UnixMilli(), 10) + ":" + strconv.Itoa(len(d.Err)) + ":" + d.Err + string(d.Payload)
}

func sameDeadLetter(a, b DeadLetter) bool {
	return a.ID == b.ID && bytes.Equal(a.Payload, b.Payload) && a.Attempts == b.Attempts && a.Err == b.Err && a.DiedAt.Equal(b.DiedAt)
}

func FuzzDeadLetter(f *testing.F) {
	f.Add("3:1764500000123:4:boompayload", uint16(3), int64(1764500000123), "id", "boom", []byte("payload"))
	f.Add("1:0:0:", uint16(1), int64(0), "x", "", []byte{})
	f.Add("9:5:3:a:b\x00\xff", uint16(9), int64(5), "a:b", "e:r", []byte{0, 0xff})
	f.Fuzz(func(t *testing.T, raw string, attempts uint16, diedMs int64, id, cause string, payload []byte) {
		// Whatever Redis holds, decoding does not panic, and what it
		// decodes encodes back to an equivalent entry.
		if d, err := decodeDeadLetter(id, raw); err == nil {
			again, err := decodeDeadLetter(id, encodeDeadLetter(d))
			if err != nil || !sameDeadLetter(again, d) {
				t.Fatalf("%q decodes to %+v, which does not round-trip: %+v %v", raw, d, again, err)
			}
		}
		// Every entry the script writes decodes to what was buried.
		want := DeadLetter{ID: id, Payload: payload, Attempts: int(attempts), Err: cause, DiedAt: time.UnixMilli(max(diedMs, 0))}
		got, err := decodeDeadLetter(id, encodeDeadLetter(want))
		if err != nil || !sameDeadLetter(got, want) {
			t.Fatalf("%+v decodes to %+v, %v", want, got, err)
		}
	})
}

func FuzzParseClaim(f *testing.F) {
	f.Add(int64(1), "id", "payload", int64(1), int64(1700000000000), uint8(6))
	f.Add(int64(0), "", "", int64(250), int64(0), uint8(3))
	f.Add(int64(1), "x", "", int64(-1), int64(0), uint8(3))
	q := NewQueue(nil, "q")
	f.Fuzz(func(t *testing.T, ok int64, id, payload string, attempt, deadline int64, n uint8) {
		full := []any{ok, id, payload, attempt, deadline, int64(n % 3), "extra"}
		res := full[:min(int(n), len(full))]
		if ok == 0 && len(res) > 2 {
			res = []any{ok, deadline, int64(n % 3)} // an empty claim's reply
		}
		if n%8 == 7 {
			res = []any{id, ok, "x"} // wrong types
		}
		m, next, _, err := q.parseClaim(res, "tok", false, nil)
		switch {
		case err != nil:
			if m != nil {
				t.Fatal("a message with an error")
			}
		case m != nil:
			body, _ := unseal(payload)
			if m.ID != id || string(m.Payload) != string(body) || m.Attempt != int(attempt) || m.token != "tok" {
				t.Fatalf("parsed %+v from %v", m, res)
			}
		default:
			if len(res) < 2 || next != time.Duration(res[1].(int64))*time.Millisecond {
				t.Fatalf("empty claim with next %v from %v", next, res)
			}
		}
	})
}

func FuzzRetryStrategy(f *testing.F) {
	f.Add(int64(time.Millisecond), int64(time.Second), 5, 3)
	f.Add(int64(1), int64(1<<62), 80, 0)
	f.Add(int64(0), int64(-1), 1, -1)
	f.Fuzz(func(t *testing.T, lo, hi int64, n, limit int) {
		for _, s := range []RetryStrategy{
			ExponentialBackoff(time.Duration(lo), time.Duration(hi)),
			LinearBackoff(time.Duration(lo)),
			LimitRetry(ExponentialBackoff(time.Duration(lo), time.Duration(hi)), limit),
		} {
			_, err := newLockConfig([]LockOption{WithRetry(s)})
			if err != nil {
				continue // refused up front: never used
			}
			n := min(max(n, 1), 1000)
			d, ok := s.NextBackoff(n)
			if ok && (d <= 0 || (hi >= lo && d > time.Duration(max(hi, lo)))) {
				t.Fatalf("%#v.NextBackoff(%d) = %v", s, n, d)
			}
			if l, isLimit := s.(limitRetry); isLimit && ok != (n <= l.n) {
				t.Fatalf("LimitRetry(%d) retry %d: ok %v", l.n, n, ok)
			}
		}
	})
}

func FuzzSlot(f *testing.F) {
	for _, k := range []string{"foo", "{foo}:x", "a{}b", "{", "}{", "redlease:{user:1}:fence", "\x00{\xff}"} {
		f.Add(k)
	}
	f.Fuzz(func(t *testing.T, key string) {
		s := slot(key)
		if s >= 16384 {
			t.Fatalf("slot(%q) = %d", key, s)
		}
		// Keys with the same hash tag share a slot: what the scripts need.
		tag := hashTag(key)
		if tag != key && slot("prefix:{"+tag+"}:suffix") != s {
			t.Fatalf("%q and its tag %q hash apart", key, tag)
		}
	})
}

func FuzzOptions(f *testing.F) {
	f.Add(int64(time.Second), "id", 3)
	f.Add(int64(0), "", 0)
	f.Add(int64(-1), "{}", -5)
	f.Fuzz(func(t *testing.T, d int64, s string, n int) {
		dur := time.Duration(d)
		check := func(name string, err error, wantErr bool) {
			if (err != nil) != wantErr {
				t.Fatalf("%s(%v, %q, %d): error %v", name, dur, s, n, err)
			}
		}
		_, err := newLockConfig([]LockOption{WithTTL(dur)})
		check("WithTTL", err, dur < time.Millisecond)
		_, err = newLockConfig([]LockOption{WithGrantTTL(dur)})
		check("WithGrantTTL", err, dur < time.Millisecond)
		var ec enqueueConfig
		WithDelay(dur)(&ec)
		check("WithDelay", ec.err, dur < 0)
		ec = enqueueConfig{}
		WithID(s)(&ec)
		check("WithID", ec.err, s == "" || len(s) > MaxIDLength)
		var qc queueConfig
		WithLease(dur).applyQueue(&qc)
		WithMaxAttempts(n).applyQueue(&qc)
		check("WithLease+WithMaxAttempts", qc.err, dur < time.Millisecond || n < 1)
		var lc lockerConfig
		WithPrefix(s).applyLocker(&lc)
		check("WithPrefix", lc.err, validPrefix(s) != nil)
		var cc consumeConfig
		WithConcurrency(n)(&cc)
		check("WithConcurrency", cc.err, n < 1)
	})
}

func FuzzEvent(f *testing.F) {
	f.Add("2:idpayload", "id", []byte("payload"))
	f.Add("0:", "", []byte{})
	f.Add("3:a:b\x00\xff", "a:b", []byte{0, 0xff})
	f.Fuzz(func(t *testing.T, raw, id string, payload []byte) {
		// Whatever arrives on the channel, decoding does not panic, and
		// what it decodes encodes back to an equal event.
		if ev, err := decodeEvent(raw); err == nil {
			again, err := decodeEvent(strconv.Itoa(len(ev.ID)) + ":" + ev.ID + string(ev.Payload))
			if err != nil || again.ID != ev.ID || !bytes.Equal(again.Payload, ev.Payload) {
				t.Fatalf("%q decodes to %+v, which does not round-trip: %+v %v", raw, ev, again, err)
			}
		}
		// Every message the publish script sends decodes to what was published.
		ev, err := decodeEvent(strconv.Itoa(len(id)) + ":" + id + string(payload))
		if err != nil || ev.ID != id || !bytes.Equal(ev.Payload, payload) {
			t.Fatalf("%q %q decodes to %+v, %v", id, payload, ev, err)
		}
	})
}
