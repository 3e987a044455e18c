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

// deployment is a Cluster or a Sentinel: setUp starts its servers on f.
type deployment interface {
	setUp(f *fleet) error
}

// deploy makes a directory for a deployment of kind and has d start its
// servers there; if that fails, every server it started is killed and the
// directory removed.
func deploy[D deployment](kind string, d D) (D, error) {
	dir, err := os.MkdirTemp("", "redlease-"+kind+"-")
	if err != nil {
		var none D
		return none, err
	}
	f := &fleet{dir: dir}
	if err := d.setUp(f); err != nil {
		f.stop()
		var none D
		return none, err
	}
	return d, nil
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
