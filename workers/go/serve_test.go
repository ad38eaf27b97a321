//go:build unix

package batonworker

import (
	"bufio"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

func TestNextResponseSaysCloseOnceDraining(t *testing.T) {
	for _, proto := range []string{"HTTP/1.1", "HTTP/1.0"} {
		t.Run(proto, func(t *testing.T) {
			r := serveLocal(t, &Server{HTTP: &http.Server{Handler: http.HandlerFunc(hello)}})
			c := dial(t, r.addr)
			resp := c.mustGet(t, "/", proto)
			if resp.Close {
				t.Fatalf("before the drain the connection should stay open: %v", resp.Header)
			}
			r.drain(t)
			resp = c.mustGet(t, "/", proto)
			// net/http's reader drops "Connection: close" from an HTTP/1.1
			// response once it has set Close.
			if !resp.Close || proto == "HTTP/1.0" && resp.Header.Get("Connection") != "close" {
				t.Fatalf("the first response after the stop must say Connection: close: %v", resp.Header)
			}
			c.waitEOF(t)
			r.wait(t)
		})
	}
}

func TestIdleConnectionIsClosedOnlyAfterTheGrace(t *testing.T) {
	grace := 400 * time.Millisecond
	r := serveLocal(t, &Server{HTTP: &http.Server{Handler: http.HandlerFunc(hello)}, IdleGrace: grace})
	c := dial(t, r.addr)
	sent := time.Now()
	c.mustGet(t, "/", "HTTP/1.1")
	r.drain(t)
	closed := c.waitEOF(t)
	if idle := closed.Sub(sent); idle < grace {
		t.Fatalf("an idle connection was closed after %v, before the %v grace", idle, grace)
	}
	r.wait(t)
}

func TestRequestsInFlightFinish(t *testing.T) {
	entered, release := make(chan struct{}), make(chan struct{})
	handler := http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		if req.URL.Path == "/slow" {
			close(entered)
			<-release
		}
		fmt.Fprintln(w, "done")
	})
	r := serveLocal(t, &Server{HTTP: &http.Server{Handler: handler}, IdleGrace: 100 * time.Millisecond})
	c := dial(t, r.addr)
	type result struct {
		resp *http.Response
		body string
		err  error
	}
	got := make(chan result, 1)
	go func() {
		resp, body, err := c.get("/slow", "HTTP/1.1")
		got <- result{resp, body, err}
	}()
	<-entered
	r.drain(t)
	// Stopped accepting: nobody else holds this test's socket, so a new
	// connection is refused.
	if c, err := net.DialTimeout("tcp", r.addr, deadline); err == nil {
		c.Close()
		t.Fatal("a new connection was accepted after the stop")
	}
	select {
	case err := <-r.done:
		t.Fatalf("Serve returned (%v) with a request in flight", err)
	default:
	}
	close(release)
	res := <-got
	if res.err != nil || res.resp.StatusCode != 200 || res.body != "done\n" {
		t.Fatalf("the request in flight failed: %v %v %q", res.err, res.resp, res.body)
	}
	r.wait(t)
}

// The property baton needs: keep-alive clients hammering the server while
// it drains see no error at all, and each is told to close.
func TestKeepAliveLoadSeesNoErrorThroughTheDrain(t *testing.T) {
	r := serveLocal(t, &Server{HTTP: &http.Server{Handler: http.HandlerFunc(hello)}})
	const clients = 20
	var wg sync.WaitGroup
	var mu sync.Mutex
	var failures []string
	counts := make([]int, clients)
	started := make(chan struct{}, clients)
	for i := 0; i < clients; i++ {
		proto := "HTTP/1.1"
		if i%2 == 1 {
			proto = "HTTP/1.0"
		}
		c := dial(t, r.addr)
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			// Bounded: at most this many requests per client.
			for n := 0; n < 200000; n++ {
				resp, body, err := c.get("/", proto)
				if err == nil && (resp.StatusCode != 200 || body != "hello\n") {
					err = fmt.Errorf("status %d body %q", resp.StatusCode, body)
				}
				if err != nil {
					mu.Lock()
					failures = append(failures, fmt.Sprintf("client %d request %d: %v", i, n, err))
					mu.Unlock()
					return
				}
				counts[i]++
				if n == 10 {
					started <- struct{}{}
				}
				if resp.Close {
					return
				}
			}
			mu.Lock()
			failures = append(failures, fmt.Sprintf("client %d was never told to close", i))
			mu.Unlock()
		}(i)
	}
	for i := 0; i < clients; i++ {
		select {
		case <-started:
		case <-time.After(deadline):
			t.Fatal("the clients did not get going")
		}
	}
	r.drain(t)
	wg.Wait()
	r.wait(t)
	if len(failures) > 0 {
		t.Fatalf("%d clients failed: %v", len(failures), failures)
	}
}

