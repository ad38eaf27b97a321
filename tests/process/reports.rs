//! Trial reports: with `[fetch] report = true`, real masters write what
//! their trials came to beside the manifest they read (a directory, an S3
//! bucket on moto): `started` before the trial worker runs, then `promoted`
//! or `failed` with its stage, exit and last stderr line, each once. A
//! store that refuses the writes changes nothing about the trial.

use std::path::Path;
use std::time::Duration;

use serde_json::Value;

use crate::control::ok;
use crate::fleet::in_cohort;
use crate::release::sha256;
use crate::support::s3::{S3Server, ENV};
use crate::support::{self, Baton};
use crate::trial::seed_release;

const HOST: &str = "web-7";

/// A store directory offering `bytes` as `version` through an unsigned
/// manifest.
fn offer(store: &Path, version: &str, bytes: &[u8]) {
    offer_gated(store, version, bytes, None);
}

/// As [`offer`], with a gate.
fn offer_gated(store: &Path, version: &str, bytes: &[u8], gate: Option<Value>) {
    std::fs::create_dir_all(store).unwrap();
    let name = format!("hello-{version}");
    std::fs::write(store.join(&name), bytes).unwrap();
    let mut manifest = serde_json::json!({
        "version": version, "url": name, "sha256": hex::encode(sha256(bytes)),
    });
    if let Some(gate) = gate {
        manifest["gate"] = gate;
    }
    let tmp = store.join(".manifest.tmp");
    std::fs::write(&tmp, manifest.to_string()).unwrap();
    std::fs::rename(&tmp, store.join("manifest.json")).unwrap();
}

/// A host serving a seeded 1.0.0 that reads `store/manifest.json`.
fn host(store: &Path) -> Baton {
    host_named(store, HOST)
}

fn host_named(store: &Path, host_id: &str) -> Baton {
    host_named_with(store, host_id, "300ms")
}

fn host_named_with(store: &Path, host_id: &str, settle: &str) -> Baton {
    let dir = tempfile::tempdir().unwrap();
    seed_release(dir.path(), "1.0.0");
    let config = format!(
        "[program]\ncommand = \"releases/current/hello\"\nlisten = [\"127.0.0.1:0\"]\nready_timeout = \"10s\"\n\
         drain_timeout = \"10s\"\n[releases]\nbinary = \"hello\"\nsettle = \"{settle}\"\n\
         [fetch]\nsource = \"file\"\npath = \"{}\"\ninterval = \"200ms\"\nhost_id = \"{host_id}\"\nreport = true\n",
        store.join("manifest.json").display()
    );
    let baton = Baton::start(dir, &config);
    baton.wait_ready();
    baton
}

fn hello_bytes(version: &str) -> Vec<u8> {
    std::fs::read(support::hello(version)).unwrap()
}

/// A build that probes as `version`, then fails at start, saying why.
pub(crate) fn failing_build(version: &str) -> Vec<u8> {
    format!(
        "#!/bin/sh\nif [ \"$BATON_PROBE\" = 1 ]; then echo {version}; exit 0; fi\n\
         echo 'warming up' >&2\necho 'cannot open database' >&2\nexit 3\n"
    )
    .into_bytes()
}

fn read_report(path: &Path) -> Option<Value> {
    serde_json::from_slice(&std::fs::read(path).ok()?).ok()
}

fn wait_report(store: &Path, version: &str, outcome: &str) -> Value {
    let path = store.join(format!("reports/{version}/{outcome}/{HOST}.json"));
    support::wait_for(
        &format!("the {outcome} report of {version}"),
        Duration::from_secs(30),
        || read_report(&path),
    )
}

