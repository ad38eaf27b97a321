//! Fleet simulation for `ci/bench fleet`: many hosts, each its own
//! [`S3Fetcher`] with its own host id, poll one signed manifest on a real
//! S3-protocol server (moto) with jitter, while the publisher
//! ([`baton::publish::publish_async`], the code behind `baton publish --to
//! s3://…`) moves a release 0 → 10 → 50 → 100 %.
//!
//! Each host decides as a master does: the fetcher checks the manifest
//! (signature, expiry) and each host applies the cohort rule
//! ([`baton::manifest::rollout`]) to its own id; a host in the rollout reads
//! the artifact through the fetcher's body and checks its sha256. Nothing is
//! installed or probed.
//!
//! Every host runs release 1.0.0, published first; 2.0.0 differs from it
//! in a few bytes, and the publisher makes a delta patch
//! (`Publish::patches`). A host in the rollout takes the patch the
//! manifest lists for its binary, as a master does: it reads it through the
//! candidate's opener and applies it with [`baton::delta::apply`] against its
//! 1.0.0 binary, checking the result's digest; with `--full` it downloads
//! the full artifact instead. The report has the bytes each path moved. Every request passes through a counting proxy on
//! 127.0.0.1, which records the time of each request and the bytes answered.
//!
//! ```sh
//! fleet_sim --endpoint http://127.0.0.1:PORT [--hosts 1000] [--interval 5]
//!           [--jitter 5] [--artifact-size 1048576] [--full]
//! fleet_sim --scenario gate --endpoint http://127.0.0.1:PORT [--hosts 1000]
//!           [--interval 5] [--jitter 5] [--schedule 0s=1,40s=10,80s=50,120s=100]
//!           [--gate canary=1,max_failures=3] [--trial 1]
//! ```
//!
//! `--scenario gate` ([`gate`]) runs a bad release stopped by its gate, a
//! good one through the gate, and a yank, with trial reports; each host
//! has its own proxy listener, so its requests are counted per poll.
//!
//! Prints one JSON object on stdout. Needs AWS credentials in the
//! environment (any, for moto) and `AWS_EC2_METADATA_DISABLED=true`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use baton::config::{Fetch, Source, Verify};
use baton::fetchers::s3::S3Fetcher;
use baton::fetchers::Fetcher;
use baton::manifest::{rollout, Rollout};
use baton::publish::target::Destination;
use baton::publish::{publish_async, Publish};
use rand::Rng;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[path = "fleet_sim/gate.rs"]
mod gate;

const BUCKET: &str = "fleet";
const KEY: &str = "hello/manifest.json";
const OLD_VERSION: &str = "1.0.0";
const VERSION: &str = "2.0.0";
const STEPS: [u8; 4] = [0, 10, 50, 100];

struct Args {
    endpoint: String,
    hosts: usize,
    interval: Duration,
    jitter: Duration,
    artifact_size: usize,
    /// Download full artifacts even when a patch applies.
    full: bool,
    /// `rollout` (the default: 0 → 10 → 50 → 100 %) or `gate` (trial
    /// reports, the gate and a yank; see [`gate`]).
    scenario: String,
    /// The gate scenario's schedule, for both releases.
    schedule: String,
    /// The gate scenario's gate.
    gate: String,
    /// How long a simulated trial lasts, from `started` to its outcome.
    trial: Duration,
}

