//go:build unix

package batonworker

import (
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
)

// The first inherited descriptor, as sd_listen_fds(3) defines it.
const listenFDsStart = 3

// ErrNoSockets is returned, or wrapped, by Listeners, Named and PacketConns
// when the process was started without sockets: LISTEN_FDS is not set. The
// helper never binds a port of its own; run the program under `baton run`
// (or systemd socket activation).
var ErrNoSockets = errors.New("batonworker: no sockets were passed to this process " +
	"(LISTEN_FDS is not set): run it under `baton run` or systemd socket activation")

// Socket is one inherited socket: its name from LISTEN_FDNAMES and, by its
// kind, a Listener (TCP, unix stream, unix seqpacket) or a PacketConn (UDP,
// unix datagram).
type Socket struct {
	// Name is the socket's name in LISTEN_FDNAMES ("unknown" when the
	// variable is not set, as sd_listen_fds_with_names(3) says).
	Name string
	// FD is the descriptor number it arrived as (3, 4, …). The descriptor
	// itself is closed: Listener and PacketConn hold duplicates, which are
	// close-on-exec.
	FD int
	// Listener is set for a stream or seqpacket socket.
	Listener net.Listener
	// PacketConn is set for a datagram socket.
	PacketConn net.PacketConn
}

var inherited struct {
	once    sync.Once
	sockets []Socket
	err     error
}

// Sockets returns every inherited socket, in descriptor order. The first
// call takes them: it checks LISTEN_PID against this process, makes
// listeners and packet connections of descriptors 3, 4, …, closes the
// originals and unsets LISTEN_PID, LISTEN_FDS and LISTEN_FDNAMES (as
// sd_listen_fds(3) does with unset_environment), so that programs this one
// starts do not take them too. Later calls return the same sockets.
func Sockets() ([]Socket, error) {
	inherited.once.Do(func() {
		inherited.sockets, inherited.err = takeSockets()
	})
	return inherited.sockets, inherited.err
}

// Listeners returns the inherited stream sockets (TCP, unix) as listeners,
// in descriptor order; datagram sockets are left out (see PacketConns). It
// fails when no socket was passed (ErrNoSockets), when they were meant for
// another process, or when none of them is a stream socket, so ls[0] is
// always there when err is nil.
func Listeners() ([]net.Listener, error) {
	sockets, err := Sockets()
	if err != nil {
		return nil, err
	}
	var ls []net.Listener
	for _, s := range sockets {
		if s.Listener != nil {
			ls = append(ls, s.Listener)
		}
	}
	if len(ls) == 0 {
		return nil, fmt.Errorf("batonworker: none of the %d inherited sockets is a stream socket", len(sockets))
	}
	return ls, nil
}

// Named returns the inherited stream sockets by their LISTEN_FDNAMES name
// (baton names them in its config as "name=127.0.0.1:8080", "listen0",
// "listen1", … otherwise). Where two sockets share a name, the first is
// kept.
func Named() (map[string]net.Listener, error) {
	sockets, err := Sockets()
	if err != nil {
		return nil, err
	}
	named := make(map[string]net.Listener)
	for _, s := range sockets {
		if _, seen := named[s.Name]; s.Listener != nil && !seen {
			named[s.Name] = s.Listener
		}
	}
	return named, nil
}

// PacketConns returns the inherited datagram sockets (UDP, unix datagram)
// by name, as Named does for listeners.
func PacketConns() (map[string]net.PacketConn, error) {
	sockets, err := Sockets()
	if err != nil {
		return nil, err
	}
	conns := make(map[string]net.PacketConn)
	for _, s := range sockets {
		if _, seen := conns[s.Name]; s.PacketConn != nil && !seen {
			conns[s.Name] = s.PacketConn
		}
	}
	return conns, nil
}

// takeSockets reads and unsets the environment, then turns the descriptors
// into sockets.
func takeSockets() ([]Socket, error) {
	count, names, err := parseListenEnv(os.Getenv, os.Getpid())
	for _, v := range []string{"LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"} {
		os.Unsetenv(v)
	}
	if err != nil {
		return nil, err
	}
	sockets := make([]Socket, 0, count)
	for i := 0; i < count; i++ {
		s, err := socketFromFD(listenFDsStart+i, names[i])
		if err != nil {
			for _, s := range sockets {
				s.close()
			}
			return nil, err
		}
		sockets = append(sockets, s)
	}
	return sockets, nil
}

// parseListenEnv checks LISTEN_PID and LISTEN_FDS and reads LISTEN_FDNAMES:
// how many descriptors there are, and their names.
func parseListenEnv(getenv func(string) string, pid int) (int, []string, error) {
	fds := getenv("LISTEN_FDS")
	if fds == "" {
		return 0, nil, ErrNoSockets
	}
	count, err := strconv.Atoi(fds)
	if err != nil || count < 0 {
		return 0, nil, fmt.Errorf("batonworker: LISTEN_FDS=%q is not a count of sockets", fds)
	}
	if count == 0 {
		return 0, nil, fmt.Errorf("%w (LISTEN_FDS=0)", ErrNoSockets)
	}
	owner := getenv("LISTEN_PID")
	if owner == "" {
		return 0, nil, errors.New("batonworker: LISTEN_FDS is set but LISTEN_PID is not; " +
			"the sockets may be meant for another process")
	}
	if owner != strconv.Itoa(pid) {
		return 0, nil, fmt.Errorf("batonworker: the sockets are meant for process %s, not this one (%d); "+
			"a wrapper script must exec the program so that it keeps the worker's PID", owner, pid)
	}
	names := make([]string, count)
	for i := range names {
		names[i] = "unknown"
	}
	if list := getenv("LISTEN_FDNAMES"); list != "" {
		given := strings.Split(list, ":")
		if len(given) != count {
			return 0, nil, fmt.Errorf("batonworker: LISTEN_FDNAMES has %d names for %d sockets", len(given), count)
		}
		copy(names, given)
	}
	return count, names, nil
}

// socketFromFD makes a listener or a packet connection of descriptor fd
// (by its SO_TYPE) and closes fd.
func socketFromFD(fd int, name string) (Socket, error) {
	kind, err := syscall.GetsockoptInt(fd, syscall.SOL_SOCKET, syscall.SO_TYPE)
	if err != nil {
		return Socket{}, fmt.Errorf("batonworker: inherited descriptor %d (%s) is not a socket: %w", fd, name, err)
	}
	f := os.NewFile(uintptr(fd), name)
	defer f.Close()
	s := Socket{Name: name, FD: fd}
	switch kind {
	case syscall.SOCK_STREAM, syscall.SOCK_SEQPACKET:
		s.Listener, err = net.FileListener(f)
	case syscall.SOCK_DGRAM:
		s.PacketConn, err = net.FilePacketConn(f)
	default:
		err = fmt.Errorf("socket type %d is not supported", kind)
	}
	if err != nil {
		return Socket{}, fmt.Errorf("batonworker: inherited descriptor %d (%s): %w", fd, name, err)
	}
	return s, nil
}

func (s Socket) close() {
	if s.Listener != nil {
		s.Listener.Close()
	}
	if s.PacketConn != nil {
		s.PacketConn.Close()
	}
}
