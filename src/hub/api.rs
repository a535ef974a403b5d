//! The three Hub requests a scan makes, over HTTP(S) with ureq (the client hf-hub's
//! synchronous API is built on; hf-hub itself has no refs listing, no per-file sizes and no
//! resumable download to a file of our choosing):
//!
//! - `GET /api/models/REPO/refs`: the repository's branches and their commits;
//! - `GET /api/models/REPO/revision/REV?blobs=true`: a revision's commit and files, with each
//!   file's size and blob id (the sha256 of an LFS file, the git oid of any other), which is
//!   the name huggingface_hub gives the blob in its cache;
//! - `GET /REPO/resolve/COMMIT/FILE`: a file's bytes, following the redirect to the CDN (which
//!   gets no token), from an offset with `Range` when a download is resumed.
//!
//! Transient failures (a refused or dropped connection, a stalled read, 408, 429, 5xx) are
//! retried with exponential back-off; a download resumes where its partial file ends. Every
//! failure becomes one line naming the repository, revision or file and the HTTP status. This
//! module must not know the cache's layout beyond the file it is told to write.

use std::io::{Read, Write};
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use super::HubEnv;

/// A branch and the commit it points to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ref {
    pub name: String,
    pub commit: String,
}

/// One file of a revision, as the Hub lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteFile {
    /// The path in the repository (`model.safetensors`).
    pub name: String,
    /// The cache's name for its content (huggingface_hub's etag).
    pub blob: String,
    pub size: Option<u64>,
}

/// A request that failed for good: the status (None for a network failure) and one line.
#[derive(Debug, Clone)]
pub struct HubError {
    pub status: Option<u16>,
    pub msg: String,
}

impl std::fmt::Display for HubError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.msg)
    }
}

/// How often and how patiently a transient failure is retried.
#[derive(Debug, Clone, Copy)]
pub struct Retry {
    pub attempts: u32,
    /// The first wait; each next one doubles.
    pub backoff: Duration,
}

impl Default for Retry {
    /// Five attempts, waiting 1, 2, 4 and 8 s between them; `PLASTICITY_HUB_BACKOFF_MS`
    /// sets the first wait.
    fn default() -> Self {
        let ms = std::env::var("PLASTICITY_HUB_BACKOFF_MS").ok().and_then(|v| v.trim().parse().ok());
        Retry { attempts: 5, backoff: Duration::from_millis(ms.unwrap_or(1000)) }
    }
}

/// A connection to one Hub endpoint.
pub struct Hub {
    agent: ureq::Agent,
    pub env: HubEnv,
    retry: Retry,
}

/// Why one attempt failed.
enum Failure {
    /// Worth another attempt.
    Transient(HubError),
    Fatal(HubError),
}

/// What one attempt came to.
type Attempt<T> = Result<T, Failure>;

