//! A Hugging Face Hub in the test process: a real HTTP/1.1 server on a loopback port that
//! answers the requests `plasticity scan hf://...` makes (refs listing, revision info with
//! file sizes, `resolve/REV/FILE` with the Hub's headers and its redirect of LFS files to a
//! CDN, `Range`), serving a repository made from a fixture series. Faults are injected per
//! server: a token the repository requires, statuses returned for paths, connections cut
//! mid-file. Every request is logged for the tests to inspect.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::{Arc, Mutex};

/// One file of a branch.
#[derive(Clone)]
pub struct File {
    pub name: String,
    pub bytes: Arc<Vec<u8>>,
    pub blob: String,
    pub lfs: bool,
}

/// A branch: its name, commit and files.
#[derive(Clone)]
pub struct Branch {
    pub name: String,
    pub commit: String,
    pub files: Vec<File>,
}

/// A request as the server saw it.
#[derive(Debug, Clone)]
pub struct Logged {
    pub path: String,
    pub range: Option<String>,
    pub authorization: Option<String>,
}

/// What the server does wrong, on purpose.
#[derive(Default)]
pub struct Faults {
    /// The repository is gated: requests without `Bearer TOKEN` get 401.
    pub token: Option<String>,
    /// (path fragment, status, how many times; u32::MAX for always).
    pub statuses: Vec<(String, u16, u32)>,
    /// (path fragment, bytes sent before the connection is cut, how many times).
    pub cuts: Vec<(String, usize, u32)>,
    /// (path fragment, milliseconds to wait before each 16 kB of the body): a slow link.
    pub stalls: Vec<(String, u64)>,
    /// An old name of the repository: its paths redirect (307) to the current name.
    pub renamed_from: Option<String>,
}

pub struct HubServer {
    pub endpoint: String,
    pub repo: String,
    state: Arc<State>,
}

struct State {
    repo: String,
    branches: Vec<Branch>,
    faults: Mutex<Faults>,
    log: Mutex<Vec<Logged>>,
    endpoint: Mutex<String>,
}

/// The blob id the Hub would give `bytes` (a sha256 or git oid there; any stable hex here).
fn blob_id(name: &str, bytes: &[u8]) -> String {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    bytes.hash(&mut h);
    let lfs = name.ends_with(".safetensors");
    let part = format!("{:016x}", h.finish());
    if lfs {
        part.repeat(4)
    } else {
        part.repeat(3)[..40].to_string()
    }
}

/// A branch named `name` holding the files of the fixture folder `dir`.
pub fn branch_from(dir: &Path, name: &str) -> Branch {
    let mut files: Vec<File> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .filter(|e| e.path().is_file())
        .map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let bytes = std::fs::read(e.path()).unwrap();
            File { blob: blob_id(&name, &bytes), lfs: name.ends_with(".safetensors"), name, bytes: Arc::new(bytes) }
        })
        .collect();
    files.sort_by(|a, b| a.name.cmp(&b.name));
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (name, files.iter().map(|f| f.blob.clone()).collect::<Vec<_>>()).hash(&mut h);
    Branch { name: name.into(), commit: format!("{:016x}", h.finish()).repeat(3)[..40].to_string(), files }
}

impl HubServer {
    /// Serves `branches` as the model repository `repo` until the test ends.
    pub fn start(repo: &str, branches: Vec<Branch>, faults: Faults) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let state = Arc::new(State {
            repo: repo.into(),
            branches,
            faults: Mutex::new(faults),
            log: Mutex::default(),
            endpoint: Mutex::new(endpoint.clone()),
        });
        let serving = Arc::clone(&state);
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let state = Arc::clone(&serving);
                std::thread::spawn(move || state.serve(stream));
            }
        });
        HubServer { endpoint, repo: repo.into(), state }
    }

    pub fn log(&self) -> Vec<Logged> {
        self.state.log.lock().unwrap().clone()
    }

    pub fn clear_log(&self) {
        self.state.log.lock().unwrap().clear();
    }

    pub fn faults(&self) -> std::sync::MutexGuard<'_, Faults> {
        self.state.faults.lock().unwrap()
    }

    pub fn branches(&self) -> &[Branch] {
        &self.state.branches
    }
}

/// A response about to be written.
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Arc<Vec<u8>>,
    range: (usize, usize),
    /// Cut the connection after this many body bytes.
    cut: Option<usize>,
    /// Wait this long before each 16 kB of the body.
    stall: Option<std::time::Duration>,
}