#[test]
fn a_promoted_and_a_failed_trial_are_reported_beside_the_manifest() {
    let store = tempfile::tempdir().unwrap();
    let store = store.path();
    offer(store, "1.0.0", &hello_bytes("1.0.0"));
    let baton = host(store);
    offer(store, "2.0.0", &hello_bytes("2.0.0"));
    baton.wait_current("2.0.0-");
    let started = wait_report(store, "2.0.0", "started");
    let promoted = wait_report(store, "2.0.0", "promoted");
    for (report, outcome) in [(&started, "started"), (&promoted, "promoted")] {
        assert_eq!(report["host_id"], HOST);
        assert_eq!(report["version"], "2.0.0");
        assert_eq!(report["from"], "1.0.0");
        assert_eq!(report["outcome"], outcome);
        assert!(report["bucket"]
            .as_f64()
            .is_some_and(|b| (0.0..100.0).contains(&b)));
        assert!(report["at"].as_str().is_some_and(|t| t.ends_with('Z')));
        assert!(report.get("stage").is_none(), "{report}");
    }
    // A build that fails at start: reported with its stage and last words.
    offer(store, "3.0.0", &failing_build("3.0.0"));
    let failed = wait_report(store, "3.0.0", "failed");
    assert_eq!(failed["stage"], "start");
    assert_eq!(failed["from"], "2.0.0");
    assert_eq!(failed["stderr"], "cannot open database");
    assert!(
        failed["detail"]
            .as_str()
            .is_some_and(|d| d.contains("exited before it was ready: exit code 3")),
        "{failed}"
    );
    support::wait_version(baton.addr(), "2.0.0");
    assert!(!store.join("reports/3.0.0/promoted").exists());
    // Written once: the record survives a restart, so a new master that
    // settles the same history writes nothing again. It is kept just after
    // the report itself is written: wait for it.
    let keys = [
        "reports/2.0.0/started/web-7.json",
        "reports/2.0.0/promoted/web-7.json",
        "reports/3.0.0/started/web-7.json",
        "reports/3.0.0/failed/web-7.json",
    ];
    let record = baton.dir.path().join("releases/.reports");
    let recorded = support::wait_for_quietly(Duration::from_secs(30), || {
        std::fs::read_to_string(&record)
            .is_ok_and(|text| keys.iter().all(|k| text.lines().any(|l| l == *k)))
    });
    assert!(
        recorded,
        "every report in {}",
        std::fs::read_to_string(&record).unwrap_or_default()
    );
}

#[test]
fn a_store_that_refuses_reports_changes_nothing_about_the_trial() {
    let store = tempfile::tempdir().unwrap();
    let store = store.path();
    offer(store, "1.0.0", &hello_bytes("1.0.0"));
    // A file where the reports directory goes: every write fails.
    std::fs::write(store.join("reports"), b"not a directory").unwrap();
    let baton = host(store);
    offer(store, "2.0.0", &hello_bytes("2.0.0"));
    baton.wait_current("2.0.0-");
    support::wait_version(baton.addr(), "2.0.0");
    support::wait_for(
        "the failed writes to be logged",
        Duration::from_secs(30),
        || (baton.count("cannot write the trial report") >= 2).then_some(()),
    );
    assert!(baton.failed().is_empty(), "{:?}", baton.failed());
}

#[test]
fn an_s3_host_reports_under_the_manifests_prefix() {
    let s3 = S3Server::start(None);
    s3.bucket("releases");
    s3.put("releases", "hello/hello", hello_bytes("1.0.0"), &[]);
    let config = format!(
        "[program]\ncommand = \"releases/current/hello\"\nlisten = [\"127.0.0.1:0\"]\nready_timeout = \"10s\"\n\
         drain_timeout = \"10s\"\n[releases]\nbinary = \"hello\"\nsettle = \"300ms\"\n\
         [fetch]\nsource = \"s3\"\nbucket = \"releases\"\nkey = \"hello/hello\"\nregion = \"us-east-1\"\n\
         endpoint_url = \"{}\"\nforce_path_style = true\ninterval = \"200ms\"\ntimeout = \"30s\"\n\
         host_id = \"{HOST}\"\nreport = true\n",
        s3.endpoint()
    );
    let baton = Baton::start_with_env(tempfile::tempdir().unwrap(), &config, ENV);
    baton.wait_ready();
    baton.wait_current("1.0.0-");
    s3.put("releases", "hello/hello", hello_bytes("2.0.0"), &[]);
    baton.wait_current("2.0.0-");
    let promoted: Value = support::wait_for(
        "the promoted report in the bucket",
        Duration::from_secs(30),
        || {
            let bytes = s3.get(
                "releases",
                &format!("hello/reports/2.0.0/promoted/{HOST}.json"),
            )?;
            serde_json::from_slice(&bytes).ok()
        },
    );
    assert_eq!(promoted["host_id"], HOST);
    assert_eq!(promoted["from"], "1.0.0");
    assert!(s3
        .get(
            "releases",
            &format!("hello/reports/2.0.0/started/{HOST}.json")
        )
        .is_some());
}