impl Hub {
    pub fn new(env: HubEnv, retry: Retry) -> Self {
        let config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(Duration::from_secs(20)))
            .timeout_per_read(Some(Duration::from_secs(60)))
            .user_agent(concat!("plasticity/", env!("CARGO_PKG_VERSION")))
            // a renamed repository redirects within the Hub, with the token; the CDN gets none
            .redirect_auth_headers(ureq::config::RedirectAuthHeaders::SameHost)
            .build();
        Hub { agent: config.into(), env, retry }
    }

    /// The repository's branches, in the Hub's order.
    pub fn refs(&self, repo: &str) -> Result<Vec<Ref>, HubError> {
        #[derive(Deserialize)]
        struct Branch {
            name: String,
            #[serde(rename = "targetCommit")]
            target_commit: String,
        }
        #[derive(Deserialize)]
        struct Refs {
            branches: Vec<Branch>,
        }
        let url = format!("{}/api/models/{repo}/refs", self.env.endpoint);
        let refs: Refs = self.json(&url, &format!("hf://{repo}: listing its revisions"))?;
        Ok(refs.branches.into_iter().map(|b| Ref { name: b.name, commit: b.target_commit }).collect())
    }

    /// The files of `commit` with their sizes and blob ids; entries whose name or id could not
    /// be a cache path are refused.
    pub fn files(&self, repo: &str, commit: &str) -> Result<Vec<RemoteFile>, HubError> {
        #[derive(Deserialize)]
        struct Lfs {
            sha256: String,
        }
        #[derive(Deserialize)]
        struct Sibling {
            rfilename: String,
            #[serde(rename = "blobId")]
            blob_id: Option<String>,
            size: Option<u64>,
            lfs: Option<Lfs>,
        }
        #[derive(Deserialize)]
        struct Info {
            siblings: Vec<Sibling>,
        }
        let url = format!("{}/api/models/{repo}/revision/{commit}?blobs=true", self.env.endpoint);
        let what = format!("hf://{repo}: commit {commit}");
        let info: Info = self.json(&url, &what)?;
        let files = info.siblings.into_iter().map(|s| {
            let blob = s.lfs.map(|l| l.sha256).or(s.blob_id).unwrap_or_default();
            RemoteFile { name: s.rfilename, blob, size: s.size }
        });
        // names and ids become paths in the cache: a file in a sub-folder with an odd entry is
        // left out (a scan reads top-level files), a top-level one fails the revision
        let (files, odd): (Vec<RemoteFile>, Vec<RemoteFile>) =
            files.partition(|f| super::is_hex_id(&f.blob) && super::is_plain_path(&f.name));
        if let Some(f) = odd.iter().find(|f| !f.name.contains('/')) {
            let msg = format!("{what}: unexpected file entry in the Hub's answer ({:?}, blob {:?})", f.name, f.blob);
            return Err(HubError { status: None, msg });
        }
        Ok(files)
    }

    /// Downloads `file` of `commit` into `dest`, resuming from the bytes `dest` already holds;
    /// `on_bytes` hears of every chunk written and stops the download by returning false.
    /// Checks the size against the listing's.
    pub fn download(
        &self,
        repo: &str,
        commit: &str,
        file: &RemoteFile,
        dest: &Path,
        on_bytes: &mut dyn FnMut(u64) -> bool,
    ) -> Result<(), HubError> {
        let url = format!("{}/{repo}/resolve/{commit}/{}", self.env.endpoint, encode(&file.name, true));
        let what = format!("hf://{repo}: {}", file.name);
        self.retrying(|| {
            if !on_bytes(0) {
                return Err(CopyError::Stopped.into_failure(&what, dest));
            }
            self.download_once(&url, &what, file.size, dest, on_bytes)
        })
    }

    /// `url`'s JSON body, retried while the failure is transient.
    fn json<T: serde::de::DeserializeOwned>(&self, url: &str, what: &str) -> Result<T, HubError> {
        self.retrying(|| {
            let mut response = self.get(url, None, what)?;
            let body = response.body_mut().with_config().limit(256 << 20).read_to_string();
            let text = body.map_err(|e| Failure::Transient(network(what, &e.to_string())))?;
            serde_json::from_str(&text)
                .map_err(|e| Failure::Fatal(HubError { status: None, msg: format!("{what}: unexpected answer: {e}") }))
        })
    }

    /// One attempt at a download: appends from the partial file's end when the server honours
    /// `Range` from that very byte, else starts over. A partial file longer than the listed
    /// size, or one the server cannot resume (416), is discarded.
    fn download_once(
        &self,
        url: &str,
        what: &str,
        size: Option<u64>,
        dest: &Path,
        on_bytes: &mut dyn FnMut(u64) -> bool,
    ) -> Attempt<()> {
        let mut have = std::fs::metadata(dest).map(|m| m.len()).unwrap_or(0);
        if have > 0 && size == Some(have) {
            return Ok(());
        }
        if size.is_some_and(|s| have > s) {
            let _ = std::fs::remove_file(dest);
            have = 0;
        }
        let mut response = match self.get(url, (have > 0).then_some(have), what) {
            Err(Failure::Fatal(e)) if e.status == Some(416) => {
                let _ = std::fs::remove_file(dest); // the next attempt starts over
                return Err(Failure::Transient(e));
            }
            other => other?,
        };
        let resumed = response.status().as_u16() == 206;
        if resumed && range_start(&response) != Some(have) {
            let _ = std::fs::remove_file(dest);
            return Err(Failure::Transient(network(what, "the server resumed from another byte; starting over")));
        }
        if let Some(dir) = dest.parent() {
            std::fs::create_dir_all(dir).map_err(|e| CopyError::Write(e).into_failure(what, dest))?;
        }
        let opened = std::fs::OpenOptions::new().create(true).append(resumed).write(true).truncate(!resumed).open(dest);
        let mut out = opened.map_err(|e| CopyError::Write(e).into_failure(what, dest))?;
        if resumed {
            on_bytes(have);
        }
        let mut reader = response.body_mut().as_reader();
        copy(&mut reader, &mut out, on_bytes).map_err(|e| e.into_failure(what, dest))?;
        check_size(what, dest, size)
    }

    /// A GET with the token (to the Hub, not to a redirect's host) and an optional range; a
    /// status other than 200/206 becomes the attempt's outcome.
    fn get(&self, url: &str, from: Option<u64>, what: &str) -> Attempt<ureq::http::Response<ureq::Body>> {
        let mut request = self.agent.get(url).header("Accept-Encoding", "identity");
        if let Some(token) = &self.env.token {
            request = request.header("Authorization", format!("Bearer {token}"));
        }
        if let Some(from) = from {
            request = request.header("Range", format!("bytes={from}-"));
        }
        let response = request.call().map_err(|e| Failure::Transient(network(what, &e.to_string())))?;
        match response.status().as_u16() {
            200 | 206 => Ok(response),
            status => status_attempt(what, status, &response, self.env.token.is_some()),
        }
    }

    /// Runs `attempt` until it is done, fatal, or out of attempts, doubling the wait between.
    fn retrying<T>(&self, mut attempt: impl FnMut() -> Attempt<T>) -> Result<T, HubError> {
        let (attempts, mut wait) = (self.retry.attempts.max(1), self.retry.backoff);
        let mut i = 1;
        loop {
            match attempt() {
                Ok(v) => return Ok(v),
                Err(Failure::Fatal(e)) => return Err(e),
                Err(Failure::Transient(e)) if i == attempts => {
                    return Err(HubError { status: e.status, msg: format!("{} (after {i} attempts)", e.msg) })
                }
                Err(Failure::Transient(_)) => std::thread::sleep(wait),
            }
            (i, wait) = (i + 1, wait.saturating_mul(2));
        }
    }
}