fn args() -> Args {
    let mut a = Args {
        endpoint: String::new(),
        hosts: 1000,
        interval: Duration::from_secs(5),
        jitter: Duration::from_secs(5),
        artifact_size: 1 << 20,
        full: false,
        scenario: "rollout".into(),
        schedule: "0s=1,40s=10,80s=50,120s=100".into(),
        gate: "canary=1,max_failures=3".into(),
        trial: Duration::from_secs(1),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "--full" {
            a.full = true;
            continue;
        }
        let value = it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--endpoint" => a.endpoint = value,
            "--hosts" => a.hosts = value.parse().expect("--hosts N"),
            "--interval" => a.interval = Duration::from_secs_f64(value.parse().expect("seconds")),
            "--jitter" => a.jitter = Duration::from_secs_f64(value.parse().expect("seconds")),
            "--artifact-size" => a.artifact_size = value.parse().expect("bytes"),
            "--scenario" => a.scenario = value,
            "--schedule" => a.schedule = value,
            "--gate" => a.gate = value,
            "--trial" => a.trial = Duration::from_secs_f64(value.parse().expect("seconds")),
            other => panic!("unknown flag {other}"),
        }
    }
    assert!(!a.endpoint.is_empty(), "--endpoint URL is required");
    assert!(
        matches!(a.scenario.as_str(), "rollout" | "gate"),
        "--scenario rollout|gate"
    );
    a
}

/// What a request asked for, as the proxy tells from its request line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Head,
    /// GetObject.
    Get,
    /// ListObjectsV2 (a GET on the bucket, `list-type=2`).
    List,
    Put,
    Other,
}

impl Kind {
    const ALL: [Kind; 5] = [Kind::Head, Kind::Get, Kind::List, Kind::Put, Kind::Other];

    fn name(self) -> &'static str {
        match self {
            Kind::Head => "HEAD",
            Kind::Get => "GET",
            Kind::List => "LIST",
            Kind::Put => "PUT",
            Kind::Other => "other",
        }
    }
}

/// What a request was about, from its path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Class {
    Manifest,
    Signature,
    Listing,
    Report,
    /// Artifacts and patches: anything else under the bucket.
    Artifact,
    Other,
}

impl Class {
    const ALL: [Class; 6] = [
        Class::Manifest,
        Class::Signature,
        Class::Listing,
        Class::Report,
        Class::Artifact,
        Class::Other,
    ];

    fn name(self) -> &'static str {
        match self {
            Class::Manifest => "manifest",
            Class::Signature => "signature",
            Class::Listing => "listing",
            Class::Report => "report",
            Class::Artifact => "artifact_or_patch",
            Class::Other => "other",
        }
    }
}

/// One request the proxy passed.
#[derive(Debug, Clone)]
struct Req {
    /// Milliseconds since the start.
    ms: u64,
    kind: Kind,
    class: Class,
    /// Bytes answered (headers and body).
    bytes: u64,
}

/// The kind and class of a request line (`GET /fleet?list-type=2 HTTP/1.1`).
fn classify(line: &[u8]) -> (Kind, Class) {
    let line = String::from_utf8_lossy(line);
    let mut parts = line.split(' ');
    let method = parts.next().unwrap_or("");
    let target = parts.next().unwrap_or("");
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    // Path-style: `/bucket` or `/bucket/` is the bucket itself.
    let bucket_only = path.trim_matches('/').split('/').count() <= 1;
    let kind = match method {
        "HEAD" => Kind::Head,
        "GET" if bucket_only || query.split('&').any(|q| q == "list-type=2") => Kind::List,
        "GET" => Kind::Get,
        "PUT" => Kind::Put,
        _ => Kind::Other,
    };
    let class = if kind == Kind::List {
        Class::Listing
    } else if bucket_only {
        Class::Other
    } else if path.ends_with("/manifest.json") {
        Class::Manifest
    } else if path.ends_with(".minisig") {
        Class::Signature
    } else if path.contains("/reports/") {
        Class::Report
    } else {
        Class::Artifact
    };
    (kind, class)
}

/// Splits what a client sends into requests: heads, bodies by
/// `Content-Length` or chunked encoding.
#[derive(Default)]
struct RequestParser {
    buf: Vec<u8>,
    state: ParseState,
}

