//! A local server that answers as GitHub's REST API does for releases (the
//! replies are the fixture files in `fixtures/github/`), plus a separate
//! "storage" server that asset downloads are redirected to, which refuses
//! (and counts) any request carrying an Authorization header. It also takes
//! what a publisher sends, as GitHub's API does: `GET
//! /releases/tags/{tag}`, `POST /releases`, `GET /releases/{id}`, uploads
//! to the release's `upload_url` (here `/uploads/…` on the API's own host,
//! as on GitHub Enterprise) and `DELETE /releases/assets/{id}`.

use std::collections::HashMap;
use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::{Arc, Mutex};

use sha2::{Digest, Sha256};

/// One release asset.
#[derive(Clone)]
pub struct FakeAsset {
    /// Asset id.
    pub id: u64,
    /// File name.
    pub name: String,
    /// Content.
    pub bytes: Arc<Vec<u8>>,
    /// Whether the API reports `digest: "sha256:…"`.
    pub digest: bool,
}

/// One release.
#[derive(Clone)]
pub struct FakeRelease {
    /// Release id (also its creation order).
    pub id: u64,
    /// Tag, such as `v1.0.0`.
    pub tag: String,
    /// Draft.
    pub draft: bool,
    /// Pre-release.
    pub prerelease: bool,
    /// Assets.
    pub assets: Vec<FakeAsset>,
}

/// How the API misbehaves, when it does.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// 403 with `x-ratelimit-remaining: 0` and a reset this many seconds ahead.
    RateLimit403(u64),
    /// 429 with `retry-after`.
    RateLimit429(u64),
}

#[derive(Default)]
struct State {
    releases: Vec<FakeRelease>,
    generation: u64,
    token: Option<String>,
    fault: Option<Fault>,
    page_size: usize,
    repo_missing: bool,
    /// The last release or asset id handed out.
    last_id: u64,
    /// (path, status) of every API request.
    seen: Vec<(String, u16)>,
    /// Storage requests that carried an Authorization header.
    leaked_auth: usize,
    downloads: usize,
}

/// The fake API and its storage server; both stop with the test process.
pub struct FakeGithub {
    api: SocketAddr,
    state: Arc<Mutex<State>>,
}

impl State {
    fn next_id(&mut self) -> u64 {
        self.last_id += 1;
        self.last_id
    }
}

fn fixture(name: &str) -> String {
    std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fixtures/github")
            .join(name),
    )
    .unwrap()
}

impl FakeGithub {
    /// Starts both servers; `token`, when set, is required (the repo is
    /// private: without it the API answers 404, with another one 401).
    pub fn start(token: Option<&str>) -> FakeGithub {
        let state = Arc::new(Mutex::new(State {
            token: token.map(str::to_owned),
            page_size: 100,
            last_id: 1,
            ..State::default()
        }));
        let api = TcpListener::bind("127.0.0.1:0").unwrap();
        let storage = TcpListener::bind("127.0.0.1:0").unwrap();
        let (api_addr, storage_addr) = (api.local_addr().unwrap(), storage.local_addr().unwrap());
        for (listener, is_api) in [(api, true), (storage, false)] {
            let state = state.clone();
            std::thread::spawn(move || {
                for stream in listener.incoming().flatten() {
                    let state = state.clone();
                    std::thread::spawn(move || {
                        let _ = if is_api {
                            serve_api(stream, &state, api_addr, storage_addr)
                        } else {
                            serve_storage(stream, &state)
                        };
                    });
                }
            });
        }
        FakeGithub {
            api: api_addr,
            state,
        }
    }

    /// The API base URL.
    pub fn api_url(&self) -> String {
        format!("http://{}", self.api)
    }

    fn id(&self) -> u64 {
        self.state.lock().unwrap().next_id()
    }

