//! Programs that run from a plain file instead of the releases layout: the
//! binary is replaced in place.

use std::process::{Command, Stdio};
use std::time::Duration;

use crate::support::{self, Baton, Load, LoadMode};

fn drop_in(dir: &std::path::Path, version: &str) {
    support::copy_executable(&support::hello(version), &dir.join("dist/.hello"));
    std::fs::rename(dir.join("dist/.hello"), dir.join("dist/hello")).unwrap();
}

#[test]
fn daemon_replaces_a_plain_binary_in_place() {
    let dir = tempfile::tempdir().unwrap();
    for d in ["bin", "dist"] {
        std::fs::create_dir(dir.path().join(d)).unwrap();
    }
    support::copy_executable(&support::hello("1.0.0"), &dir.path().join("bin/hello"));
    let root = dir.path().to_owned();
    let baton = Baton::start(
        dir,
        "[program]\ncommand = \"bin/hello\"\nlisten = [\"127.0.0.1:0\"]\n[fetch]\nsource = \"file\"\npath = \"dist/hello\"\ninterval = \"1s\"\n",
    );
    baton.wait_ready();
    assert_eq!(support::version(baton.addr()), "1.0.0");
    let load = Load::start(baton.addr(), 16, LoadMode::KeepAlive);
    drop_in(&root, "2.0.0");
    support::wait_version(baton.addr(), "2.0.0");
    let report = load.finish();
    assert_eq!(report.failed, 0, "{:?}", report.errors);
    // Replaced once the new release has passed its trial.
    let two = std::fs::read(support::hello("2.0.0")).unwrap();
    support::wait_for("bin/hello to be 2.0.0", Duration::from_secs(30), || {
        (std::fs::read(root.join("bin/hello")).unwrap() == two).then_some(())
    });
    // The adopted original stays as the rollback target.
    let state = root.join("bin/.hello.baton");
    let previous = std::fs::read_link(state.join("previous")).unwrap();
    assert_eq!(
        std::fs::read(state.join(previous).join("hello")).unwrap(),
        std::fs::read(support::hello("1.0.0")).unwrap()
    );
}

#[test]
fn library_mode_replaces_its_own_executable_with_self_replace() {
    let dir = tempfile::tempdir().unwrap();
    for d in ["app", "dist"] {
        std::fs::create_dir(dir.path().join(d)).unwrap();
    }
    let exe = dir.path().join("app/hello");
    support::copy_executable(&support::hello("1.0.0"), &exe);
    let log = dir.path().join("hello.log");
    // Another test thread forking while the copy was open for writing makes
    // the file briefly "busy"; retry that case.
    let mut master = support::wait_for(
        "the copied executable to start",
        Duration::from_secs(5),
        || match Command::new(&exe)
            .args(["--listen", "127.0.0.1:0", "--fetch-file"])
            .arg(dir.path().join("dist/hello"))
            .env("BATON_LOG", "info")
            .stdin(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
        {
            Ok(child) => Some(child),
            Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) => None,
            Err(e) => panic!("cannot start {}: {e}", exe.display()),
        },
    );
    let addr = support::wait_listening(&log);
    support::wait_version(addr, "1.0.0");
    drop_in(dir.path(), "2.0.0");
    support::wait_version(addr, "2.0.0");
    let two = std::fs::read(support::hello("2.0.0")).unwrap();
    support::wait_for(
        "the executable to be 2.0.0",
        Duration::from_secs(30),
        || (std::fs::read(&exe).unwrap() == two).then_some(()),
    );
    assert!(
        master.try_wait().unwrap().is_none(),
        "the master kept its PID"
    );
    // SAFETY: kill(2) has no memory preconditions.
    unsafe { libc::kill(master.id() as i32, libc::SIGTERM) };
    let status = support::wait_for("the master to exit", Duration::from_secs(15), || {
        master.try_wait().unwrap()
    });
    assert!(
        status.success(),
        "{}",
        std::fs::read_to_string(&log).unwrap()
    );
}
