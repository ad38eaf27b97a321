//! `fleet_sim --scenario gate`: trial reports, the gate and a yank, at
//! fleet scale (issue #24, "Measured at fleet scale").
//!
//! Every host runs 1.0.0. Three scenarios follow on the same hosts:
//!
//! 1. A bad release, 2.0.0, under a schedule (`--schedule`) and a gate
//!    (`--gate`): every trial of it fails.
//! 2. A good release, 2.0.1, under the same schedule and gate, until every
//!    host runs it.
//! 3. `Publish { yank: [2.0.0, 2.0.1] }`: the manifest names 1.0.0 again,
//!    which every host ran before.
//!
//! Each host decides as `Pipeline::before_download` and `gate` do
//! (src/release/mod.rs, src/release/yank.rs, src/release/cohort.rs) and
//! its loop as src/master/update.rs: a held host, and one outside a
//! schedule that will change, calls `fetcher.retry()` so that the
//! unchanged manifest is read again at its next poll. Canaries take the
//! release without reading reports; every other host in the rollout reads
//! them with [`Sink::read`] and takes the release only while
//! [`baton::manifest::gate::Gate::verdict`] is open. A host that takes a
//! release writes `started`, then after `--trial` `failed` (the bad one) or
//! `promoted`, to `reports/<version>/…` beside the manifest through
//! [`baton::fetchers::s3::Endpoint::put`], the write path of
//! `baton::fleet::Reporter`; a failed write is retried at its next poll.
//! A host whose release a signed manifest yanks goes back to the manifest's
//! release, reusing its installed 1.0.0 (nothing downloaded), and writes
//! `started` and `promoted` for it and `yanked` for the version it left, as
//! the master does. Nothing is installed or run.
//!
//! Every host has its own listener on the counting proxy, so each poll's
//! requests (HEAD, GET, LIST, PUT) are known exactly and summed by what
//! the poll came to.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use baton::config::{Fetch, Source, Verify};
use baton::fetchers::s3::S3Fetcher;
use baton::fetchers::Fetcher;
use baton::fleet::report::{version_key, Note, Outcome, Report, Sink, Stage};
use baton::manifest::gate::Verdict;
use baton::manifest::{rollout, Rollout};
use baton::publish::{parse_gate, parse_rollout, publish_report_async, Publish};
use rand::Rng;
use serde_json::json;
use sha2::{Digest, Sha256};

use super::{apply_patch, download, proxy, Args, Class, Counts, Installed, Kind, BUCKET, KEY};

const OLD: &str = "1.0.0";
const BAD: &str = "2.0.0";
const GOOD: &str = "2.0.1";

/// One host, as its task keeps it and the controller reads it.
struct Host {
    index: usize,
    id: String,
    state: Mutex<State>,
    /// Failure reasons this host has read, as the pipeline keeps them.
    reasons: baton::fleet::read::Reasons,
}

#[derive(Clone)]
struct State {
    /// The running release: version and binary digest.
    version: String,
    sha: [u8; 32],
    /// Releases it has installed (it ran them): version and digest.
    installed: Vec<(String, [u8; 32])>,
    /// Digests it skips: failed here, or held after leaving a yank.
    skipped: Vec<[u8; 32]>,
    /// Versions a signed manifest yanked, as recorded.
    yanked: BTreeSet<String>,
    /// Versions whose rollout it entered.
    entered: BTreeSet<String>,
    /// Versions it began a trial of.
    tried: Vec<String>,
    /// The version of the last manifest it read.
    seen: Option<String>,
    /// Polls done.
    polls: u64,
    /// What its last poll came to.
    last: &'static str,
    /// Whether it wrote a `yanked` report.
    wrote_yanked: bool,
}

/// The cost of polls that came to one thing.
#[derive(Default, Clone, Copy)]
struct Cost {
    polls: u64,
    /// Requests, by [`Kind::ALL`].
    kinds: [u64; 5],
    /// Time from a poll's start to its end, summed, and the longest.
    busy_s: f64,
    busy_max_s: f64,
    /// Time since the host's previous poll began, summed, and how many.
    gap_s: f64,
    gaps: u64,
    gap_max_s: f64,
}