/// A failed copy: reading (the connection), writing (the disk), or stopped by the caller.
enum CopyError {
    Read(std::io::Error),
    Write(std::io::Error),
    Stopped,
}

impl CopyError {
    /// A lost connection is worth another attempt; a disk that refuses, or a stop, is not.
    fn into_failure(self, what: &str, dest: &Path) -> Failure {
        match self {
            CopyError::Read(e) => Failure::Transient(network(what, &format!("connection lost mid-file: {e}"))),
            CopyError::Write(e) => {
                Failure::Fatal(HubError { status: None, msg: format!("{}: cannot write: {e}", dest.display()) })
            }
            CopyError::Stopped => Failure::Fatal(network(what, "download stopped; the next scan resumes it")),
        }
    }
}

fn copy(
    reader: &mut impl Read,
    out: &mut std::fs::File,
    on_bytes: &mut dyn FnMut(u64) -> bool,
) -> Result<(), CopyError> {
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = reader.read(&mut buf).map_err(CopyError::Read)?;
        if n == 0 {
            return out.flush().map_err(CopyError::Write);
        }
        out.write_all(&buf[..n]).map_err(CopyError::Write)?;
        if !on_bytes(n as u64) {
            return Err(CopyError::Stopped);
        }
    }
}

/// The first byte of a 206 answer (`Content-Range: bytes FROM-TO/SIZE`).
fn range_start(response: &ureq::http::Response<ureq::Body>) -> Option<u64> {
    let value = response.headers().get("content-range")?.to_str().ok()?;
    value.strip_prefix("bytes ")?.split('-').next()?.trim().parse().ok()
}

