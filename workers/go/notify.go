//go:build unix

package batonworker

import (
	"fmt"
	"net"
	"os"
)

// Ready tells the master that this worker serves: it sends READY=1 to
// NOTIFY_SOCKET, as sd_notify(3) does. Only then does the master ask the
// old worker to drain. Serve calls it once it accepts on every listener;
// call it yourself only when you do not use Serve. Without NOTIFY_SOCKET
// (run on its own, or by a supervisor that does not listen) it does
// nothing.
func Ready() error {
	return Notify("READY=1")
}

// Status sends a one-line status, STATUS=…, for the supervisor: baton
// records it for the worker and logs it at debug level; systemd shows it in
// `systemctl status`. Without NOTIFY_SOCKET it does nothing.
func Status(status string) error {
	return Notify("STATUS=" + status)
}

// Notify sends one sd_notify(3) datagram, newline-separated KEY=VALUE
// assignments such as "READY=1\nSTATUS=serving", to NOTIFY_SOCKET (a path,
// or "@name" for the abstract namespace). Without NOTIFY_SOCKET it does
// nothing and returns nil.
func Notify(state string) error {
	path := os.Getenv("NOTIFY_SOCKET")
	if path == "" {
		return nil
	}
	conn, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		return fmt.Errorf("batonworker: NOTIFY_SOCKET %s: %w", path, err)
	}
	defer conn.Close()
	if _, err := conn.Write([]byte(state)); err != nil {
		return fmt.Errorf("batonworker: NOTIFY_SOCKET %s: %w", path, err)
	}
	return nil
}
