package redlease

import (
	"os/exec"
	"syscall"
)

// setPdeathsig has the kernel kill a server the tests started if the test
// binary dies (a panic, a -timeout) before it could stop it.
func setPdeathsig(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