#[derive(Default, Clone, Copy)]
enum ParseState {
    #[default]
    Head,
    Body(u64),
    ChunkSize,
    ChunkData(u64),
    Trailers,
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

impl RequestParser {
    /// Feeds bytes the client sent; `seen` gets each request line.
    fn feed(&mut self, data: &[u8], seen: &mut impl FnMut(&[u8])) {
        self.buf.extend_from_slice(data);
        let mut at = 0;
        while at < self.buf.len() {
            let rest = &self.buf[at..];
            match self.state {
                ParseState::Body(n) | ParseState::ChunkData(n) => {
                    let k = (rest.len() as u64).min(n);
                    at += k as usize;
                    self.state = match (self.state, n - k) {
                        (ParseState::Body(_), 0) => ParseState::Head,
                        (ParseState::Body(_), left) => ParseState::Body(left),
                        (_, 0) => ParseState::ChunkSize,
                        (_, left) => ParseState::ChunkData(left),
                    };
                }
                ParseState::Head => {
                    let Some(end) = find(rest, b"\r\n\r\n") else {
                        if rest.len() > 64 << 10 {
                            at = self.buf.len();
                        }
                        break;
                    };
                    let head = String::from_utf8_lossy(&rest[..end]);
                    let mut lines = head.split("\r\n");
                    let line = lines.next().unwrap_or("");
                    let (mut length, mut chunked) = (0u64, false);
                    for h in lines {
                        let Some((name, value)) = h.split_once(':') else {
                            continue;
                        };
                        let (name, value) = (name.trim().to_ascii_lowercase(), value.trim());
                        if name == "content-length" {
                            length = value.parse().unwrap_or(0);
                        } else if name == "transfer-encoding" {
                            chunked = value.to_ascii_lowercase().contains("chunked");
                        }
                    }
                    seen(line.as_bytes());
                    at += end + 4;
                    self.state = if chunked {
                        ParseState::ChunkSize
                    } else if length > 0 {
                        ParseState::Body(length)
                    } else {
                        ParseState::Head
                    };
                }
                ParseState::ChunkSize => {
                    let Some(end) = find(rest, b"\r\n") else {
                        break;
                    };
                    let text = String::from_utf8_lossy(&rest[..end]);
                    let hex = text.split(';').next().unwrap_or("").trim();
                    let size = u64::from_str_radix(hex, 16).unwrap_or(0);
                    at += end + 2;
                    self.state = if size == 0 {
                        ParseState::Trailers
                    } else {
                        ParseState::ChunkData(size + 2)
                    };
                }
                ParseState::Trailers => {
                    let Some(end) = find(rest, b"\r\n") else {
                        break;
                    };
                    at += end + 2;
                    if end == 0 {
                        self.state = ParseState::Head;
                    }
                }
            }
        }
        self.buf.drain(..at);
    }
}

/// What the proxy saw.
#[derive(Default)]
struct Counts {
    /// Every request, in the order seen.
    requests: Mutex<Vec<Req>>,
    /// Bytes answered to the hosts.
    bytes_down: AtomicU64,
    /// Per host (when each host has its own listener): requests by kind,
    /// indexed as [`Kind::ALL`].
    per_host: Vec<[AtomicU64; 5]>,
}

impl Counts {
    /// Requests of host `i` so far, by kind.
    fn of_host(&self, i: usize) -> [u64; 5] {
        let c = &self.per_host[i];
        std::array::from_fn(|k| c[k].load(Ordering::Relaxed))
    }
}

/// A TCP proxy on 127.0.0.1 that counts requests by kind (parsing each
/// request's head and skipping its body) and the bytes answered to each;
/// `host` tags what comes through this listener.
async fn proxy(upstream: SocketAddr, counts: Arc<Counts>, start: Instant, host: u32) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((client, _)) = listener.accept().await else {
                continue;
            };
            let Ok(server) = tokio::net::TcpStream::connect(upstream).await else {
                continue;
            };
            let counts = counts.clone();
            tokio::spawn(async move {
                let (mut c_read, mut c_write) = client.into_split();
                let (mut s_read, mut s_write) = server.into_split();
                // The request being answered on this connection (hosts do
                // not pipeline): the index of its `Req`.
                let current = Arc::new(AtomicUsize::new(usize::MAX));
                let up_counts = counts.clone();
                let up_current = current.clone();
                let up = tokio::spawn(async move {
                    let mut buf = vec![0u8; 16 << 10];
                    let mut parser = RequestParser::default();
                    while let Ok(n) = c_read.read(&mut buf).await {
                        if n == 0 {
                            break;
                        }
                        parser.feed(&buf[..n], &mut |line| {
                            let (kind, class) = classify(line);
                            let ms = start.elapsed().as_millis() as u64;
                            let mut all = up_counts.requests.lock().unwrap();
                            all.push(Req {
                                ms,
                                kind,
                                class,
                                bytes: 0,
                            });
                            up_current.store(all.len() - 1, Ordering::Relaxed);
                            if let Some(c) = up_counts.per_host.get(host as usize) {
                                c[kind as usize].fetch_add(1, Ordering::Relaxed);
                            }
                        });
                        if s_write.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                    let _ = s_write.shutdown().await;
                });
                let mut buf = vec![0u8; 64 << 10];
                while let Ok(n) = s_read.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    // Counted before the client can see it, so before it
                    // sends its next request.
                    counts.bytes_down.fetch_add(n as u64, Ordering::Relaxed);
                    let i = current.load(Ordering::Relaxed);
                    if i != usize::MAX {
                        counts.requests.lock().unwrap()[i].bytes += n as u64;
                    }
                    if c_write.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
                let _ = c_write.shutdown().await;
                let _ = up.await;
            });
        }
    });
    addr
}

