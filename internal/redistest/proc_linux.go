package redistest

import (
	"os/exec"
	"syscall"
)

// setPdeathsig has the kernel kill a server this package started if the
// process that started it dies (a panic, a test -timeout) before it could
// stop it.
func setPdeathsig(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
