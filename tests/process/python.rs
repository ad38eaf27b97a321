//! A worker in another language: Python, standard library only.

use std::path::Path;

use crate::support::{self, Baton, Load, LoadMode};

#[test]
fn python_worker_cycles_under_load_with_zero_failures() {
    let dir = tempfile::tempdir().unwrap();
    let worker = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/workers/hello.py");
    let version_file = dir.path().join("version");
    std::fs::write(&version_file, "py-1").unwrap();
    // The wrapper reads the version to serve at each start, standing in for
    // a new build.
    support::script(
        &dir.path().join("run.sh"),
        &format!(
            "exec python3 {} \"$(cat {})\"",
            worker.display(),
            version_file.display()
        ),
    );
    let baton = Baton::start(
        dir,
        "[program]\ncommand = \"./run.sh\"\nlisten = [\"127.0.0.1:0\"]\nready_timeout = \"10s\"\ndrain_timeout = \"10s\"\n",
    );
    baton.wait_ready();
    let addr = baton.addr();
    assert_eq!(support::version(addr), "py-1");
    let load = Load::start(addr, 64, LoadMode::NewConnection);
    load.wait_more(300);
    for i in 0..10 {
        let next = format!("py-{}", i + 2);
        std::fs::write(&version_file, &next).unwrap();
        baton.cycle();
        support::wait_version(addr, &next);
        load.wait_more(100);
    }
    let report = load.finish();
    assert_eq!(report.failed, 0, "failed requests: {:?}", report.errors);
    assert!(report.versions.len() >= 10, "{:?}", report.versions);
}