    /// Publishes a release with these (name, bytes, digest?) assets.
    pub fn release(
        &self,
        tag: &str,
        prerelease: bool,
        draft: bool,
        assets: &[(&str, Vec<u8>, bool)],
    ) {
        let release = FakeRelease {
            id: self.id(),
            tag: tag.to_owned(),
            draft,
            prerelease,
            assets: assets
                .iter()
                .map(|(name, bytes, digest)| FakeAsset {
                    id: self.id(),
                    name: (*name).to_owned(),
                    bytes: Arc::new(bytes.clone()),
                    digest: *digest,
                })
                .collect(),
        };
        let mut s = self.state.lock().unwrap();
        s.releases.push(release);
        s.generation += 1;
    }

    /// Removes every release.
    pub fn clear(&self) {
        let mut s = self.state.lock().unwrap();
        s.releases.clear();
        s.generation += 1;
    }

    /// Makes the API misbehave (or behave again with `None`).
    pub fn fault(&self, fault: Option<Fault>) {
        self.state.lock().unwrap().fault = fault;
    }

    /// Requires this token from now on (a revoked or rotated token).
    pub fn set_token(&self, token: Option<&str>) {
        self.state.lock().unwrap().token = token.map(str::to_owned);
    }

    /// Makes the repository disappear (deleted or renamed).
    pub fn remove_repo(&self) {
        self.state.lock().unwrap().repo_missing = true;
    }

    /// Serves lists in pages of this size at most.
    pub fn page_size(&self, n: usize) {
        self.state.lock().unwrap().page_size = n;
    }

    /// Statuses of API requests whose path starts with `prefix`.
    pub fn seen(&self, prefix: &str) -> Vec<u16> {
        let s = self.state.lock().unwrap();
        s.seen
            .iter()
            .filter(|(p, _)| p.starts_with(prefix))
            .map(|(_, st)| *st)
            .collect()
    }

    /// Asset downloads served by storage.
    pub fn downloads(&self) -> usize {
        self.state.lock().unwrap().downloads
    }

    /// Storage requests that carried an Authorization header.
    pub fn leaked_auth(&self) -> usize {
        self.state.lock().unwrap().leaked_auth
    }
}