/// A complete download has the listed size; a short one is resumed by the next attempt.
fn check_size(what: &str, dest: &Path, size: Option<u64>) -> Attempt<()> {
    let got = std::fs::metadata(dest).map(|m| m.len()).unwrap_or(0);
    match size {
        Some(want) if got < want => Err(Failure::Transient(network(what, &format!("got {got} of {want} bytes")))),
        Some(want) if got > want => {
            let _ = std::fs::remove_file(dest); // never resumed: the next scan starts over
            Err(Failure::Fatal(network(
                what,
                &format!("got {got} bytes, the Hub lists {want} (the file changed during the download?)"),
            )))
        }
        _ => Ok(()),
    }
}

/// What a status says, in the Hub's words (`X-Error-Code`) where it gives them. The Hub
/// answers 401 for a private or missing repository alike, so both are named.
fn status_message(status: u16, code: &str, has_token: bool) -> String {
    let msg = match (status, code, has_token) {
        (401 | 403, "GatedRepo", _) | (403, _, true) => {
            "the repository is gated: the token in HF_TOKEN has no access to it (accept its terms on the Hub)"
        }
        (401 | 403, _, false) => {
            "the repository is gated or private, or does not exist: set HF_TOKEN to a token with access to it"
        }
        (401, _, true) => "the token in HF_TOKEN was refused, or the repository does not exist",
        (404, "RevisionNotFound", _) => "no such revision",
        (404, "EntryNotFound", _) => "no such file in this revision",
        (404, "RepoNotFound", _) => "no such repository",
        (404, _, _) => "not found",
        (416, _, _) => "the server refused the byte range asked for",
        (429, _, _) => "too many requests",
        _ => return format!("the server answered {status}"),
    };
    msg.to_string()
}

fn network(what: &str, detail: &str) -> HubError {
    HubError { status: None, msg: format!("{what}: {detail}") }
}

/// A status other than 200/206 as an attempt's outcome: 408, 429 and 5xx are transient.
fn status_attempt<T>(
    what: &str,
    status: u16,
    response: &ureq::http::Response<ureq::Body>,
    has_token: bool,
) -> Attempt<T> {
    let code = response.headers().get("x-error-code").and_then(|v| v.to_str().ok()).unwrap_or("");
    let msg = status_message(status, code, has_token);
    let error = HubError { status: Some(status), msg: format!("{what}: HTTP {status}: {msg}") };
    Err(match status {
        408 | 429 | 500..=599 => Failure::Transient(error),
        _ => Failure::Fatal(error),
    })
}

/// Percent-encodes `text` for a URL path (RFC 3986 unreserved characters kept, and `/`
/// when `keep_slash`: a file path's folders stay folders, a revision's slash is encoded).
pub fn encode(text: &str, keep_slash: bool) -> String {
    let mut out = String::new();
    for b in text.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => out.push(b as char),
            b'/' if keep_slash => out.push('/'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::encode;

    #[test]
    fn revisions_and_file_names_are_encoded_for_the_path() {
        assert_eq!(encode("stage1-step1000-tokens4B", false), "stage1-step1000-tokens4B");
        assert_eq!(encode("refs/pr/1", false), "refs%2Fpr%2F1");
        assert_eq!(encode("sub dir/model.safetensors", true), "sub%20dir/model.safetensors");
    }
}
