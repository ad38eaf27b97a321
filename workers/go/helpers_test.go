//go:build unix

package batonworker

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// deadline bounds every wait in these tests; they wait for state, never
// for a fixed time.
const deadline = 20 * time.Second

// notifySocket listens on a unix datagram socket, points NOTIFY_SOCKET at
// it, and hands over every datagram received.
func notifySocket(t *testing.T) <-chan string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "notify.sock")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	t.Setenv("NOTIFY_SOCKET", path)
	msgs := make(chan string, 64)
	go func() {
		buf := make([]byte, 4096)
		for {
			n, err := conn.Read(buf)
			if err != nil {
				close(msgs)
				return
			}
			msgs <- string(buf[:n])
		}
	}()
	return msgs
}

// waitMessage waits for a datagram containing want.
func waitMessage(t *testing.T, msgs <-chan string, want string) {
	t.Helper()
	timeout := time.After(deadline)
	for {
		select {
		case m, ok := <-msgs:
			if !ok {
				t.Fatalf("notify socket closed before %q", want)
			}
			if strings.Contains(m, want) {
				return
			}
		case <-timeout:
			t.Fatalf("no %q on NOTIFY_SOCKET within %v", want, deadline)
		}
	}
}

// running is a Server serving on a loopback listener in the background.
type running struct {
	addr string
	stop chan struct{}
	done chan error
	msgs <-chan string
}

// serveLocal starts s (its HTTP set, Stop replaced) on 127.0.0.1 and waits
// for READY=1.
func serveLocal(t *testing.T, s *Server) *running {
	t.Helper()
	msgs := notifySocket(t)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	r := &running{addr: l.Addr().String(), stop: make(chan struct{}), done: make(chan error, 1), msgs: msgs}
	if s.Stop == nil {
		s.Stop = r.stop
	}
	go func() { r.done <- s.Serve(l) }()
	waitMessage(t, msgs, "READY=1")
	return r
}

// drain starts the drain and waits until it has begun.
func (r *running) drain(t *testing.T) {
	t.Helper()
	close(r.stop)
	waitMessage(t, r.msgs, "STOPPING=1")
}

// wait waits for Serve to return nil.
func (r *running) wait(t *testing.T) {
	t.Helper()
	select {
	case err := <-r.done:
		if err != nil {
			t.Fatalf("Serve returned %v", err)
		}
	case <-time.After(deadline):
		t.Fatalf("Serve did not return within %v", deadline)
	}
}

// rawClient speaks HTTP/1.x on one connection, with no retries: what ab
// and wrk do.
type rawClient struct {
	conn net.Conn
	r    *bufio.Reader
}

func dial(t *testing.T, addr string) *rawClient {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, deadline)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return &rawClient{conn: c, r: bufio.NewReader(c)}
}

// get sends one request ("HTTP/1.1", or "HTTP/1.0" with Connection:
// Keep-Alive) and reads the response.
func (c *rawClient) get(path, proto string) (*http.Response, string, error) {
	c.conn.SetDeadline(time.Now().Add(deadline))
	extra := ""
	if proto == "HTTP/1.0" {
		extra = "Connection: Keep-Alive\r\n"
	}
	if _, err := fmt.Fprintf(c.conn, "GET %s %s\r\nHost: test\r\n%s\r\n", path, proto, extra); err != nil {
		return nil, "", err
	}
	resp, err := http.ReadResponse(c.r, nil)
	if err != nil {
		return nil, "", err
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	return resp, string(body), err
}

// mustGet is get that fails the test on an error or a non-200 status.
func (c *rawClient) mustGet(t *testing.T, path, proto string) *http.Response {
	t.Helper()
	resp, body, err := c.get(path, proto)
	if err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	if resp.StatusCode != 200 {
		t.Fatalf("GET %s: status %d %q", path, resp.StatusCode, body)
	}
	return resp
}

// waitEOF waits until the server closes the connection; it fails the test
// if data arrives instead.
func (c *rawClient) waitEOF(t *testing.T) time.Time {
	t.Helper()
	c.conn.SetReadDeadline(time.Now().Add(deadline))
	buf := make([]byte, 1)
	n, err := c.r.Read(buf)
	if n > 0 {
		t.Fatalf("unexpected data %q instead of a close", buf[:n])
	}
	if err != io.EOF {
		t.Fatalf("want EOF (a clean close), got %v", err)
	}
	return time.Now()
}

func hello(w http.ResponseWriter, r *http.Request) {
	fmt.Fprintln(w, "hello")
}