#[derive(Default)]
struct Stats {
    /// The scenario now running (1–3; 0 before).
    phase: AtomicU8,
    /// By (phase, what the poll came to).
    costs: Mutex<BTreeMap<(u8, &'static str), Cost>>,
    errors: AtomicU64,
    last_error: Mutex<String>,
    report_writes_failed: AtomicU64,
    reports_written: AtomicU64,
    /// Artifact and patch bytes the hosts read, by phase.
    release_bytes: [AtomicU64; 4],
}

struct Ctx {
    counts: Arc<Counts>,
    stats: Stats,
    /// Every binary by digest, to apply patches against.
    binaries: HashMap<[u8; 32], Arc<Installed>>,
    interval: Duration,
    jitter: Duration,
    trial: Duration,
}

fn spread(d: Duration) -> Duration {
    if d.is_zero() {
        Duration::ZERO
    } else {
        rand::rng().random_range(Duration::ZERO..d)
    }
}

async fn run_host(host: Arc<Host>, mut fetcher: S3Fetcher, sink: Sink, ctx: Arc<Ctx>) {
    let mut pending: Vec<Report> = Vec::new();
    let mut last_start: Option<Instant> = None;
    tokio::time::sleep(spread(ctx.interval)).await;
    loop {
        let t = Instant::now();
        let phase = ctx.stats.phase.load(Ordering::Relaxed);
        let before = ctx.counts.of_host(host.index);
        // Reports that could not be written wait for the next poll, as the
        // reporter retries them every fetch interval.
        let mut left = Vec::new();
        for r in pending.drain(..) {
            if let Err(r) = write(&sink, r, &ctx).await {
                left.push(r);
            }
        }
        pending = left;
        let what = poll(&host, &mut fetcher, &sink, &ctx, &mut pending).await;
        let after = ctx.counts.of_host(host.index);
        let busy = t.elapsed().as_secs_f64();
        {
            let mut costs = ctx.stats.costs.lock().unwrap();
            let c = costs.entry((phase, what)).or_default();
            c.polls += 1;
            for k in 0..5 {
                c.kinds[k] += after[k] - before[k];
            }
            c.busy_s += busy;
            c.busy_max_s = c.busy_max_s.max(busy);
            if let Some(prev) = last_start {
                let gap = t.duration_since(prev).as_secs_f64();
                c.gap_s += gap;
                c.gaps += 1;
                c.gap_max_s = c.gap_max_s.max(gap);
            }
        }
        last_start = Some(t);
        {
            let mut st = host.state.lock().unwrap();
            st.polls += 1;
            st.last = what;
        }
        tokio::time::sleep(ctx.interval + spread(ctx.jitter)).await;
    }
}

/// Writes one report; gives it back when the write failed.
async fn write(sink: &Sink, report: Report, ctx: &Ctx) -> Result<(), Report> {
    let Sink::S3 { at, prefix } = sink else {
        unreachable!("an S3 source's sink");
    };
    let body = serde_json::to_vec(&report).expect("a report serializes");
    match at.put(&format!("{prefix}{}", report.key()), body).await {
        Ok(()) => {
            ctx.stats.reports_written.fetch_add(1, Ordering::Relaxed);
            Ok(())
        }
        Err(e) => {
            ctx.stats
                .report_writes_failed
                .fetch_add(1, Ordering::Relaxed);
            *ctx.stats.last_error.lock().unwrap() = e;
            Err(report)
        }
    }
}

async fn report(sink: &Sink, host: &Host, note: Note, ctx: &Ctx, pending: &mut Vec<Report>) {
    let r = Report::new(note, &host.id, SystemTime::now());
    if let Err(r) = write(sink, r, ctx).await {
        pending.push(r);
    }
}

fn note(version: &str, from: &str, outcome: Outcome) -> Note {
    Note {
        version: version.to_owned(),
        from: Some(from.to_owned()),
        outcome,
        stage: None,
        detail: None,
        stderr: None,
    }
}

fn error(ctx: &Ctx, e: String) {
    ctx.stats.errors.fetch_add(1, Ordering::Relaxed);
    *ctx.stats.last_error.lock().unwrap() = e;
}

/// One poll, deciding as the pipeline does; says what it came to.
async fn poll(
    host: &Host,
    fetcher: &mut S3Fetcher,
    sink: &Sink,
    ctx: &Ctx,
    pending: &mut Vec<Report>,
) -> &'static str {
    let mut candidate = match fetcher.check().await {
        Ok(None) => return "unchanged",
        Ok(Some(c)) => c,
        Err(e) => {
            error(ctx, baton::display_chain(&e));
            fetcher.retry();
            return "error";
        }
    };
    let Some(manifest) = candidate.info.manifest.take() else {
        error(ctx, "no manifest".into());
        return "error";
    };
    let version = candidate.info.version.clone().unwrap_or_default();
    let now = SystemTime::now();
    let st = {
        let mut st = host.state.lock().unwrap();
        st.seen = Some(version.clone());
        // yank::record: a signed list is recorded.
        if manifest.signed {
            for v in &manifest.yanked {
                st.yanked.insert(v.to_string());
            }
        }
        st.clone()
    };
    // The running release: nothing to do.
    if candidate.info.sha256 == Some(st.sha) {
        return "same_release";
    }
    // yank::decide: a version yanked here is skipped; a signed manifest
    // yanking the running release takes the host back, whatever its bucket.
    if st.yanked.contains(&version_key(&version)) {
        return "yanked_skipped";
    }
    if manifest.signed && manifest.yanks(&st.version) {
        let left = st.version.clone();
        let binary = manifest.binary();
        let reused = st
            .installed
            .iter()
            .find(|(v, d)| *v == version && Some(*d) == binary)
            .map(|(_, d)| *d);
        let to_sha = match reused {
            Some(d) => d,
            None => match download(&mut candidate.body, manifest.sha256).await {
                Ok(n) => {
                    let phase = ctx.stats.phase.load(Ordering::Relaxed) as usize;
                    ctx.stats.release_bytes[phase.min(3)].fetch_add(n, Ordering::Relaxed);
                    manifest.sha256.unwrap_or_default()
                }
                Err(e) => {
                    error(ctx, e);
                    fetcher.retry();
                    return "error";
                }
            },
        };
        {
            let mut s = host.state.lock().unwrap();
            // The yanked release is held, and the release it goes back
            // to runs a trial (which passes).
            let sha = s.sha;
            s.skipped.push(sha);
            s.tried.push(version.clone());
        }
        report(
            sink,
            host,
            note(&version, &left, Outcome::Started),
            ctx,
            pending,
        )
        .await;
        tokio::time::sleep(ctx.trial).await;
        report(
            sink,
            host,
            note(&version, &left, Outcome::Promoted),
            ctx,
            pending,
        )
        .await;
        let mut yanked = note(&left, &left, Outcome::Yanked);
        yanked.detail = Some(format!("back to {version}"));
        report(sink, host, yanked, ctx, pending).await;
        let mut s = host.state.lock().unwrap();
        s.version = version;
        s.sha = to_sha;
        s.wrote_yanked = true;
        return if reused.is_some() {
            "yank_left_reusing_installed"
        } else {
            "yank_left_downloading"
        };
    }
    if let Some(stated) = candidate.info.sha256 {
        if st.skipped.contains(&stated) {
            return "known_bad";
        }
    }
    // verify::not_lower (allow_downgrade = false).
    let parse = |v: &str| semver::Version::parse(v.trim_start_matches('v')).ok();
    if let (Some(new), Some(cur)) = (parse(&version), parse(&st.version)) {
        if new < cur {
            error(
                ctx,
                format!("{version} is lower than the running {}", st.version),
            );
            return "downgrade_refused";
        }
    }
    // cohort::decide.
    let bucket = rollout::bucket(&host.id, &version);
    let percent = manifest.percent_at(now);
    let in_rollout = !manifest.rollout.is_halt() && rollout::admits(bucket, percent);
    let entered = !manifest.rollout.is_halt() && !in_rollout && st.entered.contains(&version);
    if !in_rollout && !entered {
        // update.rs: a schedule moves on by itself; read the unchanged
        // manifest again at the next poll.
        if manifest
            .rollout
            .next_change(manifest.published_at, now)
            .is_some()
        {
            fetcher.retry();
        }
        return "not_in_rollout";
    }
    // Pipeline::gate.
    let mut gated = false;
    if let Some(gate) = manifest.gate.as_ref().filter(|_| in_rollout) {
        if !gate.is_canary(bucket) {
            gated = true;
            match sink.read_with(&version, &host.reasons).await {
                Ok(reports) => {
                    if let Verdict::Held { .. } = gate.verdict(&reports, SystemTime::now()) {
                        fetcher.retry();
                        return "held_by_gate";
                    }
                }
                Err(e) => {
                    error(ctx, format!("reading reports: {e}"));
                    fetcher.retry();
                    return "held_reports_unreadable";
                }
            }
        }
    }
    if in_rollout {
        host.state.lock().unwrap().entered.insert(version.clone());
    }
    // The download: the patch for the running binary, else the artifact.
    let installed = ctx.binaries.get(&st.sha).cloned();
    let patch = manifest
        .patches
        .iter()
        .find(|p| Some(p.from) == installed.as_ref().map(|i| i.sha256));
    let binary = manifest.binary();
    let got = match (patch, &candidate.opener, binary, &installed) {
        (Some(patch), Some(opener), Some(binary), Some(installed)) => {
            let body = opener(&patch.url);
            apply_patch(body, patch.size, installed, binary).await
        }
        _ => download(&mut candidate.body, manifest.sha256).await,
    };
    match got {
        Ok(n) => {
            let phase = ctx.stats.phase.load(Ordering::Relaxed) as usize;
            ctx.stats.release_bytes[phase.min(3)].fetch_add(n, Ordering::Relaxed);
        }
        Err(e) => {
            error(ctx, e);
            fetcher.retry();
            return "download_error";
        }
    }
    let new_sha = binary.or(manifest.sha256).unwrap_or_default();
    host.state.lock().unwrap().tried.push(version.clone());
    report(
        sink,
        host,
        note(&version, &st.version, Outcome::Started),
        ctx,
        pending,
    )
    .await;
    tokio::time::sleep(ctx.trial).await;
    if version == BAD {
        let mut failed = note(&version, &st.version, Outcome::Failed);
        failed.stage = Some(Stage::Start);
        failed.detail = Some(format!(
            "new worker 2 exited before it was ready: exit code 3 ({} simulated)",
            host.id
        ));
        failed.stderr = Some("cannot open database".into());
        report(sink, host, failed, ctx, pending).await;
        // The rollback: the release is skipped from now on.
        host.state.lock().unwrap().skipped.push(new_sha);
        if gated {
            "trial_failed_after_gate"
        } else {
            "trial_failed_canary"
        }
    } else {
        report(
            sink,
            host,
            note(&version, &st.version, Outcome::Promoted),
            ctx,
            pending,
        )
        .await;
        let mut s = host.state.lock().unwrap();
        s.version = version.clone();
        s.sha = new_sha;
        s.installed.push((version, new_sha));
        if gated {
            "trial_promoted_after_gate"
        } else if entered {
            "trial_promoted_entered"
        } else {
            "trial_promoted_canary"
        }
    }
}

