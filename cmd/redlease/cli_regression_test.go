package main

import (
	"context"
	"fmt"
	"net"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/redlease/redlease"
)

// Ids, headers, error texts and lock names are any bytes, written by
// whoever can enqueue, nack or lock; the text tables print them raw, so
// they can drive the operator's terminal (title, screen clear, OSC 8
// links, and on some terminals worse).
func TestCLINoTerminalEscapes(t *testing.T) {
	mr, c := newMini(t)
	ctx := context.Background()
	const esc = "\x1b]0;pwned\x07\x1b[2J"
	q := redlease.NewQueue(c, "esc", redlease.WithMaxAttempts(1))
	_, err := q.Enqueue(ctx, []byte("p"), redlease.WithID("dead"+esc))
	require.NoError(t, err)
	m, err := q.Claim(ctx)
	require.NoError(t, err)
	require.NoError(t, m.Nack(ctx, redlease.WithCause(fmt.Errorf("bad input%s", esc))))
	_, err = q.Enqueue(ctx, []byte("p"), redlease.WithID("ready"+esc), redlease.WithHeaders(map[string]string{"h": esc}))
	require.NoError(t, err)
	l := redlease.NewLocker(c)
	defer l.Close()
	lk, err := l.TryObtain(ctx, "lock"+esc)
	require.NoError(t, err)
	defer lk.Release(ctx)

	conn := []string{"-p", mr.Port()}
	for _, args := range [][]string{{"peek", "esc"}, {"dead", "esc", "-n", "1"}, {"locks"}, {"lock", "lock" + esc}} {
		code, out, errOut := cli(t, append(conn, args...)...)
		require.Equal(t, exitOK, code, "%v: %s", args, errOut)
		assert.NotContains(t, out, "\x1b", "%s prints a terminal escape from Redis:\n%q", args[0], out)
	}
}

// A Redis that accepts connections but does not answer (overloaded, a
// stalled proxy, a long script) makes discovery time out before any SCAN
// returns; that is reported as a truncated, empty listing and exit 0.
func TestCLIHungRedisIsAnError(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	var mu sync.Mutex
	var conns []net.Conn
	go func() {
		for {
			cn, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, cn) // never answer
			mu.Unlock()
		}
	}()
	defer func() {
		ln.Close()
		mu.Lock()
		for _, cn := range conns {
			cn.Close()
		}
		mu.Unlock()
	}()
	port := strconv.Itoa(ln.Addr().(*net.TCPAddr).Port)
	start := time.Now()
	code, out, errOut := cli(t, "-p", port, "--scan-timeout", "500ms", "--timeout", "20s", "queues")
	t.Logf("after %v: exit %d\nstdout: %s\nstderr: %s", time.Since(start), code, out, errOut)
	require.Equal(t, exitError, code, "a Redis that never answered was listed as empty: %q", strings.TrimSpace(out))
}
