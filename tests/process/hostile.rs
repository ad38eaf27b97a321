//! Hostile input, through the real CLI: what a build server, a mirror or a
//! manifest controls never reaches outside the release directory, never
//! names files it may not read, and is refused with the limit it broke.

use std::io::Write;
use std::net::TcpStream;
use std::path::Path;
use std::process::Output;
use std::time::Duration;

use crate::support::{self, Baton};

fn check(dir: &Path) -> Output {
    crate::operate::baton(Some(dir), &["check"])
}

/// A host whose file source is `dist/<artifact>`, with a secret beside it
/// in `outside/secret`.
fn host(artifact: &str, extra_verify: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("dist")).unwrap();
    std::fs::create_dir_all(dir.path().join("outside")).unwrap();
    std::fs::write(dir.path().join("outside/secret"), "the secret\n").unwrap();
    std::fs::write(
        dir.path().join("baton.toml"),
        format!(
            "[program]\ncommand = \"releases/current/hello\"\nlisten = [\"127.0.0.1:0\"]\n\
             [releases]\nbinary = \"hello\"\n\
             [fetch]\nsource = \"file\"\npath = \"dist/{artifact}\"\n\
             [verify]\n{extra_verify}"
        ),
    )
    .unwrap();
    dir
}

fn secret_intact(dir: &Path) {
    let path = dir.join("outside/secret");
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "the secret\n");
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&path).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o644, "its mode is untouched");
}

#[test]
fn a_file_manifest_naming_a_file_outside_its_directory_is_refused() {
    for url in [
        "../outside/secret",
        "/etc/passwd",
        "v1/../../outside/secret",
    ] {
        let dir = host("manifest.json", "");
        std::fs::write(
            dir.path().join("dist/manifest.json"),
            serde_json::json!({ "version": "1.0.0", "url": url }).to_string(),
        )
        .unwrap();
        let out = check(dir.path());
        let text = crate::operate::text(&out);
        assert!(!out.status.success(), "{url}: {text}");
        assert!(
            text.contains("below the manifest's directory") && text.contains(url),
            "{url}: {text}"
        );
        // Nothing was read: no digest of the refused file is printed.
        let secret = hex::encode(crate::release::sha256(b"the secret\n"));
        assert!(!text.contains(&secret), "{text}");
        assert!(!text.contains("sha256"), "{url}: {text}");
    }
}

/// A zip whose link chain leaves the release directory: `deep/l -> ..`
/// (the release root), `deep/m -> l/../../outside/secret`; with
/// `overwrite`, a later file entry `deep/./m` tries to write through it.
fn chain_zip(path: &Path, overwrite: bool) {
    let mut zip = zip::ZipWriter::new(std::fs::File::create(path).unwrap());
    let opts = zip::write::SimpleFileOptions::default().unix_permissions(0o755);
    zip.add_directory("deep/", opts).unwrap();
    zip.add_symlink("deep/l", "..", opts).unwrap();
    zip.add_symlink("deep/m", "l/../../outside/secret", opts)
        .unwrap();
    if overwrite {
        zip.start_file("deep/./m", opts.unix_permissions(0o777))
            .unwrap();
        zip.write_all(b"owned\n").unwrap();
    }
    zip.start_file("hello", opts).unwrap();
    zip.write_all(b"#!/bin/sh\necho 1.0.0\n").unwrap();
    zip.finish().unwrap();
}

#[test]
fn an_escaping_link_chain_is_refused_and_nothing_outside_changes() {
    let dir = host("hello.zip", "");
    chain_zip(&dir.path().join("dist/hello.zip"), false);
    let out = check(dir.path());
    let text = crate::operate::text(&out);
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains("deep/m") && text.contains("outside the release"),
        "{text}"
    );
    secret_intact(dir.path());

    let dir = host("hello.zip", "");
    chain_zip(&dir.path().join("dist/hello.zip"), true);
    let out = check(dir.path());
    let text = crate::operate::text(&out);
    // Whatever the verdict, the write never went through the link.
    secret_intact(dir.path());
    assert!(!text.contains("owned"), "{text}");
}

