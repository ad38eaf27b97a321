//go:build unix

package batonworker

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestParseListenEnv(t *testing.T) {
	const pid = 4242
	cases := []struct {
		env   map[string]string
		count int
		names []string
		err   string
	}{
		{env: map[string]string{}, err: "LISTEN_FDS is not set"},
		{env: map[string]string{"LISTEN_FDS": "2", "LISTEN_PID": "4242"}, count: 2, names: []string{"unknown", "unknown"}},
		{env: map[string]string{"LISTEN_FDS": "2", "LISTEN_PID": "4242", "LISTEN_FDNAMES": "web:admin"}, count: 2, names: []string{"web", "admin"}},
		{env: map[string]string{"LISTEN_FDS": "2", "LISTEN_PID": "4242", "LISTEN_FDNAMES": "web"}, err: "1 names for 2 sockets"},
		{env: map[string]string{"LISTEN_FDS": "1", "LISTEN_PID": "1"}, err: "meant for process 1, not this one (4242)"},
		{env: map[string]string{"LISTEN_FDS": "1"}, err: "LISTEN_PID is not"},
		{env: map[string]string{"LISTEN_FDS": "x", "LISTEN_PID": "4242"}, err: "not a count"},
		{env: map[string]string{"LISTEN_FDS": "0", "LISTEN_PID": "4242"}, err: "LISTEN_FDS=0"},
	}
	for _, c := range cases {
		count, names, err := parseListenEnv(func(k string) string { return c.env[k] }, pid)
		if c.err != "" {
			if err == nil || !strings.Contains(err.Error(), c.err) {
				t.Errorf("%v: want an error with %q, got %v", c.env, c.err, err)
			}
			continue
		}
		if err != nil || count != c.count || strings.Join(names, ":") != strings.Join(c.names, ":") {
			t.Errorf("%v: got %d %v %v", c.env, count, names, err)
		}
	}
}

func TestWithoutSocketsTheErrorSaysWhy(t *testing.T) {
	if os.Getenv("LISTEN_FDS") != "" {
		t.Skip("this test process was itself given sockets")
	}
	_, err := Listeners()
	if !errors.Is(err, ErrNoSockets) || !strings.Contains(err.Error(), "baton run") {
		t.Fatalf("want ErrNoSockets naming baton run, got %v", err)
	}
	if _, err := Named(); !errors.Is(err, ErrNoSockets) {
		t.Fatalf("Named: want ErrNoSockets, got %v", err)
	}
}

// TestInheritedSockets runs this test binary as a child given a TCP
// listener, a UDP socket and a unix listener as fds 3, 4 and 5 with
// LISTEN_PID set to the child's own PID by `sh -c '… exec'`, as baton does.
func TestInheritedSockets(t *testing.T) {
	if os.Getenv("BATONWORKER_CHILD") == "1" {
		inheritedChild()
		return
	}
	tcp, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer tcp.Close()
	udp, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer udp.Close()
	sock := filepath.Join(t.TempDir(), "admin.sock")
	unix, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close()
	var files []*os.File
	for _, s := range []interface{ File() (*os.File, error) }{
		tcp.(*net.TCPListener), udp.(*net.UDPConn), unix.(*net.UnixListener),
	} {
		f, err := s.File()
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		files = append(files, f)
	}
	cmd := exec.Command("sh", "-c", `LISTEN_PID=$$ exec "$0" -test.run='^TestInheritedSockets$'`, os.Args[0])
	cmd.ExtraFiles = files
	cmd.Env = append(os.Environ(), "BATONWORKER_CHILD=1", "LISTEN_FDS=3", "LISTEN_FDNAMES=web:dns:admin")
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	// The child answers one connection on each stream socket and one
	// datagram; the listeners here are the same sockets.
	for _, addr := range [][2]string{{"tcp", tcp.Addr().String()}, {"unix", sock}} {
		c, err := net.DialTimeout(addr[0], addr[1], deadline)
		if err != nil {
			t.Fatal(err)
		}
		c.SetDeadline(time.Now().Add(deadline))
		got, err := io.ReadAll(c)
		c.Close()
		if err != nil || !strings.HasPrefix(string(got), "child ") {
			t.Fatalf("%s: got %q, %v", addr[0], got, err)
		}
	}
	c, err := net.Dial("udp", udp.LocalAddr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(deadline))
	if _, err := c.Write([]byte("ping")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 64)
	n, err := c.Read(buf)
	if err != nil || string(buf[:n]) != "pong" {
		t.Fatalf("udp: %q %v", buf[:n], err)
	}
	report, _ := io.ReadAll(out)
	if err := cmd.Wait(); err != nil {
		t.Fatalf("child failed: %v\n%s", err, report)
	}
	if !strings.Contains(string(report), "child ok") {
		t.Fatalf("child report: %s", report)
	}
}

// inheritedChild is the child's side of TestInheritedSockets.
func inheritedChild() {
	fail := func(format string, args ...interface{}) {
		fmt.Printf("child failed: "+format+"\n", args...)
		os.Exit(1)
	}
	sockets, err := Sockets()
	if err != nil {
		fail("%v", err)
	}
	for _, v := range []string{"LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"} {
		if _, set := os.LookupEnv(v); set {
			fail("%s is still set", v)
		}
	}
	if len(sockets) != 3 || sockets[0].Name != "web" || sockets[1].Name != "dns" || sockets[2].Name != "admin" {
		fail("sockets %+v", sockets)
	}
	again, _ := Sockets()
	if again[0].Listener != sockets[0].Listener {
		fail("a second call made new sockets")
	}
	ls, err := Listeners()
	if err != nil || len(ls) != 2 {
		fail("listeners %v %v", ls, err)
	}
	named, err := Named()
	if err != nil || named["web"] != ls[0] || named["admin"] != ls[1] || len(named) != 2 {
		fail("named %v %v", named, err)
	}
	packets, err := PacketConns()
	if err != nil || packets["dns"] == nil || len(packets) != 1 {
		fail("packet conns %v %v", packets, err)
	}
	for _, name := range []string{"web", "admin"} {
		c, err := named[name].Accept()
		if err != nil {
			fail("accept on %s: %v", name, err)
		}
		fmt.Fprintf(c, "child %s\n", name)
		c.Close()
	}
	buf := make([]byte, 64)
	n, from, err := packets["dns"].ReadFrom(buf)
	if err != nil || string(buf[:n]) != "ping" {
		fail("udp read %q %v", buf[:n], err)
	}
	if _, err := packets["dns"].WriteTo([]byte("pong"), from); err != nil {
		fail("udp write: %v", err)
	}
	fmt.Println("child ok")
}
