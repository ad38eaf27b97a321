//! TLS through `baton::serve`: the example with `--tls-cert/--tls-key`
//! (a self-signed certificate made here with rcgen) serves HTTP/2 and
//! HTTP/1.1 by ALPN with no failed request across cycles; a renewed
//! certificate is served by the next worker (each loads the files at its
//! start); a key that does not load fails the new worker, naming the file,
//! and the old one serves on.

use std::path::Path;
use std::time::Duration;

use crate::http2::no_failures_across_cycles;
use crate::support::{self, Baton};

/// Writes a fresh self-signed certificate for `localhost` to
/// `cert.pem`/`key.pem` in `dir` (temp file, rename); returns the
/// certificate, for a client to trust.
fn renew(dir: &Path) -> reqwest::Certificate {
    let made = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    for (name, text) in [
        ("cert.pem", made.cert.pem()),
        ("key.pem", made.key_pair.serialize_pem()),
    ] {
        let tmp = dir.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, dir.join(name)).unwrap();
    }
    reqwest::Certificate::from_pem(made.cert.pem().as_bytes()).unwrap()
}

/// A client that trusts only `cert` and reaches `localhost` at `baton`.
fn client(baton: &Baton, cert: reqwest::Certificate, http1: bool) -> reqwest::Client {
    let mut b = reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(cert)
        .resolve("localhost", baton.addr())
        .timeout(Duration::from_secs(20));
    if http1 {
        b = b.http1_only();
    }
    b.build().unwrap()
}

fn get(client: &reqwest::Client, url: &str) -> Result<String, String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let r = client.get(url).send().await.map_err(|e| format!("{e:?}"))?;
        r.text().await.map_err(|e| format!("{e:?}"))
    })
}

#[test]
fn tls_serves_h2_and_http1_by_alpn_and_a_cycle_picks_up_a_renewed_certificate() {
    let dir = Baton::dir_with_hello();
    let first = renew(dir.path());
    let config = format!(
        "[program]\ncommand = \"bin/hello\"\nargs = [\"--tls-cert\", \"{0}/cert.pem\", \"--tls-key\", \"{0}/key.pem\"]\n\
         listen = [\"127.0.0.1:0\"]\nready_timeout = \"10s\"\ndrain_timeout = \"10s\"\n",
        dir.path().display()
    );
    let baton = Baton::start(dir, &config);
    baton.wait_ready();
    let url = format!("https://localhost:{}/", baton.addr().port());
    no_failures_across_cycles(
        &baton,
        vec![
            (
                client(&baton, first.clone(), false),
                url.clone(),
                reqwest::Version::HTTP_2,
            ),
            (
                client(&baton, first.clone(), true),
                url.clone(),
                reqwest::Version::HTTP_11,
            ),
        ],
        3,
    );
    // Renewed in place: the next worker serves the new certificate.
    let second = renew(baton.dir.path());
    baton.cycle();
    support::wait_for("the renewed certificate", Duration::from_secs(30), || {
        get(&client(&baton, second.clone(), false), &url).ok()
    });
    // Until the old worker is gone it may still take a connection.
    support::wait_for("the old worker to exit", Duration::from_secs(20), || {
        (baton.children().len() == 1).then_some(())
    });
    let old = get(&client(&baton, first.clone(), false), &url).unwrap_err();
    assert!(
        old.contains("certificate") || old.contains("Certificate"),
        "{old}"
    );
    // A key that does not load: the new worker exits naming it; the old
    // one serves on.
    std::fs::write(baton.dir.path().join("key.pem"), "not a key\n").unwrap();
    let failures = baton.count("cannot load the TLS private key");
    baton.signal(libc::SIGHUP);
    baton.wait_count(
        "cannot load the TLS private key",
        failures + 1,
        Duration::from_secs(30),
    );
    assert!(get(&client(&baton, second, false), &url)
        .unwrap()
        .contains("hello 1.0.0"));
}