fn respond(
    mut out: &TcpStream,
    status: u16,
    reason: &str,
    headers: &[(String, String)],
    body: &[u8],
) -> std::io::Result<()> {
    let mut head = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    out.write_all(head.as_bytes())?;
    out.write_all(body)
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn asset_json(api: &str, tag: &str, a: &FakeAsset) -> String {
    let digest = if a.digest {
        format!("\"sha256:{}\"", hex::encode(Sha256::digest(&*a.bytes)))
    } else {
        "null".to_owned()
    };
    fixture("asset.json")
        .replace("__API__", api)
        .replace("__TAG__", tag)
        .replace("__ASSET_ID__", &a.id.to_string())
        .replace("__NAME__", &a.name)
        .replace("__SIZE__", &a.bytes.len().to_string())
        .replace("__DIGEST__", &digest)
        .replace("__UPDATED__", "2026-11-01T10:02:00Z")
}

fn release_json(api: &str, r: &FakeRelease) -> String {
    let uploads = format!("{api}/uploads");
    let assets: Vec<String> = r
        .assets
        .iter()
        .map(|a| asset_json(api, &r.tag, a))
        .collect();
    fixture("release.json")
        .replace("__API__", api)
        .replace("__UPLOADS__", &uploads)
        .replace("__ID__", &r.id.to_string())
        .replace("__TAG__", &r.tag)
        .replace("__DRAFT__", &r.draft.to_string())
        .replace("__PRERELEASE__", &r.prerelease.to_string())
        .replace("__ASSETS__", &assets.join(","))
}

fn serve_api(
    stream: TcpStream,
    state: &Mutex<State>,
    api: SocketAddr,
    storage: SocketAddr,
) -> std::io::Result<()> {
    let req = read_full_request(&stream)?;
    let api_url = format!("http://{api}");
    let mut s = state.lock().unwrap();
    let mut headers = vec![
        (
            "Content-Type".to_owned(),
            "application/json; charset=utf-8".to_owned(),
        ),
        ("x-ratelimit-limit".to_owned(), "5000".to_owned()),
        ("x-ratelimit-remaining".to_owned(), "4999".to_owned()),
        ("x-ratelimit-reset".to_owned(), (now() + 3600).to_string()),
        (
            "x-github-api-version-selected".to_owned(),
            "2022-11-28".to_owned(),
        ),
    ];
    let path_only = req.path.split('?').next().unwrap_or("").to_owned();
    let reply =
        |s: &mut State, status: u16, reason: &str, headers: &[(String, String)], body: &[u8]| {
            s.seen.push((path_only.clone(), status));
            respond(&stream, status, reason, headers, body)
        };
    if let Some(fault) = s.fault {
        return match fault {
            Fault::RateLimit403(secs) => {
                headers[2].1 = "0".to_owned();
                headers[3].1 = (now() + secs).to_string();
                reply(
                    &mut s,
                    403,
                    "Forbidden",
                    &headers,
                    fixture("rate-limit.json").as_bytes(),
                )
            }
            Fault::RateLimit429(secs) => {
                headers.push(("retry-after".to_owned(), secs.to_string()));
                reply(
                    &mut s,
                    429,
                    "Too Many Requests",
                    &headers,
                    fixture("rate-limit.json").as_bytes(),
                )
            }
        };
    }
    let auth = req.headers.get("authorization").map(|a| {
        a.trim_start_matches("Bearer ")
            .trim_start_matches("token ")
            .to_owned()
    });
    if let Some(token) = s.token.clone() {
        match auth {
            Some(given) if given == token => {}
            Some(_) => {
                return reply(
                    &mut s,
                    401,
                    "Unauthorized",
                    &headers,
                    fixture("bad-credentials.json").as_bytes(),
                )
            }
            None => {
                return reply(
                    &mut s,
                    404,
                    "Not Found",
                    &headers,
                    fixture("not-found.json").as_bytes(),
                )
            }
        }
    }
    if let Some(upload) = path_only.strip_prefix("/uploads/repos/acme/hello/releases/") {
        let id = upload
            .strip_suffix("/assets")
            .and_then(|id| id.parse::<u64>().ok());
        let name = req
            .path
            .split_once("?name=")
            .map(|(_, n)| n.split('&').next().unwrap_or("").to_owned());
        let (Some(id), Some(name), "POST") = (id, name, req.method.as_str()) else {
            return reply(
                &mut s,
                404,
                "Not Found",
                &headers,
                fixture("not-found.json").as_bytes(),
            );
        };
        let asset_id = s.next_id();
        let Some(release) = s.releases.iter_mut().find(|r| r.id == id) else {
            return reply(
                &mut s,
                404,
                "Not Found",
                &headers,
                fixture("not-found.json").as_bytes(),
            );
        };
        if release.assets.iter().any(|a| a.name == name) {
            return reply(
                &mut s,
                422,
                "Unprocessable Entity",
                &headers,
                br#"{"message":"Validation Failed","errors":[{"resource":"ReleaseAsset","code":"already_exists","field":"name"}]}"#,
            );
        }
        let asset = FakeAsset {
            id: asset_id,
            name,
            bytes: Arc::new(req.body.clone()),
            digest: true,
        };
        release.assets.push(asset.clone());
        let tag = release.tag.clone();
        s.generation += 1;
        return reply(
            &mut s,
            201,
            "Created",
            &headers,
            asset_json(&api_url, &tag, &asset).as_bytes(),
        );
    }
    // Link headers name the repository by id, as GitHub's do.
    let rest = path_only
        .strip_prefix("/repos/acme/hello")
        .or_else(|| path_only.strip_prefix("/repositories/1296269"))
        .filter(|_| !s.repo_missing);
    let Some(rest) = rest else {
        return reply(
            &mut s,
            404,
            "Not Found",
            &headers,
            fixture("not-found.json").as_bytes(),
        );
    };
    if let Some(reply_to) = publisher_request(&mut s, &req, rest, &api_url) {
        let (status, reason, body) = reply_to;
        return reply(&mut s, status, reason, &headers, body.as_bytes());
    }
    let etag = format!("W/\"{}\"", s.generation);
    let fresh = req.headers.get("if-none-match") == Some(&etag);
    let published: Vec<FakeRelease> = s.releases.iter().rev().cloned().collect();
    match rest {
        "" => reply(
            &mut s,
            200,
            "OK",
            &headers,
            fixture("repository.json").as_bytes(),
        ),
        "/releases/latest" => {
            let Some(latest) = published.iter().find(|r| !r.draft && !r.prerelease) else {
                return reply(
                    &mut s,
                    404,
                    "Not Found",
                    &headers,
                    fixture("not-found.json").as_bytes(),
                );
            };
            headers.push(("ETag".to_owned(), etag));
            if fresh {
                return reply(&mut s, 304, "Not Modified", &headers, b"");
            }
            reply(
                &mut s,
                200,
                "OK",
                &headers,
                release_json(&api_url, latest).as_bytes(),
            )
        }
        "/releases" => {
            let query: HashMap<&str, &str> = req
                .path
                .split_once('?')
                .map(|(_, q)| q.split('&').filter_map(|kv| kv.split_once('=')).collect())
                .unwrap_or_default();
            let per_page: usize = query
                .get("per_page")
                .and_then(|v| v.parse().ok())
                .unwrap_or(30)
                .min(s.page_size);
            let page: usize = query.get("page").and_then(|v| v.parse().ok()).unwrap_or(1);
            let pages = published.len().div_ceil(per_page).max(1);
            if page == 1 {
                headers.push(("ETag".to_owned(), etag));
                if fresh {
                    return reply(&mut s, 304, "Not Modified", &headers, b"");
                }
            }
            let link = |p: usize, rel: &str| {
                format!("<{api_url}/repositories/1296269/releases?per_page={per_page}&page={p}>; rel=\"{rel}\"")
            };
            let mut links = Vec::new();
            if page < pages {
                links.push(link(page + 1, "next"));
                links.push(link(pages, "last"));
            }
            if page > 1 {
                links.push(link(page - 1, "prev"));
                links.push(link(1, "first"));
            }
            if !links.is_empty() {
                headers.push(("Link".to_owned(), links.join(", ")));
            }
            let items: Vec<String> = published
                .iter()
                .skip((page - 1) * per_page)
                .take(per_page)
                .map(|r| release_json(&api_url, r))
                .collect();
            reply(
                &mut s,
                200,
                "OK",
                &headers,
                format!("[{}]", items.join(",")).as_bytes(),
            )
        }
        other => {
            let Some(id) = other
                .strip_prefix("/releases/assets/")
                .and_then(|id| id.parse::<u64>().ok())
            else {
                return reply(
                    &mut s,
                    404,
                    "Not Found",
                    &headers,
                    fixture("not-found.json").as_bytes(),
                );
            };
            let found = published.iter().find_map(|r| {
                r.assets
                    .iter()
                    .find(|a| a.id == id)
                    .map(|a| (r.tag.clone(), a.clone()))
            });
            let Some((tag, asset)) = found else {
                return reply(
                    &mut s,
                    404,
                    "Not Found",
                    &headers,
                    fixture("not-found.json").as_bytes(),
                );
            };
            if req
                .headers
                .get("accept")
                .is_some_and(|a| a.contains("application/octet-stream"))
            {
                headers.push((
                    "Location".to_owned(),
                    format!("http://{storage}/blob/{id}?X-Amz-Signature=storage-secret"),
                ));
                return reply(&mut s, 302, "Found", &headers, b"");
            }
            reply(
                &mut s,
                200,
                "OK",
                &headers,
                asset_json(&api_url, &tag, &asset).as_bytes(),
            )
        }
    }
}

/// A request with its method and body.
struct FullRequest {
    method: String,
    path: String,
    headers: HashMap<String, String>,
    body: Vec<u8>,
}

fn read_full_request(stream: &TcpStream) -> std::io::Result<FullRequest> {
    use std::io::{BufRead, Read};
    stream.set_read_timeout(Some(std::time::Duration::from_secs(10)))?;
    let mut reader = std::io::BufReader::new(stream.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let mut words = line.split_whitespace();
    let method = words.next().unwrap_or("GET").to_owned();
    let path = words.next().unwrap_or("/").to_owned();
    let mut headers = HashMap::new();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h)? == 0 || h.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_owned());
        }
    }
    let len: usize = headers
        .get("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    reader.read_exact(&mut body)?;
    Ok(FullRequest {
        method,
        path,
        headers,
        body,
    })
}

