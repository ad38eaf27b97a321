// Package batonworker makes a Go net/http service a well-behaved baton
// worker: it takes the sockets the master passes, says when it is ready, and
// drains on the stop signal without resetting a single keep-alive client.
//
// baton speaks the systemd protocols, so the same program also runs under
// systemd socket activation. Standard library only; Go 1.19 or newer; Unix.
//
// # The ten lines
//
//	func main() {
//		ls, err := batonworker.Listeners() // fds 3, 4, … from LISTEN_FDS
//		if err != nil {
//			log.Fatal(err) // run without baton: nothing was passed, nothing is bound
//		}
//		srv := &http.Server{Handler: mux}
//		if err := batonworker.Serve(srv, ls[0]); err != nil { // READY=1, then drain on SIGTERM
//			log.Fatal(err)
//		}
//	}
//
// # Why not http.Server.Shutdown
//
// Shutdown closes every idle keep-alive connection at once. A client such as
// a load balancer, ab -k or any HTTP client pool may have its next request
// already on the wire: it reads a reset instead of an answer. Under `ab -k
// -c 50` with 5 baton cycles that failed about 3 % of 20 000 requests
// (baton's BENCHMARKS.md); with Serve, none. Serve drains the way baton's own Rust
// helper does:
//
//   - it stops accepting (the master still holds the socket, so new
//     connections queue for the next worker);
//   - every open connection answers its next request with
//     "Connection: close" and is closed after that response;
//   - a connection that stays idle is closed only once it has been idle for
//     a grace period (DefaultIdleGrace, 1 s), never in the instant after a
//     response;
//   - requests in flight finish; then Serve returns nil.
//
// HTTP/2 connections (ServeTLS) are told to go away with GOAWAY, which has
// no such race, through http.Server.Shutdown once the HTTP/1 connections are
// gone.
//
// # The protocol
//
// Sockets arrive as fds 3, 4, … with LISTEN_FDS, LISTEN_PID (this process)
// and LISTEN_FDNAMES; readiness is a READY=1 datagram to NOTIFY_SOCKET; the
// stop signal is BATON_STOP_SIGNAL (SIGTERM by default; SIGTERM and SIGINT
// always work too).
package batonworker
