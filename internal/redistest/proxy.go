package redistest

import (
	"net"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// FaultProxy is a TCP proxy on loopback between clients and Redis that a
// test controls: it can add latency, pause the link (hold all bytes), and
// drop every connection. Bytes pass through in order, each direction on
// its own.
type FaultProxy struct {
	ln     net.Listener
	target string

	mu      sync.Mutex
	latency time.Duration
	paused  chan struct{} // closed while the link flows
	conns   map[net.Conn]struct{}
	wg      sync.WaitGroup
}

// NewFaultProxy listens on a free loopback port and forwards every
// connection to target; when t ends it stops listening, drops every
// connection and waits for its goroutines to end.
func NewFaultProxy(t testing.TB, target string) *FaultProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	p := &FaultProxy{ln: ln, target: target, paused: make(chan struct{}), conns: map[net.Conn]struct{}{}}
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
		go p.pipe(c, s)
		go p.pipe(s, c)
	}
}

// pipe copies src to dst chunk by chunk, honouring pause and latency.
func (p *FaultProxy) pipe(src, dst net.Conn) {
	defer p.wg.Done()
	defer func() {
		src.Close()
		dst.Close()
		p.mu.Lock()
		delete(p.conns, src)
		delete(p.conns, dst)
		p.mu.Unlock()
	}()
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			p.mu.Lock()
			flowing, latency := p.paused, p.latency
			p.mu.Unlock()
			<-flowing
			time.Sleep(latency)
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
