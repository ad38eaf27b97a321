//go:build unix

package batonworker

import (
	"fmt"
	"net"
	"os"
	"syscall"
	"testing"
)

func TestNotifySendsDatagrams(t *testing.T) {
	msgs := notifySocket(t)
	if err := Ready(); err != nil {
		t.Fatal(err)
	}
	waitMessage(t, msgs, "READY=1")
	if err := Status("warming up"); err != nil {
		t.Fatal(err)
	}
	waitMessage(t, msgs, "STATUS=warming up")
}

func TestNotifyToAnAbstractSocket(t *testing.T) {
	name := fmt.Sprintf("@batonworker-test-%d", os.Getpid())
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: name, Net: "unixgram"})
	if err != nil {
		t.Skipf("no abstract unix sockets here: %v", err)
	}
	defer conn.Close()
	t.Setenv("NOTIFY_SOCKET", name)
	if err := Ready(); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 64)
	n, err := conn.Read(buf)
	if err != nil || string(buf[:n]) != "READY=1" {
		t.Fatalf("got %q %v", buf[:n], err)
	}
}

func TestNotifyWithoutASocketIsANoOp(t *testing.T) {
	t.Setenv("NOTIFY_SOCKET", "")
	if err := Ready(); err != nil {
		t.Fatalf("without NOTIFY_SOCKET Ready must do nothing, got %v", err)
	}
}

func TestStopSignals(t *testing.T) {
	for name, want := range map[string]syscall.Signal{
		"":        0,
		"SIGTERM": 0,
		"SIGQUIT": syscall.SIGQUIT,
		"usr2":    syscall.SIGUSR2,
		"1":       syscall.SIGHUP,
	} {
		t.Setenv("BATON_STOP_SIGNAL", name)
		sigs, err := StopSignals()
		if err != nil {
			t.Fatalf("%q: %v", name, err)
		}
		if sigs[0] != syscall.SIGTERM || sigs[1] != syscall.SIGINT {
			t.Fatalf("%q: SIGTERM and SIGINT must always drain: %v", name, sigs)
		}
		if want == 0 && len(sigs) != 2 || want != 0 && (len(sigs) != 3 || sigs[2] != want) {
			t.Fatalf("%q: got %v", name, sigs)
		}
	}
	for _, bad := range []string{"SIGKILL", "9", "SIGURG", "nonsense"} {
		t.Setenv("BATON_STOP_SIGNAL", bad)
		if _, err := StopSignals(); err == nil {
			t.Fatalf("%q must be refused", bad)
		}
	}
}
