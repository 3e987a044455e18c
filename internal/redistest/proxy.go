package redistest

import (
	"bytes"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// FaultProxy is a TCP proxy on loopback between clients and Redis that a
// test controls: it can add latency, pause the link (hold all bytes),
// drop every connection, and freeze connections (drop their bytes for good
// while they stay open, as a link that died without a word). Bytes pass through in order, each direction on
// its own.
type FaultProxy struct {
	ln     net.Listener
	target string

	mu      sync.Mutex
	latency time.Duration
	paused  chan struct{} // closed while the link flows
	conns   map[net.Conn]struct{}
	frozen  map[net.Conn]bool // both ends of a frozen connection
	trigger []byte            // FreezeOn's
	wg      sync.WaitGroup
}

// NewFaultProxy listens on a free loopback port and forwards every
// connection to target; when t ends it stops listening, drops every
// connection and waits for its goroutines to end.
func NewFaultProxy(t testing.TB, target string) *FaultProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	p := &FaultProxy{ln: ln, target: target, paused: make(chan struct{}), conns: map[net.Conn]struct{}{}, frozen: map[net.Conn]bool{}}
	close(p.paused) // flowing
	p.wg.Add(1)
	go p.accept()
	t.Cleanup(p.close)
	return p
}

// Addr is the proxy's address, for clients to dial.
func (p *FaultProxy) Addr() string { return p.ln.Addr().String() }

func (p *FaultProxy) accept() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		s, err := net.DialTimeout("tcp", p.target, time.Second)
		if err != nil {
			c.Close()
			continue
		}
		p.mu.Lock()
		p.conns[c], p.conns[s] = struct{}{}, struct{}{}
		p.mu.Unlock()
		p.wg.Add(2)
		go p.pipe(c, s, true)
		go p.pipe(s, c, false)
	}
}

// pipe copies src to dst chunk by chunk, honouring pause, latency and
// freezing; up is the client-to-Redis direction.
func (p *FaultProxy) pipe(src, dst net.Conn, up bool) {
	defer p.wg.Done()
	defer func() {
		src.Close()
		dst.Close()
		p.mu.Lock()
		delete(p.conns, src)
		delete(p.conns, dst)
		delete(p.frozen, src)
		delete(p.frozen, dst)
		p.mu.Unlock()
	}()
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			p.mu.Lock()
			if up && p.trigger != nil && bytes.Contains(buf[:n], p.trigger) {
				p.frozen[src], p.frozen[dst] = true, true
			}
			flowing, latency, frozen := p.paused, p.latency, p.frozen[src]
			p.mu.Unlock()
			<-flowing
			time.Sleep(latency)
			if frozen {
				continue // read and dropped: the other end never hears
			}
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil { // EOF or a dropped connection: close both sides
			return
		}
	}
}

// SetLatency delays every chunk in each direction by d.
func (p *FaultProxy) SetLatency(d time.Duration) {
	p.mu.Lock()
	p.latency = d
	p.mu.Unlock()
}

// Pause holds every byte in flight until Resume.
func (p *FaultProxy) Pause() {
	p.mu.Lock()
	defer p.mu.Unlock()
	select {
	case <-p.paused:
		p.paused = make(chan struct{})
	default:
	}
}

// Resume lets held bytes through.
func (p *FaultProxy) Resume() {
	p.mu.Lock()
	defer p.mu.Unlock()
	select {
	case <-p.paused:
	default:
		close(p.paused)
	}
}

// Freeze makes every open connection silent for good, both ways, while it
// stays open; connections made later flow.
func (p *FaultProxy) Freeze() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for c := range p.conns {
		p.frozen[c] = true
	}
}

// FreezeOn freezes, from now on, each connection whose client sends
// bytes containing pattern, from those bytes on.
func (p *FaultProxy) FreezeOn(pattern []byte) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.trigger = pattern
}

// Drop closes every connection, as a network failure mid-command would.
func (p *FaultProxy) Drop() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for c := range p.conns {
		c.Close()
	}
}

func (p *FaultProxy) close() {
	p.ln.Close()
	p.Resume()
	p.Drop()
	p.wg.Wait()
}
