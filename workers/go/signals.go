//go:build unix

package batonworker

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
)

// The signals a stop signal may be: those a program can catch and that mean
// nothing else to the Go runtime or to a terminal's job control.
var signalNames = map[string]syscall.Signal{
	"SIGHUP":    syscall.SIGHUP,
	"SIGINT":    syscall.SIGINT,
	"SIGQUIT":   syscall.SIGQUIT,
	"SIGUSR1":   syscall.SIGUSR1,
	"SIGUSR2":   syscall.SIGUSR2,
	"SIGALRM":   syscall.SIGALRM,
	"SIGTERM":   syscall.SIGTERM,
	"SIGWINCH":  syscall.SIGWINCH,
	"SIGXCPU":   syscall.SIGXCPU,
	"SIGXFSZ":   syscall.SIGXFSZ,
	"SIGVTALRM": syscall.SIGVTALRM,
}

// StopSignals returns the signals that start the drain: SIGTERM, SIGINT and
// the one named by BATON_STOP_SIGNAL (such as "SIGQUIT", "QUIT" or "3"),
// which baton sets from its stop_signal setting.
func StopSignals() ([]os.Signal, error) {
	sigs := []os.Signal{syscall.SIGTERM, syscall.SIGINT}
	name := os.Getenv("BATON_STOP_SIGNAL")
	if name == "" {
		return sigs, nil
	}
	sig, err := parseSignal(name)
	if err != nil {
		return nil, err
	}
	if sig != syscall.SIGTERM && sig != syscall.SIGINT {
		sigs = append(sigs, sig)
	}
	return sigs, nil
}

// parseSignal reads a signal name with or without "SIG", in any case, or a
// number.
func parseSignal(name string) (syscall.Signal, error) {
	upper := strings.ToUpper(strings.TrimSpace(name))
	if n, err := strconv.Atoi(upper); err == nil {
		for _, sig := range signalNames {
			if int(sig) == n {
				return sig, nil
			}
		}
	}
	if !strings.HasPrefix(upper, "SIG") {
		upper = "SIG" + upper
	}
	if sig, ok := signalNames[upper]; ok {
		return sig, nil
	}
	return 0, fmt.Errorf("batonworker: BATON_STOP_SIGNAL=%q is not a signal this helper drains on (SIGTERM, SIGINT, SIGQUIT, SIGHUP, SIGUSR1, SIGUSR2, …)", name)
}