/// Host ids whose buckets for every one of `versions` are below `canary`
/// percent (canaries), and others that are not, `n` of each.
pub(crate) fn canaries_and_others(
    versions: &[&str],
    canary: u8,
    n: usize,
) -> (Vec<String>, Vec<String>) {
    let (mut canaries, mut others) = (Vec::new(), Vec::new());
    for i in 0.. {
        let id = format!("gate-host-{i}");
        let inside: Vec<bool> = versions.iter().map(|v| in_cohort(&id, v, canary)).collect();
        if inside.iter().all(|&b| b) && canaries.len() < n {
            canaries.push(id);
        } else if inside.iter().all(|&b| !b) && others.len() < n {
            others.push(id);
        }
        if canaries.len() == n && others.len() == n {
            return (canaries, others);
        }
    }
    unreachable!()
}

fn last_check(baton: &Baton) -> Value {
    let status: Value = serde_json::from_str(&ok(baton.dir.path(), &["status", "--json"])).unwrap();
    status["last_check"].clone()
}

#[test]
fn canaries_stop_a_bad_release_and_let_a_good_one_through_the_gate() {
    let store = tempfile::tempdir().unwrap();
    let store = store.path();
    offer(store, "1.0.0", &hello_bytes("1.0.0"));
    let (canaries, others) = canaries_and_others(&["2.0.0", "2.0.1"], 50, 1);
    let canary = host_named(store, &canaries[0]);
    let other = &host_named(store, &others[0]);
    let gate = serde_json::json!({"canary": 50, "max_failures": 1, "min_promoted": 1});
    offer_gated(store, "2.0.0", &failing_build("2.0.0"), Some(gate.clone()));
    // The canary tries it and fails; the other host is held, first for
    // want of a promotion, then by the failure.
    let failed = store.join(format!("reports/2.0.0/failed/{}.json", canaries[0]));
    support::wait_for("the canary's failure", Duration::from_secs(30), || {
        read_report(&failed)
    });
    support::wait_for(
        "the other host held by the failure",
        Duration::from_secs(30),
        || {
            let check = last_check(other);
            let detail = check["detail"].as_str().unwrap_or_default().to_owned();
            (check["outcome"] == "held_by_gate"
                && detail.contains("1 failed trial (max_failures 1)"))
            .then_some(detail)
        },
    );
    let detail = last_check(other)["detail"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(
        detail.contains("cannot open database"),
        "the reason is named: {detail}"
    );
    assert!(
        !store
            .join(format!("reports/2.0.0/started/{}.json", others[0]))
            .exists(),
        "the held host never started the bad release"
    );
    support::wait_version(other.addr(), "1.0.0");
    support::wait_version(canary.addr(), "1.0.0");
    // What the publisher sees.
    let from = store.to_str().unwrap();
    let status: Value = serde_json::from_str(&crate::fleet::baton(&[
        "rollout", "status", "--from", from, "--json",
    ]))
    .unwrap();
    assert_eq!(status["manifest_version"], "2.0.0");
    assert_eq!(status["percent"], 100);
    let bad = status["versions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["version"] == "2.0.0")
        .expect("2.0.0 has reports");
    assert_eq!(
        (bad["failed"].as_u64(), bad["promoted"].as_u64()),
        (Some(1), Some(0))
    );
    assert_eq!(bad["reasons"][0]["hosts"][0], canaries[0].as_str());
    assert!(
        bad["gate"]
            .as_str()
            .unwrap()
            .starts_with("held: 1 failed trial"),
        "{bad}"
    );
    let text = crate::fleet::baton(&["rollout", "status", "--from", from]);
    assert!(
        text.contains("1 host: start exit code 3 \"cannot open database\""),
        "{text}"
    );
    // A good release passes the same gate: the canary proves it first.
    let good = format!(
        "#!/bin/sh\nif [ \"$BATON_PROBE\" = 1 ]; then echo 2.0.1; exit 0; fi\nexec {} \"$@\"\n",
        support::hello("2.0.0").display()
    );
    offer_gated(store, "2.0.1", good.as_bytes(), Some(gate));
    canary.wait_current("2.0.1-");
    other.wait_current("2.0.1-");
    let promoted = |id: &str| store.join(format!("reports/2.0.1/promoted/{id}.json"));
    assert!(read_report(&promoted(&canaries[0])).is_some());
    let started: Value =
        read_report(&store.join(format!("reports/2.0.1/started/{}.json", others[0]))).unwrap();
    let canary_promoted: Value = read_report(&promoted(&canaries[0])).unwrap();
    assert!(
        started["at"].as_str() >= canary_promoted["at"].as_str(),
        "the other host started only after the canary was promoted"
    );
}

#[test]
fn a_canary_whose_master_died_in_its_trial_counts_as_failed_after_silent_after() {
    let store = tempfile::tempdir().unwrap();
    let store = store.path();
    offer(store, "1.0.0", &hello_bytes("1.0.0"));
    let (canaries, others) = canaries_and_others(&["2.0.0"], 50, 1);
    // A long settle: the canary's trial is still running when it dies.
    let canary = host_named_with(store, &canaries[0], "10m");
    let other = host_named(store, &others[0]);
    let gate = serde_json::json!({"canary": 50, "max_failures": 1, "min_promoted": 1,
                                  "silent_after": "2s"});
    offer_gated(store, "2.0.0", &hello_bytes("2.0.0"), Some(gate));
    wait_report_of(store, "2.0.0", "started", &canaries[0]);
    support::wait_version(canary.addr(), "2.0.0");
    let _dead = canary.kill9();
    let detail = support::wait_for(
        "the silence to count as a failure",
        Duration::from_secs(30),
        || {
            let check = last_check(&other);
            let detail = check["detail"].as_str().unwrap_or_default().to_owned();
            (check["outcome"] == "held_by_gate" && detail.contains("silent past silent_after"))
                .then_some(detail)
        },
    );
    assert!(
        detail.contains("1 failed trial (max_failures 1)"),
        "{detail}"
    );
    assert!(detail.contains(canaries[0].as_str()), "{detail}");
    assert!(!store
        .join(format!("reports/2.0.0/started/{}.json", others[0]))
        .exists());
    support::wait_version(other.addr(), "1.0.0");
}

fn wait_report_of(store: &Path, version: &str, outcome: &str, host: &str) -> Value {
    let path = store.join(format!("reports/{version}/{outcome}/{host}.json"));
    support::wait_for(
        &format!("the {outcome} report of {version} by {host}"),
        Duration::from_secs(30),
        || read_report(&path),
    )
}

/// A host serving a seeded 1.0.0 that reads `hello/manifest.json` in the
/// `releases` bucket.
fn s3_host(s3: &S3Server, host_id: &str) -> Baton {
    s3_host_with(s3, host_id, ENV)
}

/// As [`s3_host`], with the environment `env` (its credentials).
fn s3_host_with(s3: &S3Server, host_id: &str, env: &[(&str, &str)]) -> Baton {
    let dir = tempfile::tempdir().unwrap();
    seed_release(dir.path(), "1.0.0");
    let config = format!(
        "[program]\ncommand = \"releases/current/hello\"\nlisten = [\"127.0.0.1:0\"]\nready_timeout = \"10s\"\n\
         drain_timeout = \"10s\"\n[releases]\nbinary = \"hello\"\nsettle = \"300ms\"\n\
         [fetch]\nsource = \"s3\"\nbucket = \"releases\"\nkey = \"hello/manifest.json\"\nregion = \"us-east-1\"\n\
         endpoint_url = \"{}\"\nforce_path_style = true\ninterval = \"200ms\"\ntimeout = \"30s\"\n\
         host_id = \"{host_id}\"\nreport = true\n",
        s3.endpoint()
    );
    let baton = Baton::start_with_env(dir, &config, env);
    baton.wait_ready();
    baton
}

/// Offers `bytes` as `version` in the bucket, with `gate`.
fn s3_offer(s3: &S3Server, version: &str, bytes: &[u8], gate: Option<Value>) {
    let name = format!("hello-{version}");
    s3.put("releases", &format!("hello/{name}"), bytes.to_vec(), &[]);
    let mut manifest = serde_json::json!({
        "version": version, "url": name, "sha256": hex::encode(sha256(bytes)),
    });
    if let Some(gate) = gate {
        manifest["gate"] = gate;
    }
    s3.put(
        "releases",
        "hello/manifest.json",
        manifest.to_string().into_bytes(),
        &[],
    );
}

#[test]
fn on_s3_the_gate_reads_the_canarys_failure_and_rollout_status_shows_it() {
    let s3 = S3Server::start(None);
    s3.bucket("releases");
    s3_offer(&s3, "1.0.0", &hello_bytes("1.0.0"), None);
    let (canaries, others) = canaries_and_others(&["2.0.0"], 50, 1);
    let canary = s3_host(&s3, &canaries[0]);
    let other = s3_host(&s3, &others[0]);
    let gate = serde_json::json!({"canary": 50, "max_failures": 1, "min_promoted": 1});
    s3_offer(&s3, "2.0.0", &failing_build("2.0.0"), Some(gate));
    let failed = format!("hello/reports/2.0.0/failed/{}.json", canaries[0]);
    let report: Value = support::wait_for(
        "the canary's failure in the bucket",
        Duration::from_secs(30),
        || serde_json::from_slice(&s3.get("releases", &failed)?).ok(),
    );
    assert_eq!(report["stderr"], "cannot open database");
    let detail = support::wait_for("the other host held by it", Duration::from_secs(30), || {
        let check = last_check(&other);
        let detail = check["detail"].as_str().unwrap_or_default().to_owned();
        (check["outcome"] == "held_by_gate" && detail.contains("1 failed trial")).then_some(detail)
    });
    assert!(detail.contains("cannot open database"), "{detail}");
    assert!(s3
        .get(
            "releases",
            &format!("hello/reports/2.0.0/started/{}.json", others[0])
        )
        .is_none());
    support::wait_version(canary.addr(), "1.0.0");
    support::wait_version(other.addr(), "1.0.0");
    let out = std::process::Command::new(support::baton_bin())
        .args([
            "rollout",
            "status",
            "--json",
            "--from",
            "s3://releases/hello/",
        ])
        .args(["--endpoint-url", &s3.endpoint(), "--region", "us-east-1"])
        .envs(ENV.iter().copied())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let status: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status["manifest_version"], "2.0.0");
    let versions = status["versions"].as_array().unwrap();
    let bad = versions.iter().find(|v| v["version"] == "2.0.0").unwrap();
    assert_eq!(bad["failed"], 1, "{status}");
    assert_eq!(bad["reasons"][0]["hosts"][0], canaries[0].as_str());
}

/// Creates IAM users on moto (boto3 from the test venv): `host` may read
/// the bucket and list it, nothing else. Returns its key pair.
fn read_only_user(s3: &S3Server) -> (String, String) {
    let python = support::venv_python();
    let script = r#"
import json, sys, boto3
iam = boto3.client("iam", endpoint_url=sys.argv[1], region_name="us-east-1",
                   aws_access_key_id="testing", aws_secret_access_key="testing")
iam.create_user(UserName="host")
iam.put_user_policy(UserName="host", PolicyName="read", PolicyDocument=json.dumps({
    "Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Action": ["s3:GetObject", "s3:ListBucket"],
         "Resource": ["arn:aws:s3:::releases", "arn:aws:s3:::releases/*"]}]}))
