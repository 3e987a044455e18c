package redistest

import (
	"os"
	"slices"
	"testing"
	"time"
)

// fleet is the servers of one deployment, their files in one directory.
type fleet struct {
	dir     string
	servers []*Server
}

// newFleet makes a directory for a deployment of kind and has build start
// its servers there; if build fails, every server it started is killed and
// the directory removed.
func newFleet(kind string, build func(f *fleet) error) (*fleet, error) {
	dir, err := os.MkdirTemp("", "redlease-"+kind+"-")
	if err != nil {
		return nil, err
	}
	f := &fleet{dir: dir}
	if err := build(f); err != nil {
		f.stop()
		return nil, err
	}
	return f, nil
}

// start starts a server of the fleet (see Start).
func (f *fleet) start(name string, args func(port int) ([]string, error)) (*Server, error) {
	s, err := Start(f.dir, name, args)
	if err == nil {
		f.servers = append(f.servers, s)
	}
	return s, err
}

// stop kills every server, the last started first, and removes the
// directory.
func (f *fleet) stop() {
	for _, s := range slices.Backward(f.servers) {
		s.Kill()
	}
	os.RemoveAll(f.dir)
}

// ownT starts a deployment for test t alone, stopped when t ends, under
// the skip rule (Need), and logs how long it took to come up.
func ownT[D interface{ Stop() }](t testing.TB, what string, start func() (D, error)) D {
	t.Helper()
	began := time.Now()
	d, err := start()
	Need(t, what, err)
	t.Cleanup(d.Stop)
	t.Logf("%s up in %v", what, time.Since(began).Round(time.Millisecond))
	return d
}
