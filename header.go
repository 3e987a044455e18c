package redlease

import (
	"encoding/binary"
	"fmt"
	"maps"
	"slices"
	"strings"
)

// Bounds on a message's headers ([WithHeaders]).
const (
	// MaxHeaders is how many headers a message may carry.
	MaxHeaders = 64
	// MaxHeaderBytes bounds the sum of a message's header keys' and
	// values' lengths.
	MaxHeaderBytes = 16 << 10
)

// fewHeaders is how many header keys seal sorts on the stack.
const fewHeaders = 8

// envelopeMagic starts a stored message that carries headers. 0xF5 never
// starts valid UTF-8, so no text payload looks like an envelope; a payload
// that does start with the magic is stored in an envelope too, so that
// what Redis holds always reads back as it was written.
const envelopeMagic = "\xf5RH1"

// WithHeaders adds string headers to the message, kept with it through
// retries, dead letters, [Queue.RetryDead] and a topic's subscriptions,
// and read back as [Message.Headers]. Several WithHeaders merge, the later
// winning on a key. A message has at most [MaxHeaders] headers of at most
// [MaxHeaderBytes] in all; keys must be non-empty. The map is copied.
func WithHeaders(h map[string]string) EnqueueOption {
	return func(c *enqueueConfig) {
		if len(h) == 0 {
			return
		}
		if c.headers == nil {
			c.headers = make(map[string]string, len(h))
		}
		maps.Copy(c.headers, h)
	}
}

// checkHeaders refuses headers past the bounds, or with an empty key.
func checkHeaders(h map[string]string) error {
	if len(h) > MaxHeaders {
		return fmt.Errorf("%w: %d headers exceed %d", ErrInvalidArgument, len(h), MaxHeaders)
	}
	size := 0
	for k, v := range h {
		if k == "" {
			return fmt.Errorf("%w: empty header key", ErrInvalidArgument)
		}
		size += len(k) + len(v)
	}
	if size > MaxHeaderBytes {
		return fmt.Errorf("%w: headers of %d bytes exceed %d", ErrInvalidArgument, size, MaxHeaderBytes)
	}
	return nil
}

// seal returns what Redis stores for payload with headers h: payload
// itself when there are no headers and it cannot be mistaken for an
// envelope, else envelopeMagic, the header count, each key and value
// (length-prefixed, keys sorted) and then the payload.
func seal(payload []byte, h map[string]string) []byte {
	if len(h) == 0 && !strings.HasPrefix(string(payload), envelopeMagic) {
		return payload
	}
	size := len(envelopeMagic) + binary.MaxVarintLen64 + len(payload)
	for k, v := range h {
		size += 2*binary.MaxVarintLen64 + len(k) + len(v)
	}
	b := make([]byte, 0, size)
	b = append(b, envelopeMagic...)
	b = binary.AppendUvarint(b, uint64(len(h)))
	var few [fewHeaders]string // the usual few keys sort without an allocation
	keys := few[:0]
	for k := range h {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		b = binary.AppendUvarint(b, uint64(len(k)))
		b = append(b, k...)
		b = binary.AppendUvarint(b, uint64(len(h[k])))
		b = append(b, h[k]...)
	}
	return append(b, payload...)
}

// unseal splits what Redis stored into payload and headers (nil when
// none). A value that is not a well-formed envelope is all payload: one
// stored before headers existed.
func unseal(stored string) (payload []byte, h map[string]string) {
	rest, ok := strings.CutPrefix(stored, envelopeMagic)
	if !ok {
		return []byte(stored), nil
	}
	n, rest, ok := cutUvarint(rest)
	if !ok || n > MaxHeaders {
		return []byte(stored), nil
	}
	if n > 0 {
		h = make(map[string]string, n)
	}
	for range n {
		var k, v string
		if k, rest, ok = cutString(rest); !ok {
			return []byte(stored), nil
		}
		if v, rest, ok = cutString(rest); !ok {
			return []byte(stored), nil
		}
		h[k] = v
	}
	return []byte(rest), h
}

// cutUvarint reads a uvarint off the front of s.
func cutUvarint(s string) (uint64, string, bool) {
	var n uint64
	for i := 0; i < len(s) && i < binary.MaxVarintLen64; i++ {
		n |= uint64(s[i]&0x7f) << (7 * i)
		if s[i] < 0x80 {
			return n, s[i+1:], true
		}
	}
	return 0, s, false
}

// cutString reads a length-prefixed string off the front of s.
func cutString(s string) (string, string, bool) {
	n, rest, ok := cutUvarint(s)
	if !ok || n > uint64(len(rest)) {
		return "", s, false
	}
	return rest[:n], rest[n:], true
}
