// Command shutdown is the contrast to hello: the same service drained the
// usual way, with http.Server.Shutdown on SIGTERM, as a program written for
// systemd with go-systemd's activation.Listeners and daemon.SdNotify does.
// Shutdown closes idle keep-alive connections at once, racing each client's
// next request, so every cycle under keep-alive load resets some requests
// (see BENCHMARKS.md). Tests and benchmarks run it; do not copy it.
package main

import (
	"context"
	"fmt"
	"log"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"syscall"
	"time"

	"batonworker"
)

// version is set at build time with -ldflags "-X main.version=…".
var version = "0.0.0"

func main() {
	if len(os.Args) > 1 && os.Args[1] == "--probe" {
		fmt.Println(version)
		return
	}
	ls, err := batonworker.Listeners()
	if err != nil {
		log.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(hello), ReadHeaderTimeout: 10 * time.Second}
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ls[0]) }()
	if err := batonworker.Ready(); err != nil {
		log.Fatal(err)
	}
	select {
	case <-stop:
	case err := <-done:
		log.Fatal(err)
	}
	if err := srv.Shutdown(context.Background()); err != nil {
		log.Fatal(err)
	}
}

func hello(w http.ResponseWriter, r *http.Request) {
	if ms, err := strconv.Atoi(r.URL.Query().Get("sleep")); err == nil && ms > 0 {
		time.Sleep(time.Duration(ms) * time.Millisecond)
	}
	fmt.Fprintf(w, "hello %s\n", version)
}
