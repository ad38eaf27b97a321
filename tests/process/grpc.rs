//! gRPC under baton: the `grpc` example (tonic's health service served by
//! `baton::serve::http`) and a real gRPC client (Python's grpcio, the C
//! core, from the test venv) calling `grpc.health.v1.Health/Check` from 16
//! threads while the master cycles: 0 failed calls. grpcio retries a call
//! that never left it (gRPC's transparent retry) on a new connection after
//! GOAWAY; tonic's own client does not, and reports such calls as
//! `Cancelled` (see docs/library.md).

use std::path::PathBuf;
use std::time::Duration;

use crate::support::{self, Baton};

/// The `grpc` example: in `BATON_TEST_BINS` (ci/test copies it there), else
/// where `cargo build --release --example grpc` puts it.
fn grpc_example() -> PathBuf {
    let copied = support::hello_bins().join("grpc");
    if copied.exists() {
        return copied;
    }
    let built = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/release/examples/grpc");
    assert!(
        built.exists(),
        "the grpc example is missing: run ci/test, or cargo build --release --example grpc"
    );
    built
}

#[test]
fn grpc_calls_lose_nothing_across_cycles() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("bin")).unwrap();
    support::point(&dir.path().join("bin/grpc"), &grpc_example());
    let baton = Baton::start(
        dir,
        "[program]\ncommand = \"bin/grpc\"\nlisten = [\"127.0.0.1:0\"]\nready_timeout = \"10s\"\ndrain_timeout = \"10s\"\n",
    );
    baton.wait_ready();
    let scratch = tempfile::tempdir().unwrap();
    let (progress, stop) = (scratch.path().join("progress"), scratch.path().join("stop"));
    let client = support::python_client("grpc_client.py", baton.addr(), &progress, &stop);
    let ok_so_far = || -> u64 {
        std::fs::read(&progress)
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .and_then(|v| v["ok"].as_u64())
            .unwrap_or(0)
    };
    let wait_more = |n: u64| {
        let target = ok_so_far() + n;
        support::wait_for("more gRPC calls", Duration::from_secs(60), || {
            (ok_so_far() >= target).then_some(())
        });
    };
    wait_more(500);
    for _ in 0..4 {
        baton.cycle();
        wait_more(500);
    }
    std::fs::write(&stop, b"").unwrap();
    let out = client.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "the gRPC client failed: {stderr}");
    let counts: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}{stderr}", String::from_utf8_lossy(&out.stdout)));
    assert_eq!(counts["failed"], 0, "{counts}");
    assert!(counts["ok"].as_u64() >= Some(2500), "{counts}");
}
