//! A gRPC service under baton: tonic's standard health service
//! (`grpc.health.v1.Health`), served by `baton::serve::http` on the socket
//! the worker inherits, over cleartext HTTP/2. On `worker.shutdown()` each
//! connection gets GOAWAY and finishes the calls it took, so a gRPC client
//! loses nothing across a graceful cycle.
//!
//! ```sh
//! cargo build --release --example grpc
//! # [program] command = "target/release/examples/grpc"
//! grpcurl -plaintext 127.0.0.1:8080 grpc.health.v1.Health/Check
//! ```

use tonic_health::ServingStatus;

const VERSION: &str = match option_env!("HELLO_VERSION") {
    Some(v) => v,
    None => "1.0.0",
};

fn main() -> std::process::ExitCode {
    let mut options = baton::Options::new(VERSION);
    let mut args = std::env::args().skip(1);
    let mut listen = Vec::new();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--listen" => listen.extend(args.next()),
            "--probe" => {} // handled by baton::run before any serving code
            other => {
                eprintln!("grpc: unknown argument {other:?}; use --listen ADDR or --probe");
                return std::process::ExitCode::from(2);
            }
        }
    }
    if listen.is_empty() {
        listen.push("127.0.0.1:8080".to_owned());
    }
    for addr in listen {
        options = options.listen(addr);
    }
    let result = baton::run(options, |mut worker| async move {
        let listener = worker.tcp(0)?;
        let (reporter, health) = tonic_health::server::health_reporter();
        reporter
            .set_service_status("", ServingStatus::Serving)
            .await;
        let routes = tonic::service::Routes::new(health);
        worker.ready()?;
        baton::serve::http(listener, routes, worker.shutdown()).await
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("grpc: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