impl Reply {
    fn new(status: u16, body: Vec<u8>) -> Self {
        let n = body.len();
        Reply { status, headers: Vec::new(), body: Arc::new(body), range: (0, n), cut: None, stall: None }
    }

    fn json(v: serde_json::Value) -> Self {
        Reply::new(200, v.to_string().into_bytes()).header("Content-Type", "application/json")
    }

    fn error(status: u16, code: &str) -> Self {
        Reply::new(status, format!("{{\"error\":\"{code}\"}}").into_bytes()).header("X-Error-Code", code)
    }

    fn header(mut self, k: &str, v: impl Into<String>) -> Self {
        self.headers.push((k.into(), v.into()));
        self
    }
}

impl State {
    fn serve(&self, mut stream: TcpStream) {
        let Some((path, headers)) = read_request(&mut stream) else { return };
        let get = |k: &str| headers.get(k).cloned();
        self.log.lock().unwrap().push(Logged {
            path: path.clone(),
            range: get("range"),
            authorization: get("authorization"),
        });
        let reply = self.route(&path, get("authorization"), get("range"));
        write_reply(&mut stream, reply);
    }

    fn route(&self, path: &str, auth: Option<String>, range: Option<String>) -> Reply {
        if let Some(r) = self.injected(path) {
            return r;
        }
        let old = self.faults.lock().unwrap().renamed_from.clone();
        if let Some(old) = old.filter(|o| path.contains(&format!("/{o}/"))) {
            return Reply::new(307, Vec::new()).header("Location", path.replace(&old, &self.repo));
        }
        let gated = self.faults.lock().unwrap().token.clone();
        if let Some(token) = gated {
            let cdn = path.starts_with("/cdn/");
            if !cdn && auth.as_deref() != Some(&format!("Bearer {token}")) {
                return Reply::error(401, "GatedRepo");
            }
        }
        let api = format!("/api/models/{}/", self.repo);
        let resolve = format!("/{}/resolve/", self.repo);
        let reply = if let Some(rest) = path.strip_prefix(&api) {
            self.api(rest)
        } else if let Some(rest) = path.strip_prefix(&resolve) {
            self.resolve(rest)
        } else if let Some(blob) = path.strip_prefix("/cdn/") {
            self.cdn(blob, range)
        } else {
            Reply::error(404, "RepoNotFound")
        };
        self.maybe_cut(path, reply)
    }

    /// A status injected for `path`, counted down.
    fn injected(&self, path: &str) -> Option<Reply> {
        let mut faults = self.faults.lock().unwrap();
        let hit = faults.statuses.iter_mut().find(|(frag, _, n)| path.contains(frag.as_str()) && *n > 0)?;
        hit.2 = hit.2.saturating_sub(if hit.2 == u32::MAX { 0 } else { 1 });
        Some(Reply::error(hit.1, if hit.1 == 404 { "EntryNotFound" } else { "Injected" }))
    }

    fn maybe_cut(&self, path: &str, mut reply: Reply) -> Reply {
        let mut faults = self.faults.lock().unwrap();
        if let Some(hit) = faults.cuts.iter_mut().find(|(frag, _, n)| path.contains(frag.as_str()) && *n > 0) {
            hit.2 = hit.2.saturating_sub(if hit.2 == u32::MAX { 0 } else { 1 });
            reply.cut = Some(hit.1);
        }
        if let Some(stall) = faults.stalls.iter().find(|(frag, _)| path.contains(frag.as_str())) {
            reply.stall = Some(std::time::Duration::from_millis(stall.1));
        }
        reply
    }

    fn branch(&self, rev: &str) -> Option<&Branch> {
        self.branches.iter().find(|b| b.name == rev || b.commit == rev)
    }