/// What a publisher asks of the API (under `/repos/acme/hello`): the
/// reply, or `None` for a reader's request.
fn publisher_request(
    s: &mut State,
    req: &FullRequest,
    rest: &str,
    api_url: &str,
) -> Option<(u16, &'static str, String)> {
    let not_found = || Some((404, "Not Found", fixture("not-found.json")));
    match (req.method.as_str(), rest) {
        ("GET", r) if r.starts_with("/releases/tags/") => {
            let tag = &r["/releases/tags/".len()..];
            match s.releases.iter().find(|x| x.tag == tag) {
                Some(found) => Some((200, "OK", release_json(api_url, found))),
                None => not_found(),
            }
        }
        ("GET", r)
            if r.strip_prefix("/releases/")
                .is_some_and(|id| id.parse::<u64>().is_ok()) =>
        {
            let id: u64 = r["/releases/".len()..].parse().unwrap();
            match s.releases.iter().find(|x| x.id == id) {
                Some(found) => Some((200, "OK", release_json(api_url, found))),
                None => not_found(),
            }
        }
        ("POST", "/releases") => {
            let body: serde_json::Value = serde_json::from_slice(&req.body).ok()?;
            let tag = body["tag_name"].as_str()?.to_owned();
            if s.releases.iter().any(|r| r.tag == tag) {
                return Some((
                    422,
                    "Unprocessable Entity",
                    r#"{"message":"Validation Failed","errors":[{"resource":"Release","code":"already_exists","field":"tag_name"}]}"#.to_owned(),
                ));
            }
            let release = FakeRelease {
                id: s.next_id(),
                tag,
                draft: body["draft"].as_bool().unwrap_or(false),
                prerelease: body["prerelease"].as_bool().unwrap_or(false),
                assets: Vec::new(),
            };
            let json = release_json(api_url, &release);
            s.releases.push(release);
            s.generation += 1;
            Some((201, "Created", json))
        }
        ("DELETE", r) if r.starts_with("/releases/assets/") => {
            let id: u64 = r["/releases/assets/".len()..].parse().ok()?;
            let before: usize = s.releases.iter().map(|r| r.assets.len()).sum();
            for release in &mut s.releases {
                release.assets.retain(|a| a.id != id);
            }
            let after: usize = s.releases.iter().map(|r| r.assets.len()).sum();
            if before == after {
                return not_found();
            }
            s.generation += 1;
            Some((204, "No Content", String::new()))
        }
        _ => None,
    }
}

fn serve_storage(stream: TcpStream, state: &Mutex<State>) -> std::io::Result<()> {
    let req = super::read_request(&stream)?;
    let mut s = state.lock().unwrap();
    if req.headers.contains_key("authorization") {
        s.leaked_auth += 1;
        return respond(
            &stream,
            400,
            "Bad Request",
            &[],
            b"Only one auth mechanism allowed",
        );
    }
    let id = req
        .path
        .strip_prefix("/blob/")
        .and_then(|rest| rest.split('?').next())
        .and_then(|id| id.parse::<u64>().ok());
    let asset = id.and_then(|id| {
        s.releases
            .iter()
            .find_map(|r| r.assets.iter().find(|a| a.id == id).cloned())
    });
    match asset {
        Some(a) => {
            s.downloads += 1;
            drop(s);
            respond(
                &stream,
                200,
                "OK",
                &[(
                    "Content-Type".to_owned(),
                    "application/octet-stream".to_owned(),
                )],
                &a.bytes,
            )
        }
        None => respond(&stream, 404, "Not Found", &[], b"no such blob"),
    }
}
