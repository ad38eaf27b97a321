//! `baton rollout watch` against a real Prometheus (Debian's package)
//! scraping real baton masters: two canaries fail a release, the watch
//! reads their `baton_trials_total` and halts the rollout by re-signing the
//! manifest at rollout 0; a good release under the same gate stays open.
//! It fails closed: Prometheus down, or scraping no baton master, is an
//! error (exit 1), never a healthy fleet.

use std::time::Duration;

use serde_json::Value;

use crate::fleet::{baton_exit, Publisher};
use crate::reports::{canaries_and_others, failing_build};
use crate::support::prometheus::Prometheus;
use crate::support::{self, Baton};
use crate::trial::seed_release;

/// A canary host serving a seeded 1.0.0 from `publisher`'s directory, with
/// metrics on a free port.
fn host(publisher: &Publisher, host_id: &str, key: &str) -> Baton {
    let dir = tempfile::tempdir().unwrap();
    seed_release(dir.path(), "1.0.0");
    let config = format!(
        "[program]\ncommand = \"releases/current/hello\"\nlisten = [\"127.0.0.1:0\"]\nready_timeout = \"10s\"\n\
         drain_timeout = \"10s\"\n[releases]\nbinary = \"hello\"\nsettle = \"300ms\"\n\
         [fetch]\nsource = \"file\"\npath = \"{}\"\ninterval = \"200ms\"\nhost_id = \"{host_id}\"\n\
         [verify]\nminisign_key = \"{key}\"\n[control]\nmetrics = \"127.0.0.1:0\"\n",
        publisher.out().join("manifest.json").display()
    );
    let baton = Baton::start(dir, &config);
    baton.wait_ready();
    baton
}

/// `baton rollout watch --once`: its exit code and output.
fn watch(prometheus: &str, publisher: &Publisher) -> (i32, String) {
    let (out, key) = (publisher.out(), publisher.key("k"));
    baton_exit(&[
        "rollout",
        "watch",
        "--once",
        "--prometheus",
        prometheus,
        "--to",
        out.to_str().unwrap(),
        "--sign",
        &key,
    ])
}

fn manifest(publisher: &Publisher) -> Value {
    serde_json::from_slice(&std::fs::read(publisher.out().join("manifest.json")).unwrap()).unwrap()
}

#[test]
fn a_watch_halts_a_release_its_canaries_failed_and_fails_closed() {
    let publisher = Publisher::new();
    let public = publisher.keygen("k");
    let key = publisher.key("k");
    publisher.publish(&[
        "--version",
        "1.0.0",
        "--sign",
        &key,
        &publisher.artifact("1.0.0"),
    ]);
    let (canaries, _) = canaries_and_others(&["2.0.0", "2.0.1"], 50, 2);
    let hosts: Vec<Baton> = canaries
        .iter()
        .map(|id| host(&publisher, id, &public))
        .collect();
    let prometheus = Prometheus::start(&[hosts[0].metrics_addr(), hosts[1].metrics_addr()]);

    // A bad release: both canaries fail it.
    let bad = publisher.path("hello-2.0.0-bad");
    std::fs::write(&bad, failing_build("2.0.0")).unwrap();
    let gate = "canary=50,max_failures=2";
    publisher.publish(&[
        "--version",
        "2.0.0",
        "--rollout",
        "0s=50,1h=100",
        "--gate",
        gate,
        "--sign",
        &key,
        bad.to_str().unwrap(),
    ]);
    for h in &hosts {
        support::wait_for("the canary's failed trial", Duration::from_secs(30), || {
            (!h.failed().is_empty()).then_some(())
        });
    }
    // Prometheus down: an error, not a healthy fleet.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", l.local_addr().unwrap())
    };
    let (code, text) = watch(&closed, &publisher);
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("cannot read Prometheus"), "{text}");

    let text = support::wait_for("the watch to trip", Duration::from_secs(90), || {
        let (code, text) = watch(&prometheus.url(), &publisher);
        assert!(code == 0 || code == 3, "{text}");
        (code == 3).then_some(text)
    });
    assert!(text.contains("2.0.0: gate tripped: 2 failed"), "{text}");
    assert!(text.contains("2 failed trials (max_failures 2)"), "{text}");
    // Named by host id, with where they failed.
    assert!(
        text.contains(&format!("{} {}: failed at start", canaries[0], canaries[1]))
            || text.contains(&format!("{} {}: failed at start", canaries[1], canaries[0])),
        "{text}"
    );
    assert!(text.contains("halted"), "{text}");
    let m = manifest(&publisher);
    assert_eq!(
        (m["version"].as_str(), m["rollout"].as_u64()),
        (Some("2.0.0"), Some(0))
    );
    assert!(m.get("gate").is_some(), "the gate is kept");
    // Looking again re-signs nothing: it is halted already (and its
    // signature verified, or the watch would refuse it).
    let (code, text) = watch(&prometheus.url(), &publisher);
    assert_eq!(code, 3, "{text}");
    assert!(text.contains("already halted"), "{text}");
    for h in &hosts {
        support::wait_version(h.addr(), "1.0.0");
    }

    // A good release under the same gate stays open.
    let good = publisher.path("hello-2.0.1");
    std::fs::write(
        &good,
        format!(
            "#!/bin/sh\nif [ \"$BATON_PROBE\" = 1 ]; then echo 2.0.1; exit 0; fi\nexec {} \"$@\"\n",
            support::hello("2.0.0").display()
        ),
    )
    .unwrap();
    publisher.publish(&[
        "--version",
        "2.0.1",
        "--rollout",
        "0s=50,1h=100",
        "--sign",
        &key,
        good.to_str().unwrap(),
    ]);
    for h in &hosts {
        h.wait_current("2.0.1-");
    }
    let text = support::wait_for(
        "the promotions in Prometheus",
        Duration::from_secs(90),
        || {
            let (code, text) = watch(&prometheus.url(), &publisher);
            assert_eq!(code, 0, "{text}");
            text.contains("2 promoted").then_some(text)
        },
    );
    assert!(text.contains("2.0.1: gate open"), "{text}");
    assert_ne!(manifest(&publisher)["rollout"], 0, "the schedule stands");
    drop(prometheus);

    // A Prometheus that scrapes no baton master: no data is not healthy.
    let empty = Prometheus::start(&[]);
    let (code, text) = watch(&empty.url(), &publisher);
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("has no baton master"), "{text}");
}
