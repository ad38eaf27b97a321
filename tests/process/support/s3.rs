//! A real S3-protocol server for the S3 fetcher tests: moto's server mode,
//! installed by ci/test, started on 127.0.0.1 with a free port and stopped
//! with the test. A counting proxy in front of it tells how many HEAD and GET
//! requests the fetcher made.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_s3::primitives::ByteStream;

/// The credentials the tests give both moto and baton.
pub const ENV: &[(&str, &str)] = &[
    ("AWS_ACCESS_KEY_ID", "testing"),
    ("AWS_SECRET_ACCESS_KEY", "testing"),
    ("AWS_REGION", "us-east-1"),
    ("AWS_EC2_METADATA_DISABLED", "true"),
];

fn moto_server() -> PathBuf {
    let path = match std::env::var_os("BATON_TEST_MOTO_BIN") {
        Some(dir) => PathBuf::from(dir).join("moto_server"),
        None => PathBuf::from("moto_server"),
    };
    let found = path.is_file()
        || std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
            .any(|d| d.join("moto_server").is_file());
    assert!(
        found,
        "moto_server is not installed: run ci/test, which installs moto"
    );
    path
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A moto server and a client for setting up buckets and objects.
pub struct S3Server {
    child: Child,
    addr: SocketAddr,
    rt: tokio::runtime::Runtime,
    client: aws_sdk_s3::Client,
}

impl S3Server {
    /// Starts moto; `no_auth_actions`, when set, makes it enforce
    /// credentials after that many requests (moto's
    /// INITIAL_NO_AUTH_ACTION_COUNT).
    pub fn start(no_auth_actions: Option<u32>) -> S3Server {
        let port = free_port();
        let mut cmd = Command::new(moto_server());
        cmd.args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .envs(ENV.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if let Some(n) = no_auth_actions {
            cmd.env("INITIAL_NO_AUTH_ACTION_COUNT", n.to_string());
        }
        let child = cmd.spawn().expect("start moto_server");
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        super::wait_for("moto to listen", Duration::from_secs(30), || {
            TcpStream::connect(addr).ok().map(|_| ())
        });
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let client = Self::client_for(&format!("http://{addr}"));
        S3Server {
            child,
            addr,
            rt,
            client,
        }
    }

    fn client_for(endpoint: &str) -> aws_sdk_s3::Client {
        let creds = aws_sdk_s3::config::Credentials::new("testing", "testing", None, None, "tests");
        let config = aws_sdk_s3::config::Builder::new()
            .http_client(baton::fetchers::s3::http_client())
            .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
            .region(aws_sdk_s3::config::Region::new("us-east-1"))
            .credentials_provider(creds)
            .endpoint_url(endpoint)
            .force_path_style(true)
            .build();
        aws_sdk_s3::Client::from_conf(config)
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Creates a bucket.
    pub fn bucket(&self, name: &str) {
        self.rt
            .block_on(self.client.create_bucket().bucket(name).send())
            .unwrap();
    }

    /// Uploads an object with a sha256 checksum and optional metadata.
    pub fn put(&self, bucket: &str, key: &str, bytes: Vec<u8>, metadata: &[(&str, &str)]) {
        self.put_with(bucket, key, bytes, metadata, true)
    }

    /// Uploads an object, with or without an S3 sha256 checksum.
    pub fn put_with(
        &self,
        bucket: &str,
        key: &str,
        bytes: Vec<u8>,
        metadata: &[(&str, &str)],
        checksum: bool,
    ) {
        let mut put = self
            .client
            .put_object()
            .bucket(bucket)
            .key(key)
            .body(ByteStream::from(bytes));
        if checksum {
            put = put.checksum_algorithm(aws_sdk_s3::types::ChecksumAlgorithm::Sha256);
        }
        for (k, v) in metadata {
            put = put.metadata(*k, *v);
        }
        self.rt.block_on(put.send()).unwrap();
    }

    /// The `ChecksumSHA256` the server keeps for an object (base64), if any.
    pub fn checksum_sha256(&self, bucket: &str, key: &str) -> Option<String> {
        let head = self
            .rt
            .block_on(
                self.client
                    .head_object()
                    .bucket(bucket)
                    .key(key)
                    .checksum_mode(aws_sdk_s3::types::ChecksumMode::Enabled)
                    .send(),
            )
            .unwrap();
        head.checksum_sha256().map(str::to_owned)
    }

    /// An object's bytes, if it exists.
    pub fn get(&self, bucket: &str, key: &str) -> Option<Vec<u8>> {
        let got = self
            .rt
            .block_on(self.client.get_object().bucket(bucket).key(key).send())
            .ok()?;
        let bytes = self.rt.block_on(got.body.collect()).ok()?;
        Some(bytes.into_bytes().to_vec())
    }

    /// Deletes an object.
    pub fn delete(&self, bucket: &str, key: &str) {
        self.rt
            .block_on(self.client.delete_object().bucket(bucket).key(key).send())
            .unwrap();
    }

    /// Stops the server (the endpoint becomes unreachable).
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Deletes an empty bucket.
    pub fn delete_bucket(&self, bucket: &str) {
        self.rt
            .block_on(self.client.delete_bucket().bucket(bucket).send())
            .unwrap();
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A TCP proxy to `upstream` that counts the requests passing through it by
/// method (the fetcher's requests have no bodies, so every request line is
/// at the start of a line).
pub struct CountingProxy {
    addr: SocketAddr,
    heads: Arc<AtomicUsize>,
    gets: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

impl CountingProxy {
    /// Proxies to `upstream`.
    pub fn start(upstream: SocketAddr) -> CountingProxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let (heads, gets, stop) = (
            Arc::new(AtomicUsize::new(0)),
            Arc::new(AtomicUsize::new(0)),
            Arc::new(AtomicBool::new(false)),
        );
        let (h, g, st) = (heads.clone(), gets.clone(), stop.clone());
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                if st.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(server) = TcpStream::connect(upstream) else {
                    continue;
                };
                let (mut c_read, mut s_write) =
                    (client.try_clone().unwrap(), server.try_clone().unwrap());
                let (h, g) = (h.clone(), g.clone());
                std::thread::spawn(move || {
                    let mut buf = vec![0u8; 64 << 10];
                    let mut at_line_start = true;
                    while let Ok(n) = c_read.read(&mut buf) {
                        if n == 0 {
                            break;
                        }
                        for line in buf[..n].split_inclusive(|&b| b == b'\n') {
                            if at_line_start {
                                if line.starts_with(b"HEAD /") {
                                    h.fetch_add(1, Ordering::SeqCst);
                                } else if line.starts_with(b"GET /") {
                                    g.fetch_add(1, Ordering::SeqCst);
                                }
                            }
                            at_line_start = line.ends_with(b"\n");
                        }
                        if s_write.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                    let _ = s_write.shutdown(std::net::Shutdown::Write);
                });
                let (mut s_read, mut c_write) = (server, client);
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut s_read, &mut c_write);
                    let _ = c_write.shutdown(std::net::Shutdown::Write);
                });
            }
        });
        CountingProxy {
            addr,
            heads,
            gets,
            stop,
        }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// HEAD requests so far.
    pub fn heads(&self) -> usize {
        self.heads.load(Ordering::SeqCst)
    }

    /// GET requests so far.
    pub fn gets(&self) -> usize {
        self.gets.load(Ordering::SeqCst)
    }
}

impl Drop for CountingProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr);
    }
}

impl S3Server {
    /// The server's address, for a proxy.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}