/// One host's state, as the controller reads it.
struct Host {
    id: String,
    /// The rollout percentage of the last manifest it read (255: none).
    seen: AtomicU8,
    upgraded: AtomicBool,
    /// Artifact bytes it downloaded.
    bytes: AtomicU64,
    /// Patch bytes it downloaded.
    patch_bytes: AtomicU64,
}

/// The release every host runs before the rollout: its binary, for patches.
struct Installed {
    path: std::path::PathBuf,
    sha256: [u8; 32],
    /// Never take the delta path (`--full`).
    full: bool,
}

/// Fleet-wide poll counters.
#[derive(Default)]
struct Polls {
    total: AtomicUsize,
    unchanged: AtomicUsize,
    errors: AtomicUsize,
    last_error: Mutex<String>,
}

async fn run_host(
    host: Arc<Host>,
    installed: Arc<Installed>,
    mut fetcher: S3Fetcher,
    polls: Arc<Polls>,
    interval: Duration,
    jitter: Duration,
) {
    let spread = |d: Duration| {
        if d.is_zero() {
            Duration::ZERO
        } else {
            rand::rng().random_range(Duration::ZERO..d)
        }
    };
    tokio::time::sleep(spread(interval)).await;
    loop {
        match fetcher.check().await {
            Ok(None) => {
                polls.unchanged.fetch_add(1, Ordering::Relaxed);
            }
            Ok(Some(mut candidate)) => {
                let manifest = candidate.info.manifest.take().expect("a manifest source");
                let version = manifest.version.clone().unwrap_or_default();
                let percent = manifest.percent_at(SystemTime::now());
                let bucket = rollout::bucket(&host.id, &version);
                let admitted = !manifest.rollout.is_halt() && rollout::admits(bucket, percent);
                if admitted && !host.upgraded.load(Ordering::Relaxed) {
                    let patch = manifest
                        .patches
                        .iter()
                        .find(|p| p.from == installed.sha256 && !installed.full);
                    let result = match (patch, &candidate.opener, manifest.binary()) {
                        (Some(patch), Some(opener), Some(binary)) => {
                            let body = opener(&patch.url);
                            apply_patch(body, patch.size, &installed, binary)
                                .await
                                .map(|n| {
                                    host.patch_bytes.fetch_add(n, Ordering::Relaxed);
                                })
                        }
                        _ => download(&mut candidate.body, manifest.sha256)
                            .await
                            .map(|n| {
                                host.bytes.fetch_add(n, Ordering::Relaxed);
                            }),
                    };
                    match result {
                        Ok(()) => host.upgraded.store(true, Ordering::Relaxed),
                        Err(e) => {
                            *polls.last_error.lock().unwrap() = e;
                            polls.errors.fetch_add(1, Ordering::Relaxed);
                            fetcher.retry();
                        }
                    }
                }
                host.seen.store(percent, Ordering::Relaxed);
            }
            Err(e) => {
                polls.errors.fetch_add(1, Ordering::Relaxed);
                *polls.last_error.lock().unwrap() = baton::display_chain(&e);
                fetcher.retry();
            }
        }
        polls.total.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(interval + spread(jitter)).await;
    }
}

