//go:build unix

package batonworker

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"sync"
	"sync/atomic"
	"time"
)

// DefaultIdleGrace is how long a connection must have been idle before the
// drain closes it, unless Server.IdleGrace says otherwise.
const DefaultIdleGrace = time.Second

// Serve serves srv on l until the stop signal, then drains without
// resetting any client, and returns nil once every connection is closed.
//
// It sends READY=1 to NOTIFY_SOCKET as soon as it accepts on l. On SIGTERM,
// SIGINT or BATON_STOP_SIGNAL it stops accepting, answers the next request
// on each open connection with "Connection: close", closes a connection
// only after it has been idle for DefaultIdleGrace, and waits for the
// requests in flight. See the package documentation, and Server for the
// settings.
//
// Serve replaces srv.Handler and srv.ConnState with wrappers of their own
// values; srv must not be started elsewhere. Hijacked connections (such as
// WebSockets) belong to their handlers: Serve neither closes nor waits for
// them, as with http.Server.Shutdown. It returns an error, without serving,
// when l is nil.
func Serve(srv *http.Server, l net.Listener) error {
	return (&Server{HTTP: srv}).Serve(l)
}

// ServeTLS is Serve over TLS, as http.Server.ServeTLS: certFile and keyFile
// may be empty when srv.TLSConfig holds the certificates. HTTP/2 clients
// are drained with GOAWAY.
func ServeTLS(srv *http.Server, l net.Listener, certFile, keyFile string) error {
	return (&Server{HTTP: srv}).ServeTLS(certFile, keyFile, l)
}

// Server holds the settings of a drain-safe server. The zero value, with
// HTTP set, behaves as Serve.
type Server struct {
	// HTTP is the server to run. Serve replaces its Handler and ConnState
	// with wrappers of their own values.
	HTTP *http.Server
	// IdleGrace is how long a connection must have been idle before the
	// drain closes it; zero means DefaultIdleGrace.
	IdleGrace time.Duration
	// Stop, when not nil, starts the drain when it is closed (a context's
	// Done channel, say) instead of the stop signals.
	Stop <-chan struct{}
	// NoReady keeps Serve from sending READY=1 and STOPPING=1: for a
	// program that starts more than one server and calls Ready itself once
	// all of them accept.
	NoReady bool
}

// Serve serves s.HTTP on every listener in ls (one http.Server may serve
// several sockets) and drains them all on the stop signal; see the
// package-level Serve. READY=1 is sent once each listener accepts.
func (s *Server) Serve(ls ...net.Listener) error {
	return s.serve(ls, nil)
}

// ServeTLS is Serve over TLS; see the package-level ServeTLS.
func (s *Server) ServeTLS(certFile, keyFile string, ls ...net.Listener) error {
	return s.serve(ls, &[2]string{certFile, keyFile})
}

func (s *Server) serve(ls []net.Listener, tlsFiles *[2]string) error {
	srv := s.HTTP
	if srv == nil {
		return errors.New("batonworker: Server.HTTP is nil")
	}
	if len(ls) == 0 {
		return errors.New("batonworker: no listener to serve on")
	}
	for _, l := range ls {
		if l == nil {
			return errors.New("batonworker: nil listener (batonworker.Listeners returns an error " +
				"when the process was started without sockets)")
		}
	}
	if tlsFiles != nil && (tlsFiles[0] != "" || tlsFiles[1] != "") {
		// Fail before READY=1 rather than after it.
		if _, err := tls.LoadX509KeyPair(tlsFiles[0], tlsFiles[1]); err != nil {
			return fmt.Errorf("batonworker: %w", err)
		}
	}
	stop := s.Stop
	var sigs chan os.Signal
	if stop == nil {
		set, err := StopSignals()
		if err != nil {
			return err
		}
		// Installed before READY=1: from then on a stop request drains.
		sigs = make(chan os.Signal, 1)
		signal.Notify(sigs, set...)
		defer signal.Stop(sigs)
	}

	d := &drainer{grace: s.IdleGrace, conns: make(map[net.Conn]*connInfo), changed: make(chan struct{}, 1)}
	if d.grace <= 0 {
		d.grace = DefaultIdleGrace
	}
	srv.Handler = d.handler(srv.Handler)
	srv.ConnState = d.connState(srv.ConnState)

	accepting := make(chan struct{}, len(ls))
	errs := make(chan error, len(ls))
	listeners := make([]*listener, len(ls))
	for i, l := range ls {
		wl := &listener{Listener: l, accepting: accepting}
		listeners[i] = wl
		go func() {
			if tlsFiles != nil {
				errs <- srv.ServeTLS(wl, tlsFiles[0], tlsFiles[1])
			} else {
				errs <- srv.Serve(wl)
			}
		}()
	}

	var err error
	running := len(ls)
	record := func(e error) {
		running--
		if err == nil && e != nil && !errors.Is(e, net.ErrClosed) && !errors.Is(e, http.ErrServerClosed) {
			err = e
		}
	}
	for ready := 0; ready < len(ls) && running == len(ls); {
		select {
		case <-accepting:
			ready++
		case e := <-errs:
			record(e)
		}
	}
	if running == len(ls) && !s.NoReady {
		if e := Ready(); e != nil {
			err = e
		}
	}
	if running == len(ls) && err == nil {
		select {
		case <-stop:
		case <-sigs:
		case e := <-errs:
			record(e)
		}
	}

	// Drain.
	d.draining.Store(true)
	for _, wl := range listeners {
		wl.stop()
	}
	if !s.NoReady {
		_ = Notify("STOPPING=1")
	}
	for running > 0 {
		record(<-errs)
	}
	// Every connection was accepted by now and is in d.conns.
	d.wait()
	// Runs the RegisterOnShutdown hooks (HTTP/2: GOAWAY) and waits for the
	// HTTP/2 connections; the HTTP/1 ones are all closed by now.
	if e := srv.Shutdown(context.Background()); err == nil && e != nil && !errors.Is(e, net.ErrClosed) {
		err = e
	}
	return err
}