#[test]
fn an_archive_bomb_is_refused_by_the_unpacked_limit() {
    let dir = host("hello.tar.gz", "max_size = \"1MiB\"\n");
    let file = std::fs::File::create(dir.path().join("dist/hello.tar.gz")).unwrap();
    let gz = flate2::write::GzEncoder::new(file, flate2::Compression::fast());
    let mut tar = tar::Builder::new(gz);
    // 64 MiB of zeros: a few hundred KiB compressed, 16 × the 4 MiB allowed.
    let mut header = tar::Header::new_gnu();
    header.set_size(64 << 20);
    header.set_mode(0o755);
    header.set_cksum();
    let reader = std::io::Read::take(std::io::repeat(0), 64 << 20);
    tar.append_data(&mut header, "filler", reader).unwrap();
    tar.into_inner().unwrap().finish().unwrap();
    let size = std::fs::metadata(dir.path().join("dist/hello.tar.gz"))
        .unwrap()
        .len();
    assert!(size < 1 << 20, "the bomb itself fits max_size: {size}");
    let out = check(dir.path());
    let text = crate::operate::text(&out);
    assert!(!out.status.success(), "{text}");
    assert!(text.contains("verify.max_unpacked"), "{text}");
    // Nothing half-unpacked is left behind.
    let left: Vec<_> = std::fs::read_dir(dir.path().join("releases"))
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(
        left.iter()
            .all(|n| n.to_string_lossy().starts_with(".host-id") || n.to_string_lossy() == ".lock"),
        "{left:?}"
    );
}

#[test]
fn a_flood_of_idle_metrics_connections_under_a_low_fd_limit_starves_nothing() {
    // The master under a hard limit of 128 descriptors, which it cannot
    // raise, and 200 idle connections to its metrics listener.
    let dir = Baton::dir_with_hello();
    let wrapper = dir.path().join("baton-low-fds");
    support::script(
        &wrapper,
        &format!(
            "ulimit -n 128\nexec {} \"$@\"",
            support::baton_bin().display()
        ),
    );
    let config = Baton::hello_config("[control]\nmetrics = \"127.0.0.1:0\"\n");
    let baton = Baton::start_from(dir, &config, &wrapper, &[]);
    baton.wait_ready();
    let baseline = baton.fd_count();
    let flood: Vec<TcpStream> = (0..200)
        .filter_map(|_| TcpStream::connect(baton.metrics_addr()).ok())
        .collect();
    assert!(flood.len() > 128, "the flood outnumbers the descriptors");
    // The master still answers, and still starts workers.
    let d = baton.dir.path().to_owned();
    let status: serde_json::Value =
        support::wait_for("baton status", Duration::from_secs(20), || {
            let out = crate::control::cli(&d, &["status", "--json"]);
            out.status
                .success()
                .then(|| serde_json::from_slice(&out.stdout).unwrap())
        });
    assert_eq!(status["workers"].as_array().unwrap().len(), 1, "{status:#}");
    baton.cycle();
    support::wait_version(baton.addr(), "1.0.0");
    assert!(
        baton.fd_count() <= baseline + 40,
        "{} descriptors, {baseline} before the flood",
        baton.fd_count()
    );
    drop(flood);
    support::wait_for(
        "descriptors back to baseline",
        Duration::from_secs(30),
        || (baton.fd_count() <= baseline + 2).then_some(()),
    );
    let (code, _) = support::get(baton.metrics_addr(), "/metrics").unwrap();
    assert_eq!(code, 200);
}