/// Reads a full artifact, checking its sha256; returns the bytes read.
async fn download(
    body: &mut baton::fetchers::Body,
    sha256: Option<[u8; 32]>,
) -> Result<u64, String> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 64 << 10];
    let mut n = 0u64;
    loop {
        match body.read(&mut buf).await {
            Ok(0) => break,
            Ok(k) => {
                hasher.update(&buf[..k]);
                n += k as u64;
            }
            Err(e) => return Err(e.to_string()),
        }
    }
    let digest: [u8; 32] = hasher.finalize().into();
    if Some(digest) != sha256 {
        return Err("artifact sha256 mismatch".into());
    }
    Ok(n)
}

/// Reads a patch (at most `size` bytes) and applies it to the installed
/// binary, checking the result against `binary`; returns the patch's size.
async fn apply_patch(
    mut body: baton::fetchers::Body,
    size: u64,
    installed: &Installed,
    binary: [u8; 32],
) -> Result<u64, String> {
    let mut patch = Vec::new();
    (&mut body)
        .take(size + 1)
        .read_to_end(&mut patch)
        .await
        .map_err(|e| e.to_string())?;
    if patch.len() as u64 != size {
        return Err(format!("patch is {} bytes, not {size}", patch.len()));
    }
    let (path, from) = (installed.path.clone(), installed.sha256);
    tokio::task::spawn_blocking(move || {
        let spec = baton::delta::Spec {
            reference: &path,
            from: Some(from),
            sha256: binary,
            max_size: 1 << 30,
        };
        baton::delta::apply(&spec, &patch[..], std::io::sink())
            .map_err(|e| baton::display_chain(&e))
    })
    .await
    .expect("apply does not panic")?;
    Ok(size)
}

/// The largest number of requests in any window of one second.
fn peak_per_second(times: &mut [u64]) -> usize {
    times.sort_unstable();
    let (mut best, mut lo) = (0, 0);
    for hi in 0..times.len() {
        while times[hi] - times[lo] >= 1000 {
            lo += 1;
        }
        best = best.max(hi - lo + 1);
    }
    best
}