key = iam.create_access_key(UserName="host")["AccessKey"]
print(key["AccessKeyId"], key["SecretAccessKey"])
"#;
    let out = std::process::Command::new(python)
        .args(["-c", script, &s3.endpoint()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let mut words = text.split_whitespace().map(str::to_owned);
    (words.next().unwrap(), words.next().unwrap())
}

#[test]
fn an_s3_access_denied_report_write_changes_nothing_about_the_trial() {
    // moto enforces IAM once the set-up's requests are done (a bucket, two
    // objects, a user, its policy and its key); the host's user may read
    // the bucket, not write to it.
    let s3 = S3Server::start(Some(6));
    s3.bucket("releases");
    s3_offer(&s3, "2.0.0", &hello_bytes("2.0.0"), None);
    let (id, secret) = read_only_user(&s3);
    let env = [
        ("AWS_ACCESS_KEY_ID", id.as_str()),
        ("AWS_SECRET_ACCESS_KEY", secret.as_str()),
        ("AWS_REGION", "us-east-1"),
        ("AWS_EC2_METADATA_DISABLED", "true"),
    ];
    let baton = s3_host_with(&s3, HOST, &env);
    baton.wait_current("2.0.0-");
    support::wait_version(baton.addr(), "2.0.0");
    // Both reports (started, promoted) were refused, and wait for a retry.
    let status = support::wait_for("the refused writes", Duration::from_secs(30), || {
        let status: Value =
            serde_json::from_str(&ok(baton.dir.path(), &["status", "--json"])).unwrap();
        (status["reports"]["failed_writes"].as_u64() >= Some(2)
            && status["reports"]["pending"].as_u64() == Some(2))
        .then_some(status)
    });
    assert_eq!(status["reports"]["written"], 0, "{status}");
    assert!(baton.count("cannot write the trial report") >= 2);
    assert!(baton.count("access denied to s3://releases/hello/reports/2.0.0/") >= 1);
    assert!(baton.failed().is_empty(), "{:?}", baton.failed());
    assert!(
        !baton.log().contains(&secret),
        "credentials are never logged"
    );
}

#[test]
fn hostile_reports_are_skipped_and_counted_and_never_stall_a_host() {
    let store = tempfile::tempdir().unwrap();
    let store = store.path();
    offer(store, "1.0.0", &hello_bytes("1.0.0"));
    let (_, others) = canaries_and_others(&["2.0.0"], 50, 1);
    let other = host_named(store, &others[0]);
    // What a hostile writer under `reports/` leaves: garbage, a body past
    // the cap, a FIFO (an open would wait for ever), a link to a device,
    // a directory, and more promotions than a listing reads.
    let failed = store.join("reports/2.0.0/failed");
    std::fs::create_dir_all(&failed).unwrap();
    std::fs::write(failed.join("junk.json"), b"{not json").unwrap();
    std::fs::write(failed.join("big.json"), vec![b' '; 1 << 20]).unwrap();
    nix::unistd::mkfifo(&failed.join("fifo.json"), nix::sys::stat::Mode::S_IRUSR).unwrap();
    std::os::unix::fs::symlink("/dev/zero", failed.join("zero.json")).unwrap();
    std::fs::create_dir(failed.join("dir.json")).unwrap();
    let promoted = store.join("reports/2.0.0/promoted");
    std::fs::create_dir_all(&promoted).unwrap();
    for i in 0..1200 {
        std::fs::write(promoted.join(format!("p{i}.json")), b"{}").unwrap();
    }
    std::fs::write(promoted.join("notes.txt"), b"not a report").unwrap();
    let gate = serde_json::json!({"canary": 50, "max_failures": 3, "min_promoted": 1});
    offer_gated(store, "2.0.0", &hello_bytes("2.0.0"), Some(gate));
    // Every entry under failed/ counts: the host is held, and polls on.
    let held = |baton: &Baton| {
        status_of(baton)["checks"]["held_by_gate"]
            .as_u64()
            .unwrap_or(0)
    };
    support::wait_for("the host held by the gate", Duration::from_secs(30), || {
        (held(&other) >= 1).then_some(())
    });
    let first = held(&other);
    support::wait_for(
        "later polls, not a stalled one",
        Duration::from_secs(30),
        || (held(&other) >= first + 2).then_some(()),
    );
    let check: Value = serde_json::from_str(&ok(other.dir.path(), &["check", "--json"])).unwrap();
    assert_eq!(check["outcome"], "held_by_gate", "{check}");
    let counts = &check["gate"]["counts"];
    assert_eq!(counts["failed"], 5, "{check}");
    assert!(
        counts["skipped"].as_u64() >= Some(6),
        "unread bodies and listing bounds: {check}"
    );
    // 1 000 listed (one may be notes.txt, not a report), the rest unread.
    let promoted = counts["promoted"].as_u64().unwrap();
    assert!(
        (999..=1000).contains(&promoted),
        "a listing is bounded: {check}"
    );
    assert!(
        !store
            .join(format!("reports/2.0.0/started/{}.json", others[0]))
            .exists(),
        "a held host never starts the release"
    );
    assert_eq!(support::version(other.addr()), "1.0.0");
    let seen: Value = serde_json::from_str(&crate::fleet::baton(&[
        "rollout",
        "status",
        "--from",
        store.to_str().unwrap(),
        "--json",
    ]))
    .unwrap();
    let two = &seen["versions"][0];
    assert_eq!(
        (two["version"].as_str(), two["failed"].as_u64()),
        (Some("2.0.0"), Some(5))
    );
    assert!(two["skipped"].as_u64() >= Some(6), "{seen}");
    // The hostile failures are cleared: the gate opens on the promotions.
    std::fs::remove_dir_all(&failed).unwrap();
    other.wait_current("2.0.0-");
    support::wait_version(other.addr(), "2.0.0");
}

fn status_of(baton: &Baton) -> Value {
    serde_json::from_str(&ok(baton.dir.path(), &["status", "--json"])).unwrap()
}

#[test]
fn a_trial_its_masters_death_failed_is_reported_failed_by_the_next_master() {
    let store = tempfile::tempdir().unwrap();
    let store = store.path();
    offer(store, "1.0.0", &hello_bytes("1.0.0"));
    // A settle far longer than the test: the kill lands inside it.
    let baton = host_named_with(store, HOST, "10m");
    offer(store, "2.0.0", &hello_bytes("2.0.0"));
    wait_report(store, "2.0.0", "started");
    support::wait_version(baton.addr(), "2.0.0");
    let dir = baton.kill9();
    let baton = Baton::restart(dir);
    // `current` (1.0.0) serves; the trial is failed and said so.
    let failed = wait_report(store, "2.0.0", "failed");
    assert_eq!(failed["stage"], "settle", "{failed}");
    assert_eq!(failed["from"], "1.0.0", "{failed}");
    assert!(
        failed["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("master died"),
        "{failed}"
    );
    support::wait_version(baton.addr(), "1.0.0");
    let status = status_of(&baton);
    assert_eq!(status["trial_failures"]["2.0.0"]["settle"], 1, "{status}");
    assert_eq!(status["host_id"], HOST);
}
