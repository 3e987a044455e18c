package redlease

import (
	"net"
	"sync"
	"testing"
	"time"
)

// faultProxy is a TCP proxy on loopback between clients and Redis that a
// test controls: it can add latency, pause the link (hold all bytes), and
// drop every connection.
type faultProxy struct {
	ln     net.Listener
	target string

	mu      sync.Mutex
	latency time.Duration
	paused  chan struct{} // closed while the link flows
	conns   map[net.Conn]struct{}
	wg      sync.WaitGroup
}

func newFaultProxy(t testing.TB, target string) *faultProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &faultProxy{ln: ln, target: target, paused: make(chan struct{}), conns: map[net.Conn]struct{}{}}
	close(p.paused) // flowing
	p.wg.Add(1)
	go p.accept()
	t.Cleanup(p.close)
	return p
}

func (p *faultProxy) Addr() string { return p.ln.Addr().String() }

func (p *faultProxy) accept() {
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
func (p *faultProxy) pipe(src, dst net.Conn) {
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
func (p *faultProxy) SetLatency(d time.Duration) {
	p.mu.Lock()
	p.latency = d
	p.mu.Unlock()
}

// Pause holds every byte in flight until Resume.
func (p *faultProxy) Pause() {
	p.mu.Lock()
	defer p.mu.Unlock()
	select {
	case <-p.paused:
		p.paused = make(chan struct{})
	default:
	}
}

// Resume lets held bytes through.
func (p *faultProxy) Resume() {
	p.mu.Lock()
	defer p.mu.Unlock()
	select {
	case <-p.paused:
	default:
		close(p.paused)
	}
}

// Drop closes every connection, as a network failure mid-command would.
func (p *faultProxy) Drop() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for c := range p.conns {
		c.Close()
	}
}

func (p *faultProxy) close() {
	p.ln.Close()
	p.Resume()
	p.Drop()
	p.wg.Wait()
}