/// Creates the bucket at `endpoint` (moto, directly, not through the
/// proxy) and names the publisher's destination in it.
async fn bucket(endpoint: &str) -> Destination {
    let shared = baton::fetchers::s3::config_loader()
        .region(aws_config::Region::new("us-east-1"))
        .load()
        .await;
    let admin = aws_sdk_s3::Client::from_conf(
        aws_sdk_s3::config::Builder::from(&shared)
            .endpoint_url(endpoint)
            .force_path_style(true)
            .build(),
    );
    let _ = admin.create_bucket().bucket(BUCKET).send().await;
    Destination::S3 {
        bucket: BUCKET.into(),
        prefix: "hello/".into(),
        endpoint_url: Some(endpoint.to_owned()),
        region: Some("us-east-1".into()),
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let a = args();
    if a.scenario == "gate" {
        let report = gate::run(&a).await;
        println!("{report}");
        std::process::exit(0);
    }
    let start = Instant::now();
    let work = tempfile::tempdir().unwrap();
    // The publisher: a key, an artifact, the bucket.
    let key = work.path().join("release.key");
    std::env::remove_var("BATON_KEY_PASSWORD");
    let public = baton::publish::keygen(&key).expect("keygen");
    // Incompressible, as a compressed binary is (xorshift64).
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    let old_bytes: Vec<u8> = (0..a.artifact_size)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect();
    let old = work.path().join(format!("hello-{OLD_VERSION}"));
    std::fs::write(&old, &old_bytes).unwrap();
    // The new build: the old one with a few bytes changed, as between two
    // builds that differ in their version string.
    let mut bytes = old_bytes.clone();
    for i in 0..8 {
        let at = (i * bytes.len() / 8 + 17).min(bytes.len() - 1);
        bytes[at] ^= 0x5a;
    }
    let artifact = work.path().join(format!("hello-{VERSION}"));
    std::fs::write(&artifact, &bytes).unwrap();
    let installed = Arc::new(Installed {
        path: old.clone(),
        sha256: Sha256::digest(&old_bytes).into(),
        full: a.full,
    });
    let dest = bucket(&a.endpoint).await;
    let publish = |rollout: u8, first: bool| Publish {
        to: dest.clone(),
        version: first.then(|| VERSION.to_owned()),
        artifacts: if first {
            vec![(None, artifact.clone())]
        } else {
            Vec::new()
        },
        rollout: Some(Rollout::Percent(rollout)),
        expires: Some(Duration::from_secs(86_400)),
        sign: Some(key.clone()),
        patches: 1,
        ..Publish::default()
    };
    // 1.0.0 first, so the publisher's history knows the binary every host
    // runs; then 2.0.0 with a patch from it, at 0 %.
    publish_async(&Publish {
        version: Some(OLD_VERSION.to_owned()),
        artifacts: vec![(None, old.clone())],
        rollout: Some(Rollout::Percent(100)),
        ..publish(0, true)
    })
    .await
    .expect("publish 1.0.0");
    let made = baton::publish::publish_report_async(&publish(STEPS[0], true))
        .await
        .expect("publish");
    let patch_size: u64 = made.patches.iter().map(|p| p.size).sum();
    assert!(
        !made.patches.is_empty(),
        "no patch was made: {:?}",
        made.warnings
    );

    let counts = Arc::new(Counts::default());
    let upstream: SocketAddr = a
        .endpoint
        .trim_start_matches("http://")
        .parse()
        .expect("--endpoint http://127.0.0.1:PORT");
    let proxied = proxy(upstream, counts.clone(), start, u32::MAX).await;
    let verify = Verify {
        minisign_keys: vec![public],
        ..Verify::default()
    };
    let polls = Arc::new(Polls::default());
    let hosts: Vec<Arc<Host>> = (0..a.hosts)
        .map(|i| {
            Arc::new(Host {
                id: format!("host-{i:04}"),
                seen: AtomicU8::new(255),
                upgraded: AtomicBool::new(false),
                bytes: AtomicU64::new(0),
                patch_bytes: AtomicU64::new(0),
            })
        })
        .collect();
    for host in &hosts {
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
            report: false,
        };
        let fetcher = S3Fetcher::new(&fetch, &verify);
        tokio::spawn(run_host(
            host.clone(),
            installed.clone(),
            fetcher,
            polls.clone(),
            a.interval,
            a.jitter,
        ));
    }

    let deadline_per_step = (a.interval + a.jitter) * 4 + Duration::from_secs(60);
    let mut steps = Vec::new();
    for (n, &percent) in STEPS.iter().enumerate() {
        let t0 = Instant::now();
        let requests_before = counts.requests.lock().unwrap().len();
        if n > 0 {
            publish_async(&publish(percent, false))
                .await
                .expect("re-sign");
        }
        loop {
            let seen = hosts
                .iter()
                .filter(|h| h.seen.load(Ordering::Relaxed) == percent)
                .count();
            if seen == hosts.len() {
                break;
            }
            if t0.elapsed() > deadline_per_step {
                eprintln!(
                    "step {percent} %: only {seen} of {} hosts read the manifest in time; last error: {}",
                    hosts.len(),
                    polls.last_error.lock().unwrap()
                );
                std::process::exit(1);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let upgraded = hosts
            .iter()
            .filter(|h| h.upgraded.load(Ordering::Relaxed))
            .count();
        let expected = hosts
            .iter()
            .filter(|h| rollout::admits(rollout::bucket(&h.id, VERSION), percent))
            .count();
        steps.push(serde_json::json!({
            "percent": percent,
            "upgraded": upgraded,
            "share": upgraded as f64 / hosts.len() as f64 * 100.0,
            "expected_by_rule": expected,
            "seconds_until_every_host_read_it": t0.elapsed().as_secs_f64(),
            "requests": counts.requests.lock().unwrap().len() - requests_before,
        }));
    }

    // A quiet window of two poll cycles with nothing changing.
    let (p0, u0, r0) = (
        polls.total.load(Ordering::Relaxed),
        polls.unchanged.load(Ordering::Relaxed),
        counts.requests.lock().unwrap().clone(),
    );
    tokio::time::sleep((a.interval + a.jitter) * 2).await;
    let (p1, u1, r1) = (
        polls.total.load(Ordering::Relaxed),
        polls.unchanged.load(Ordering::Relaxed),
        counts.requests.lock().unwrap().clone(),
    );
    let quiet = &r1[r0.len()..];
    let quiet_heads = quiet.iter().filter(|r| r.kind == Kind::Head).count();
    let mut times: Vec<u64> = r1.iter().map(|r| r.ms).collect();
    let upgraded: Vec<&Arc<Host>> = hosts
        .iter()
        .filter(|h| h.upgraded.load(Ordering::Relaxed))
        .collect();
    let artifact_bytes: u64 = hosts.iter().map(|h| h.bytes.load(Ordering::Relaxed)).sum();
    let patch_bytes: u64 = hosts
        .iter()
        .map(|h| h.patch_bytes.load(Ordering::Relaxed))
        .sum();
    let report = serde_json::json!({
        "hosts": a.hosts,
        "interval_s": a.interval.as_secs_f64(),
        "jitter_s": a.jitter.as_secs_f64(),
        "artifact_bytes": a.artifact_size,
        "steps": steps,
        "quiet": {
            "polls": p1 - p0,
            "unchanged_polls": u1 - u0,
            "requests": quiet.len(),
            "heads": quiet_heads,
            "requests_per_unchanged_poll": quiet.len() as f64 / (u1 - u0).max(1) as f64,
        },
        "requests_total": times.len(),
        "peak_requests_in_one_second": peak_per_second(&mut times),
        "mean_requests_per_second": times.len() as f64 / start.elapsed().as_secs_f64(),
        "artifact_bytes_per_upgraded_host": artifact_bytes as f64 / upgraded.len().max(1) as f64,
        "patch_bytes": patch_size,
        "patch_bytes_per_upgraded_host": patch_bytes as f64 / upgraded.len().max(1) as f64,
        "delta": !a.full,
        "bytes_from_s3_per_host": counts.bytes_down.load(Ordering::Relaxed) as f64 / a.hosts as f64,
        "polls": polls.total.load(Ordering::Relaxed),
        "errors": polls.errors.load(Ordering::Relaxed),
        "seconds": start.elapsed().as_secs_f64(),
    });
    println!("{report}");
    std::process::exit(0);
}