// listener tells when the server first accepts on it, and makes Accept fail
// with net.ErrClosed once the drain closed it.
type listener struct {
	net.Listener
	accepting chan<- struct{}
	once      sync.Once
	stopped   atomic.Bool
}

func (l *listener) Accept() (net.Conn, error) {
	l.once.Do(func() { l.accepting <- struct{}{} })
	c, err := l.Listener.Accept()
	if err != nil && l.stopped.Load() {
		return nil, net.ErrClosed
	}
	return c, err
}

// stop closes the listener: this process's descriptor only, the master
// keeps the socket and its queue for the next worker.
func (l *listener) stop() {
	l.stopped.Store(true)
	l.Listener.Close()
}

// drainer tracks every connection's state and, once draining, closes each
// connection after it has been idle for the grace period.
type drainer struct {
	grace    time.Duration
	draining atomic.Bool
	mu       sync.Mutex
	conns    map[net.Conn]*connInfo
	changed  chan struct{}
}

type connInfo struct {
	state http.ConnState
	// since is when the connection entered state.
	since time.Time
	// checked: whether it was looked at for HTTP/2 yet.
	checked bool
	// h2: an HTTP/2 connection, drained by GOAWAY instead.
	h2 bool
	// closing: closed by the drain; waiting for the server to notice.
	closing bool
}

// handler answers with "Connection: close" once draining.
func (d *drainer) handler(h http.Handler) http.Handler {
	if h == nil {
		h = http.DefaultServeMux
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.ProtoMajor == 1 && d.draining.Load() {
			// net/http then closes the connection after this response, also
			// for HTTP/1.0 keep-alive clients (no "keep-alive" is added).
			w.Header().Set("Connection", "close")
		}
		h.ServeHTTP(w, r)
	})
}

// connState records each state change, then calls next.
func (d *drainer) connState(next func(net.Conn, http.ConnState)) func(net.Conn, http.ConnState) {
	return func(c net.Conn, state http.ConnState) {
		d.track(c, state)
		if next != nil {
			next(c, state)
		}
	}
}

func (d *drainer) track(c net.Conn, state http.ConnState) {
	now := time.Now()
	d.mu.Lock()
	info := d.conns[c]
	switch state {
	case http.StateHijacked, http.StateClosed:
		delete(d.conns, c)
		info = nil
	default:
		if info == nil {
			info = &connInfo{}
			d.conns[c] = info
		}
		info.state, info.since = state, now
	}
	check := info != nil && !info.checked && state != http.StateNew
	if check {
		info.checked = true
	}
	d.mu.Unlock()
	if check {
		// The handshake is over once a request was read (HTTP/1) or the
		// HTTP/2 server reports the connection.
		if tc, ok := c.(*tls.Conn); ok && tc.ConnectionState().NegotiatedProtocol == "h2" {
			d.mu.Lock()
			info.h2 = true
			d.mu.Unlock()
		}
	}
	if d.draining.Load() {
		select {
		case d.changed <- struct{}{}:
		default:
		}
	}
}

// wait closes each HTTP/1 connection once it has been idle (or new and
// silent) for the grace period, and returns when none is left.
func (d *drainer) wait() {
	timer := time.NewTimer(d.grace)
	defer timer.Stop()
	for {
		var idle []net.Conn
		next := d.grace
		pending := 0
		now := time.Now()
		d.mu.Lock()
		for c, info := range d.conns {
			if info.h2 {
				continue
			}
			pending++
			if info.closing || info.state == http.StateActive {
				continue
			}
			if left := d.grace - now.Sub(info.since); left > 0 {
				if left < next {
					next = left
				}
				continue
			}
			info.closing = true
			idle = append(idle, c)
		}
		d.mu.Unlock()
		if pending == 0 {
			return
		}
		// Outside the lock: closing a TLS connection may write an alert.
		for _, c := range idle {
			c.Close()
		}
		if !timer.Stop() {
			select {
			case <-timer.C:
			default:
			}
		}
		timer.Reset(next)
		select {
		case <-d.changed:
		case <-timer.C:
		}
	}
}
