// Command hello is a Go service run by baton: it serves on the sockets the
// master passes and drains without resetting a keep-alive client.
//
//	go build -ldflags "-X main.version=1.0.0" -o hello-1.0.0 ./hello
//	baton run --config baton.toml     # [program] command = "./hello-1.0.0"
//	./hello-1.0.0 --probe             # prints 1.0.0, as baton's probe expects
//
// GET / answers "hello <version>"; GET /?sleep=<ms> answers after that delay.
package main

import (
	"fmt"
	"log"
	"net/http"
	"os"
	"strconv"
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
	if err := batonworker.Serve(srv, ls[0]); err != nil {
		log.Fatal(err)
	}
}

func hello(w http.ResponseWriter, r *http.Request) {
	if ms, err := strconv.Atoi(r.URL.Query().Get("sleep")); err == nil && ms > 0 {
		time.Sleep(time.Duration(ms) * time.Millisecond)
	}
	fmt.Fprintf(w, "hello %s\n", version)
}
