//go:build !linux

package redistest

import "os/exec"

// setPdeathsig is Linux-only; elsewhere a crashed test binary may leave its
// servers running.
func setPdeathsig(*exec.Cmd) {}