func TestReadyComesOnceEveryListenerAccepts(t *testing.T) {
	msgs := notifySocket(t)
	var ls []net.Listener
	for i := 0; i < 2; i++ {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		ls = append(ls, l)
	}
	stop := make(chan struct{})
	done := make(chan error, 1)
	go func() {
		done <- (&Server{HTTP: &http.Server{Handler: http.HandlerFunc(hello)}, Stop: stop}).Serve(ls...)
	}()
	waitMessage(t, msgs, "READY=1")
	for _, l := range ls {
		dial(t, l.Addr().String()).mustGet(t, "/", "HTTP/1.1")
	}
	close(stop)
	waitMessage(t, msgs, "STOPPING=1")
	r := &running{done: done}
	r.wait(t)
}

func TestTheStopSignalDrains(t *testing.T) {
	t.Setenv("BATON_STOP_SIGNAL", "SIGUSR1")
	msgs := notifySocket(t)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- Serve(&http.Server{Handler: http.HandlerFunc(hello)}, l) }()
	// The handler is installed before READY=1.
	waitMessage(t, msgs, "READY=1")
	c := dial(t, l.Addr().String())
	c.mustGet(t, "/", "HTTP/1.1")
	if err := syscall.Kill(os.Getpid(), syscall.SIGUSR1); err != nil {
		t.Fatal(err)
	}
	waitMessage(t, msgs, "STOPPING=1")
	if resp := c.mustGet(t, "/", "HTTP/1.1"); !resp.Close {
		t.Fatal("no Connection: close after the stop signal")
	}
	(&running{done: done}).wait(t)
}

func TestServeRefusesANilListener(t *testing.T) {
	err := Serve(&http.Server{}, nil)
	if err == nil || !strings.Contains(err.Error(), "nil listener") {
		t.Fatalf("want a nil-listener error, got %v", err)
	}
}

func TestServeTLSDrainsHTTP1AndHTTP2(t *testing.T) {
	cert, pool := selfSigned(t)
	entered, release := make(chan struct{}), make(chan struct{})
	var once sync.Once
	handler := http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		if req.URL.Path == "/slow" {
			once.Do(func() { close(entered) })
			<-release
		}
		fmt.Fprintf(w, "%s\n", req.Proto)
	})
	msgs := notifySocket(t)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: handler, TLSConfig: &tls.Config{Certificates: []tls.Certificate{cert}}}
	stop := make(chan struct{})
	done := make(chan error, 1)
	go func() {
		done <- (&Server{HTTP: srv, Stop: stop, IdleGrace: 200 * time.Millisecond}).ServeTLS("", "", l)
	}()
	waitMessage(t, msgs, "READY=1")

	// HTTP/1.1 over TLS.
	conn, err := tls.Dial("tcp", l.Addr().String(), &tls.Config{RootCAs: pool, ServerName: "localhost", NextProtos: []string{"http/1.1"}})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	h1 := &rawClient{conn: conn, r: bufio.NewReader(conn)}
	h1.mustGet(t, "/", "HTTP/1.1")

	// HTTP/2 with a request in flight across the stop.
	client := &http.Client{Transport: &http.Transport{
		TLSClientConfig:   &tls.Config{RootCAs: pool, ServerName: "localhost"},
		ForceAttemptHTTP2: true,
	}, Timeout: deadline}
	defer client.CloseIdleConnections()
	type result struct {
		body string
		err  error
	}
	slow := make(chan result, 1)
	go func() {
		resp, err := client.Get("https://" + l.Addr().String() + "/slow")
		if err != nil {
			slow <- result{err: err}
			return
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		slow <- result{string(b), err}
	}()
	<-entered

	close(stop)
	waitMessage(t, msgs, "STOPPING=1")
	if resp := h1.mustGet(t, "/", "HTTP/1.1"); !resp.Close {
		t.Fatal("no Connection: close over TLS")
	}
	close(release)
	if res := <-slow; res.err != nil || res.body != "HTTP/2.0\n" {
		t.Fatalf("the HTTP/2 request in flight: %q %v", res.body, res.err)
	}
	(&running{done: done}).wait(t)
}

// selfSigned makes a certificate for "localhost" and a pool trusting it.
func selfSigned(t *testing.T) (tls.Certificate, *x509.CertPool) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "localhost"},
		DNSNames:     []string{"localhost"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(leaf)
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}, pool
}