/// The master's resident memory, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[test]
fn a_flood_of_endless_control_requests_keeps_memory_bounded() {
    // 300 peers, each offering 1 MiB with no newline: the master buffers at
    // most 64 KiB for each of at most 64 at once, and answers again after.
    let dir = Baton::dir_with_hello();
    let baton = Baton::start_from(dir, &Baton::hello_config(""), &support::baton_bin(), &[]);
    baton.wait_ready();
    let socket = baton.dir.path().join(".baton.sock");
    let baseline = rss_kib(baton.pid());
    let total = 1 << 20;
    let chunk = vec![b'x'; 64 << 10];
    let mut flood: Vec<(std::os::unix::net::UnixStream, usize)> = (0..300)
        .filter_map(|_| std::os::unix::net::UnixStream::connect(&socket).ok())
        .map(|s| {
            s.set_nonblocking(true).unwrap();
            (s, 0)
        })
        .collect();
    // Each peer writes on until its 1 MiB is sent or the master closed it,
    // as blocking writers would, within a bounded time; the master's memory
    // is sampled all along.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let mut peak = baseline;
    loop {
        let mut pending = false;
        for (stream, sent) in flood.iter_mut().filter(|(_, sent)| *sent < total) {
            match stream.write(&chunk[..chunk.len().min(total - *sent)]) {
                Ok(n) if n > 0 => *sent += n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                _ => *sent = total,
            }
            pending |= *sent < total;
        }
        peak = peak.max(rss_kib(baton.pid()));
        if !pending || std::time::Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(
        peak < baseline + 48 * 1024,
        "{peak} KiB resident under the flood, {baseline} KiB before"
    );
    drop(flood);
    let d = baton.dir.path().to_owned();
    support::wait_for(
        "baton status after the flood",
        Duration::from_secs(30),
        || {
            crate::control::cli(&d, &["status", "--json"])
                .status
                .success()
                .then_some(())
        },
    );
    let after = rss_kib(baton.pid());
    assert!(
        after < baseline + 48 * 1024,
        "{after} KiB resident after the flood, {baseline} KiB before"
    );
}

/// A zip holding `binary` as `hello` with `mode`, and the escaping link
/// chain when `chain`.
fn release_zip(path: &Path, binary: &[u8], mode: u32, chain: bool) {
    let tmp = path.with_extension("tmp");
    let mut zip = zip::ZipWriter::new(std::fs::File::create(&tmp).unwrap());
    let opts = zip::write::SimpleFileOptions::default().unix_permissions(0o755);
    if chain {
        zip.add_directory("deep/", opts).unwrap();
        zip.add_symlink("deep/l", "..", opts).unwrap();
        zip.add_symlink("deep/m", "l/../../outside/secret", opts)
            .unwrap();
    }
    zip.start_file("hello", opts.unix_permissions(mode))
        .unwrap();
    zip.write_all(binary).unwrap();
    zip.finish().unwrap();
    // Renamed into place, as a deploy would, so no poll sees half of it.
    std::fs::rename(&tmp, path).unwrap();
}

#[test]
fn a_running_master_cleans_modes_and_refuses_an_escaping_candidate() {
    let dir = host("hello.zip", "");
    let config = dir.path().join("baton.toml");
    let text = std::fs::read_to_string(&config).unwrap().replace(
        "[releases]\nbinary = \"hello\"\n",
        "[releases]\nbinary = \"hello\"\nsettle = \"1s\"\n",
    );
    let text = text.replace(
        "path = \"dist/hello.zip\"\n",
        "path = \"dist/hello.zip\"\ninterval = \"200ms\"\n",
    );
    let one = std::fs::read(support::hello("1.0.0")).unwrap();
    // The first release asks for setuid, setgid and world-writable bits.
    release_zip(&dir.path().join("dist/hello.zip"), &one, 0o6777, false);
    let baton = Baton::start(
        dir,
        &text.replace("listen", "ready_timeout = \"10s\"\nlisten"),
    );
    baton.wait_ready();
    support::wait_for("1.0.0 promoted", Duration::from_secs(30), || {
        baton.current()
    });
    let installed = baton.dir.path().join("releases/current/hello");
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&installed).unwrap().permissions(),
    );
    assert_eq!(
        mode & 0o7002,
        0,
        "{mode:o}: no setuid, setgid, world-writable"
    );
    assert_eq!(mode & 0o100, 0o100, "{mode:o}: still executable");

    // The candidate carries the escaping chain.
    let two = std::fs::read(support::hello("2.0.0")).unwrap();
    release_zip(&baton.dir.path().join("dist/hello.zip"), &two, 0o755, true);
    let d = baton.dir.path().to_owned();
    // The refusal is counted; asked again (forgetting that it failed
    // before), the check says why.
    support::wait_for("the candidate refused", Duration::from_secs(30), || {
        let out = crate::control::cli(&d, &["status", "--json"]);
        let status: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        (status["checks"]["error"].as_u64() >= Some(1)).then_some(())
    });
    let out = crate::control::cli(&d, &["upgrade", "--force"]);
    let detail = crate::operate::text(&out);
    assert!(!out.status.success(), "{detail}");
    assert!(detail.contains("outside the release"), "{detail}");
    secret_intact(baton.dir.path());
    assert_eq!(
        support::version(baton.addr()),
        "1.0.0",
        "the old release serves on"
    );
}
