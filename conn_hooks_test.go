package redlease

import (
	"bytes"
	"context"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// connHooks steers the connections of a client made by hookedClient, to
// lose a reply or to run something between two commands of one pipeline.
// Writes are held until the client reads, then forwarded; an armed hook
// acts on the next burst of writes that contains its marker.
type connHooks struct {
	mu      sync.Mutex
	drop    []byte // marker: forward the burst, then lose its reply (conn closed, io.EOF)
	split   []byte // marker: forward up to its second occurrence, wait, call between, then the rest
	between func() // run between the two halves of a split burst
	next    func() // run before forwarding the next burst after a split
	fired   int
}

type hookedConn struct {
	net.Conn
	h       *connHooks
	pending []byte
	dead    bool
}

func (c *hookedConn) Write(p []byte) (int, error) {
	if c.dead {
		return 0, io.ErrClosedPipe
	}
	c.pending = append(c.pending, p...)
	return len(p), nil
}

func (c *hookedConn) Read(p []byte) (int, error) {
	if c.dead {
		return 0, io.EOF
	}
	if len(c.pending) > 0 {
		buf := c.pending
		c.pending = nil
		h := c.h
		h.mu.Lock()
		next := h.next
		h.next = nil
		var drop bool
		var cut int = -1
		var between func()
		if h.drop != nil && bytes.Contains(buf, h.drop) {
			drop, h.drop = true, nil
			h.fired++
		}
		if h.split != nil {
			if i := bytes.Index(buf, h.split); i >= 0 {
				if j := bytes.Index(buf[i+len(h.split):], h.split); j >= 0 {
					cut = bytes.LastIndexByte(buf[:i+len(h.split)+j], '*')
					between, h.split, h.between = h.between, nil, nil
					h.fired++
				}
			}
		}
		h.mu.Unlock()
		if next != nil {
			next()
		}
		if cut >= 0 {
			if _, err := c.Conn.Write(buf[:cut]); err != nil {
				return 0, err
			}
			time.Sleep(200 * time.Millisecond) // Redis runs the first part
			between()
			buf = buf[cut:]
		}
		if _, err := c.Conn.Write(buf); err != nil {
			return 0, err
		}
		if drop {
			time.Sleep(200 * time.Millisecond) // Redis runs it; its reply is lost
			c.dead = true
			c.Conn.Close()
			return 0, io.EOF
		}
	}
	return c.Conn.Read(p)
}

// hookedClient is a client on addr whose connections connHooks steers.
func hookedClient(t *testing.T, addr string) (*redis.Client, *connHooks) {
	h := &connHooks{}
	c := redis.NewClient(&redis.Options{Addr: addr, ReadTimeout: 5 * time.Second, WriteTimeout: 5 * time.Second,
		Dialer: func(ctx context.Context, network, a string) (net.Conn, error) {
			var d net.Dialer
			cn, err := d.DialContext(ctx, network, a)
			if err != nil {
				return nil, err
			}
			return &hookedConn{Conn: cn, h: h}, nil
		}})
	t.Cleanup(func() { c.Close() })
	return c, h
}

// loseReplyTo loses the reply to the next burst that contains marker.
func (h *connHooks) loseReplyTo(marker string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.drop = []byte(marker)
}

// splitAt, on the next burst that holds marker twice, sends the commands
// before the second one, lets Redis run them, runs between, then sends
// the rest.
func (h *connHooks) splitAt(marker string, between func()) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.split, h.between = []byte(marker), between
}

func (h *connHooks) firedCount() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.fired
}