fn die(ctx: &Ctx, why: String) -> ! {
    eprintln!(
        "{why}; last error: {}",
        ctx.stats.last_error.lock().unwrap()
    );
    std::process::exit(1);
}

/// xorshift64 bytes: incompressible, as a compressed binary is.
fn noise(size: usize) -> Vec<u8> {
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    (0..size)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

/// `base` with 8 bytes changed, as between builds differing in a version
/// string.
fn build(base: &[u8], salt: usize, x: u8) -> Vec<u8> {
    let mut bytes = base.to_vec();
    for i in 0..8 {
        let at = (i * bytes.len() / 8 + salt).min(bytes.len() - 1);
        bytes[at] ^= x;
    }
    bytes
}

fn count(hosts: &[Arc<Host>], f: impl Fn(&State) -> bool) -> usize {
    hosts.iter().filter(|h| f(&h.state.lock().unwrap())).count()
}

/// Requests by kind and bytes by class in `[from, to)` ms.
fn window(counts: &Counts, from: u64, to: u64) -> serde_json::Value {
    let all = counts.requests.lock().unwrap();
    let mut kinds: BTreeMap<Kind, u64> = BTreeMap::new();
    let mut bytes: BTreeMap<Class, u64> = BTreeMap::new();
    let mut requests: BTreeMap<Class, u64> = BTreeMap::new();
    let mut times = Vec::new();
    for r in all.iter().filter(|r| r.ms >= from && r.ms < to) {
        *kinds.entry(r.kind).or_default() += 1;
        *bytes.entry(r.class).or_default() += r.bytes;
        *requests.entry(r.class).or_default() += 1;
        times.push(r.ms);
    }
    let total: u64 = kinds.values().sum();
    let seconds = (to.saturating_sub(from)) as f64 / 1000.0;
    json!({
        "seconds": seconds,
        "requests": total,
        "requests_per_second": total as f64 / seconds.max(0.001),
        "peak_requests_in_one_second": super::peak_per_second(&mut times),
        "by_kind": Kind::ALL.iter().map(|k| (k.name(), kinds.get(k).copied().unwrap_or(0))).collect::<BTreeMap<_, _>>(),
        "requests_by_class": Class::ALL.iter().map(|c| (c.name(), requests.get(c).copied().unwrap_or(0))).collect::<BTreeMap<_, _>>(),
        "bytes_by_class": Class::ALL.iter().map(|c| (c.name(), bytes.get(c).copied().unwrap_or(0))).collect::<BTreeMap<_, _>>(),
        "bytes": bytes.values().sum::<u64>(),
    })
}

/// What polls came to in `phase`, with their cost per poll.
fn costs(ctx: &Ctx, phase: u8) -> serde_json::Value {
    let costs = ctx.stats.costs.lock().unwrap();
    let mut out = serde_json::Map::new();
    for ((p, what), c) in costs.iter() {
        if *p != phase {
            continue;
        }
        let per = |k: usize| c.kinds[k] as f64 / c.polls.max(1) as f64;
        let total: u64 = c.kinds.iter().sum();
        out.insert(
            (*what).to_owned(),
            json!({
                "polls": c.polls,
                "requests": total,
                "requests_per_poll": total as f64 / c.polls.max(1) as f64,
                "per_poll_by_kind": Kind::ALL.iter().map(|k| (k.name(), per(*k as usize))).collect::<BTreeMap<_, _>>(),
                "mean_poll_seconds": c.busy_s / c.polls.max(1) as f64,
                "max_poll_seconds": c.busy_max_s,
                "mean_seconds_since_previous_poll": if c.gaps > 0 { Some(c.gap_s / c.gaps as f64) } else { None },
                "max_seconds_since_previous_poll": c.gap_max_s,
            }),
        );
    }
    serde_json::Value::Object(out)
}

/// The schedule's offsets and percentages.
fn steps(schedule: &Rollout) -> Vec<(Duration, u8)> {
    let Rollout::Schedule(steps) = schedule else {
        panic!("--schedule must be a schedule (0s=1,40s=10,…)");
    };
    let offsets = schedule.validate().expect("a valid schedule");
    offsets
        .into_iter()
        .zip(steps.iter().map(|s| s.percent))
        .collect()
}

pub(super) async fn run(a: &Args) -> serde_json::Value {
    let start = Instant::now();
    let ms = || start.elapsed().as_millis() as u64;
    let cycle = a.interval + a.jitter;
    let schedule = parse_rollout(&a.schedule).expect("--schedule");
    let gate = parse_gate(&a.gate).expect("--gate");
    let steps = steps(&schedule);
    let last_step = steps.last().map(|s| s.0).unwrap_or_default();
    let work = tempfile::tempdir().unwrap();
    let key = work.path().join("release.key");
    std::env::remove_var("BATON_KEY_PASSWORD");
    let public = baton::publish::keygen(&key).expect("keygen");
    let old_bytes = noise(a.artifact_size);
    let releases = [
        (OLD, old_bytes.clone()),
        (BAD, build(&old_bytes, 17, 0x5a)),
        (GOOD, build(&old_bytes, 29, 0xa5)),
    ];
    let mut paths = HashMap::new();
    let mut binaries = HashMap::new();
    for (version, bytes) in &releases {
        let path = work.path().join(format!("hello-{version}"));
        std::fs::write(&path, bytes).unwrap();
        let sha256: [u8; 32] = Sha256::digest(bytes).into();
        binaries.insert(
            sha256,
            Arc::new(Installed {
                path: path.clone(),
                sha256,
                full: false,
            }),
        );
        paths.insert(*version, (path, sha256));
    }
    // The publisher talks to S3 directly, not through the proxy.
    let dest = super::bucket(&a.endpoint).await;
    let release = |version: &str, rollout: Rollout, patches: usize| Publish {
        to: dest.clone(),
        version: Some(version.to_owned()),
        artifacts: vec![(None, paths[version].0.clone())],
        rollout: Some(rollout),
        expires: Some(Duration::from_secs(86_400)),
        sign: Some(key.clone()),
        patches,
        ..Publish::default()
    };
    publish_report_async(&release(OLD, Rollout::Percent(100), 0))
        .await
        .expect("publish 1.0.0");

    let counts = Arc::new(Counts {
        per_host: (0..a.hosts).map(|_| Default::default()).collect(),
        ..Counts::default()
    });
    let upstream: SocketAddr = a
        .endpoint
        .trim_start_matches("http://")
        .parse()
        .expect("--endpoint http://127.0.0.1:PORT");
    let verify = Verify {
        minisign_keys: vec![public],
        ..Verify::default()
    };
    let ctx = Arc::new(Ctx {
        counts: counts.clone(),
        stats: Stats::default(),
        binaries,
        interval: a.interval,
        jitter: a.jitter,
        trial: a.trial,
    });
    let old_sha = paths[OLD].1;
    let mut hosts = Vec::new();
    for i in 0..a.hosts {
        let host = Arc::new(Host {
            index: i,
            id: format!("host-{i:04}"),
            reasons: Default::default(),
            state: Mutex::new(State {
                version: OLD.into(),
                sha: old_sha,
                installed: vec![(OLD.into(), old_sha)],
                skipped: Vec::new(),
                yanked: BTreeSet::new(),
                entered: BTreeSet::new(),
                tried: Vec::new(),
                seen: None,
                polls: 0,
                last: "",
                wrote_yanked: false,
            }),
        });
        let proxied = proxy(upstream, counts.clone(), start, i as u32).await;
        let fetch = Fetch {
            source: Source::S3 {
                bucket: BUCKET.into(),
                key: Some(KEY.into()),
                prefix: None,
                region: Some("us-east-1".into()),
                endpoint_url: Some(format!("http://{proxied}")),
                force_path_style: true,
            },
            interval: a.interval,
            jitter: a.jitter,
            timeout: Duration::from_secs(30),
            host_id: Some(host.id.clone()),
            report: true,
        };
        let sink = Sink::of(&fetch).expect("an S3 source holds reports");
        let fetcher = S3Fetcher::new(&fetch, &verify);
        tokio::spawn(run_host(host.clone(), fetcher, sink, ctx.clone()));
        hosts.push(host);
    }
    let n = hosts.len();
    let tick = Duration::from_millis(200);
    // Every host reads 1.0.0 (which it runs) first.
    let t = Instant::now();
    while count(&hosts, |s| s.seen.as_deref() == Some(OLD)) < n {
        if t.elapsed() > cycle * 6 + Duration::from_secs(60) {
            die(
                &ctx,
                format!(
                    "only {} of {n} hosts read the 1.0.0 manifest",
                    count(&hosts, |s| s.seen.as_deref() == Some(OLD))
                ),
            );
        }
        tokio::time::sleep(tick).await;
    }
    let warmup_s = t.elapsed().as_secs_f64();
    let canaries = |version: &str| {
        let g = gate.check(&schedule).expect("a valid gate");
        hosts
            .iter()
            .filter(|h| g.is_canary(rollout::bucket(&h.id, version)))
            .count()
    };

    // 1. The bad release.
    ctx.stats.phase.store(1, Ordering::Relaxed);
    let m1 = ms();
    let t1 = Instant::now();
    publish_report_async(&Publish {
        gate: Some(gate.clone()),
        ..release(BAD, schedule.clone(), 1)
    })
    .await
    .expect("publish 2.0.0");
    let mut bad_timeline = Vec::new();
    let polls_at = |hosts: &[Arc<Host>]| -> Vec<u64> {
        hosts
            .iter()
            .map(|h| h.state.lock().unwrap().polls)
            .collect()
    };
    let mut at_last_step: Option<(Instant, Vec<u64>)> = None;
    let tail_cap = cycle * 8 + Duration::from_secs(60);
    let (tail_polls_met, phase1_s) = loop {
        let e = t1.elapsed();
        if at_last_step.is_none() && e >= last_step + Duration::from_secs(1) {
            at_last_step = Some((Instant::now(), polls_at(&hosts)));
        }
        if let Some((t_last, polls)) = &at_last_step {
            // Two more poll cycles, and every host polled twice since the
            // schedule reached 100 %.
            let all_twice = polls_at(&hosts)
                .iter()
                .zip(polls)
                .all(|(now, then)| now - then >= 2);
            if t_last.elapsed() >= cycle * 2 && all_twice {
                break (true, e.as_secs_f64());
            }
            if t_last.elapsed() >= tail_cap {
                break (false, e.as_secs_f64());
            }
        }
        if bad_timeline.len() as f64 <= e.as_secs_f64() / 5.0 {
            bad_timeline.push(json!({
                "t_s": e.as_secs_f64().round(),
                "tried_bad": count(&hosts, |s| s.tried.iter().any(|v| v == BAD)),
                "held_at_last_poll": count(&hosts, |s| s.last.starts_with("held")),
            }));
        }
        tokio::time::sleep(tick).await;
    };
    let tried_bad = count(&hosts, |s| s.tried.iter().any(|v| v == BAD));
    let m2 = ms();
    let held_now = count(&hosts, |s| s.last.starts_with("held"));
    let phase1 = json!({
        "schedule": a.schedule,
        "gate": a.gate,
        "seconds": phase1_s,
        "hosts_tried_bad": tried_bad,
        "share_tried_bad_percent": tried_bad as f64 / n as f64 * 100.0,
        "canaries_by_rule": canaries(BAD),
        "hosts_running_bad_at_end": count(&hosts, |s| s.version == BAD),
        "hosts_held_at_their_last_poll": held_now,
        "every_host_polled_twice_after_100_percent": tail_polls_met,
        "timeline": bad_timeline,
        "polls": costs(&ctx, 1),
        "proxy": window(&counts, m1, m2),
        "release_bytes": ctx.stats.release_bytes[1].load(Ordering::Relaxed),
    });

    // 2. The good release, same gate and schedule.
    ctx.stats.phase.store(2, Ordering::Relaxed);
    let t2 = Instant::now();
    publish_report_async(&Publish {
        gate: Some(gate.clone()),
        ..release(GOOD, schedule.clone(), 2)
    })
    .await
    .expect("publish 2.0.1");
    let mut milestones: Vec<Option<f64>> = vec![None; steps.len()];
    let admitted: Vec<usize> = steps
        .iter()
        .map(|(_, p)| {
            hosts
                .iter()
                .filter(|h| rollout::admits(rollout::bucket(&h.id, GOOD), *p))
                .count()
        })
        .collect();
    let mut good_timeline = Vec::new();
    let all_good_s = loop {
        let e = t2.elapsed();
        let on = count(&hosts, |s| s.version == GOOD);
        for (i, m) in milestones.iter_mut().enumerate() {
            if m.is_none() && on >= admitted[i] {
                *m = Some(e.as_secs_f64());
            }
        }
        if good_timeline.len() as f64 <= e.as_secs_f64() / 5.0 {
            good_timeline.push(json!({
                "t_s": e.as_secs_f64().round(),
                "running_good": on,
                "held_at_last_poll": count(&hosts, |s| s.last.starts_with("held")),
            }));
        }
        if on == n {
            break Some(e.as_secs_f64());
        }
        if e > last_step + cycle * 10 + Duration::from_secs(60) {
            break None;
        }
        tokio::time::sleep(tick).await;
    };
    let m3 = ms();
    let phase2 = json!({
        "seconds_until_every_host_ran_it": all_good_s,
        "schedule_reached_100_percent_at_s": last_step.as_secs_f64(),
        "seconds_after_the_schedule_reached_100_percent": all_good_s.map(|s| s - last_step.as_secs_f64()),
        "running_good_at_end": count(&hosts, |s| s.version == GOOD),
        "canaries_by_rule": canaries(GOOD),
        "steps": steps.iter().zip(&admitted).zip(&milestones).map(|((s, adm), m)| json!({
            "after_s": s.0.as_secs_f64(),
            "percent": s.1,
            "hosts_the_rule_admits": adm,
            "seconds_until_that_many_ran_it": m,
        })).collect::<Vec<_>>(),
        "timeline": good_timeline,
        "polls": costs(&ctx, 2),
        "proxy": window(&counts, m2, m3),
        "release_bytes": ctx.stats.release_bytes[2].load(Ordering::Relaxed),
    });

    // 3. The yank: 2.0.1 and the bad 2.0.0, so the manifest names 1.0.0.
    ctx.stats.phase.store(3, Ordering::Relaxed);
    let t3 = Instant::now();
    let yank = publish_report_async(&Publish {
        to: dest.clone(),
        yank: vec![BAD.into(), GOOD.into()],
        sign: Some(key.clone()),
        ..Publish::default()
    })
    .await
    .expect("yank");
    let yank_published_s = t3.elapsed().as_secs_f64();
    let all_back_s = loop {
        let e = t3.elapsed();
        if count(&hosts, |s| s.version == OLD && s.wrote_yanked) == n {
            break Some(e.as_secs_f64());
        }
        if e > cycle * 10 + Duration::from_secs(60) {
            break None;
        }
        tokio::time::sleep(tick).await;
    };
    // Let the last reports land before counting.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let m4 = ms();
    let phase3 = json!({
        "manifest_version": yank.document.version,
        "manifest_yanked": yank.document.yanked,
        "publish_seconds": yank_published_s,
        "seconds_until_every_host_was_back": all_back_s,
        "in_poll_intervals": all_back_s.map(|s| s / a.interval.as_secs_f64()),
        "in_longest_poll_cycles": all_back_s.map(|s| s / cycle.as_secs_f64()),
        "hosts_back_on_old": count(&hosts, |s| s.version == OLD),
        "hosts_that_wrote_yanked": count(&hosts, |s| s.wrote_yanked),
        "polls": costs(&ctx, 3),
        "proxy": window(&counts, m3, m4),
        "release_bytes": ctx.stats.release_bytes[3].load(Ordering::Relaxed),
    });
    json!({
        "scenario": "gate",
        "hosts": n,
        "interval_s": a.interval.as_secs_f64(),
        "jitter_s": a.jitter.as_secs_f64(),
        "trial_s": a.trial.as_secs_f64(),
        "artifact_bytes": a.artifact_size,
        "warmup_seconds": warmup_s,
        "bad": phase1,
        "good": phase2,
        "yank": phase3,
        "errors": ctx.stats.errors.load(Ordering::Relaxed),
        "last_error": ctx.stats.last_error.lock().unwrap().clone(),
        "reports_written": ctx.stats.reports_written.load(Ordering::Relaxed),
        "report_writes_failed": ctx.stats.report_writes_failed.load(Ordering::Relaxed),
        "requests_total": counts.requests.lock().unwrap().len(),
        "seconds": start.elapsed().as_secs_f64(),
    })
}