    fn api(&self, rest: &str) -> Reply {
        if rest == "refs" {
            let mut branches: Vec<serde_json::Value> = self
                .branches
                .iter()
                .map(|b| serde_json::json!({"name": b.name, "ref": format!("refs/heads/{}", b.name), "targetCommit": b.commit}))
                .collect();
            let main = self.branches.last().map(|b| b.commit.clone()).unwrap_or_default();
            branches.push(serde_json::json!({"name": "main", "ref": "refs/heads/main", "targetCommit": main}));
            return Reply::json(serde_json::json!({"branches": branches, "tags": [], "converts": []}));
        }
        let Some(rev) = rest.strip_prefix("revision/") else { return Reply::error(404, "RepoNotFound") };
        let rev = rev.split('?').next().unwrap_or_default();
        let Some(b) = self.branch(rev) else { return Reply::error(404, "RevisionNotFound") };
        let siblings: Vec<serde_json::Value> = b.files.iter().map(|f| {
            let mut s = serde_json::json!({"rfilename": f.name, "size": f.bytes.len(), "blobId": format!("{:x}", f.bytes.len())});
            if f.lfs {
                s["lfs"] = serde_json::json!({"sha256": f.blob, "size": f.bytes.len(), "pointerSize": 134});
            } else {
                s["blobId"] = serde_json::json!(f.blob);
            }
            s
        }).collect();
        Reply::json(serde_json::json!({"id": self.repo, "sha": b.commit, "siblings": siblings}))
    }

    /// Small files are served here; LFS files redirect to the CDN, as the Hub does.
    fn resolve(&self, rest: &str) -> Reply {
        let Some((rev, name)) = rest.split_once('/') else { return Reply::error(404, "EntryNotFound") };
        let Some(b) = self.branch(rev) else { return Reply::error(404, "RevisionNotFound") };
        let Some(f) = b.files.iter().find(|f| f.name == name) else { return Reply::error(404, "EntryNotFound") };
        let common = |r: Reply| r.header("X-Repo-Commit", b.commit.clone());
        if f.lfs {
            // the CDN is another host, as on the Hub: same server, named `localhost`
            let cdn = self.endpoint.lock().unwrap().replace("127.0.0.1", "localhost");
            let location = format!("{cdn}/cdn/{}", f.blob);
            let r = Reply::new(302, Vec::new())
                .header("Location", location)
                .header("X-Linked-Etag", format!("\"{}\"", f.blob));
            return common(r.header("X-Linked-Size", f.bytes.len().to_string()));
        }
        let mut r = Reply::new(200, Vec::new()).header("ETag", format!("\"{}\"", f.blob));
        r.body = Arc::clone(&f.bytes);
        r.range = (0, f.bytes.len());
        common(r)
    }

    /// The CDN: bytes of a blob, honouring `Range: bytes=N-`.
    fn cdn(&self, blob: &str, range: Option<String>) -> Reply {
        let found = self.branches.iter().flat_map(|b| &b.files).find(|f| f.blob == blob);
        let Some(f) = found else { return Reply::error(404, "EntryNotFound") };
        let n = f.bytes.len();
        let from = range.and_then(|r| r.strip_prefix("bytes=")?.strip_suffix('-')?.parse::<usize>().ok());
        let mut r = Reply::new(200, Vec::new()).header("Accept-Ranges", "bytes");
        r.body = Arc::clone(&f.bytes);
        match from {
            Some(from) if from >= n => Reply::error(416, "RangeNotSatisfiable"),
            Some(from) => {
                r.status = 206;
                r.range = (from, n);
                r.header("Content-Range", format!("bytes {from}-{}/{n}", n - 1))
            }
            None => {
                r.range = (0, n);
                r
            }
        }
    }
}

/// The request line's path and the headers (lower-cased names); the body is not read (GETs).
fn read_request(stream: &mut TcpStream) -> Option<(String, HashMap<String, String>)> {
    let mut reader = BufReader::new(stream.try_clone().ok()?);
    let mut line = String::new();
    reader.read_line(&mut line).ok()?;
    let path = line.split_whitespace().nth(1)?.to_string();
    let mut headers = HashMap::new();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).ok()? == 0 || h.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    Some((path, headers))
}

fn write_reply(stream: &mut TcpStream, r: Reply) {
    let (from, to) = r.range;
    let body = if r.body.is_empty() { &r.body[..] } else { &r.body[from..to] };
    let mut head = format!("HTTP/1.1 {} X\r\nContent-Length: {}\r\nConnection: close\r\n", r.status, body.len());
    for (k, v) in &r.headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    let sent = r.cut.map_or(body.len(), |c| c.min(body.len()));
    if stream.write_all(head.as_bytes()).is_err() {
        return;
    }
    for chunk in body[..sent].chunks(16 << 10) {
        if let Some(wait) = r.stall {
            std::thread::sleep(wait);
        }
        if stream.write_all(chunk).is_err() {
            return;
        }
    }
    let _ = stream.flush();
    let _ = stream.shutdown(std::net::Shutdown::Both);
}
