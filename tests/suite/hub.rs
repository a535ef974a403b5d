//! `plasticity scan hf://ORG/NAME` against a Hub served from the test process
//! (`hub_server.rs`): the same report as a scan of the downloaded folders, revision
//! selection, resumed downloads, and every fault a real Hub and network produce.

use std::path::{Path, PathBuf};

use super::hub_server::{branch_from, Branch, Faults, HubServer};
use super::util::{self, fixtures, Dir};

const REPO: &str = "org/tiny-series";

/// The committed Trainer series as Pythia publishes one: a branch per step.
fn series() -> Vec<Branch> {
    [30, 60, 90, 120]
        .iter()
        .map(|s| branch_from(&fixtures().join("series").join(format!("checkpoint-{s}")), &format!("step{s}")))
        .collect()
}

fn server(faults: Faults) -> HubServer {
    HubServer::start(REPO, series(), faults)
}

/// `scan hf://org/tiny-series` against `server`, caching in `cache`, retrying fast.
fn hub_scan(server: &HubServer, cache: &Path, extra: &[&str]) -> assert_cmd::Command {
    let mut cmd = util::scan(Path::new(&format!("hf://{}", server.repo)), &fixtures().join("task.jsonl"), extra);
    cmd.env("HF_ENDPOINT", &server.endpoint)
        .env("HF_HUB_CACHE", cache)
        .env("PLASTICITY_HUB_BACKOFF_MS", "5")
        .env_remove("HF_TOKEN")
        .env_remove("HF_HUB_OFFLINE")
        .env_remove("PLASTICITY_DISK_FREE")
        .env("HF_HOME", cache.join("no-home"));
    cmd
}

fn repo_cache(cache: &Path) -> PathBuf {
    cache.join("models--org--tiny-series")
}

fn checkpoint<'a>(report: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    report["checkpoints"].as_array().unwrap().iter().find(|c| c["name"] == name).unwrap()
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// What differs between a Hub scan and a folder scan by construction: timings, the source
/// named in the settings, and the fingerprint (the commit, against sampled file contents).
fn comparable(mut v: serde_json::Value) -> serde_json::Value {
    util::without_timings(&mut v);
    v["settings"]["dir"] = serde_json::Value::Null;
    for c in v["checkpoints"].as_array_mut().unwrap() {
        c.as_object_mut().unwrap().remove("fingerprint");
    }
    v
}

#[test]
fn a_hub_scan_reports_what_a_scan_of_the_downloaded_folders_reports() {
    let (server, dir) = (server(Faults::default()), Dir::new());
    let cache = dir.path().join("hub");
    let (hub_json, folder_json) = (dir.path().join("hub.json"), dir.path().join("folder.json"));
    let out = hub_scan(&server, &cache, &["--json", hub_json.to_str().unwrap()]).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("skipping revision main: no step in its name"), "{}", stderr(&out));
    assert!(stderr(&out).contains("downloaded step30:"), "{}", stderr(&out));
    util::scan(&repo_cache(&cache), &fixtures().join("task.jsonl"), &["--json", folder_json.to_str().unwrap()])
        .assert()
        .success();
    let (hub, folder) = (util::json(&hub_json), util::json(&folder_json));
    util::assert_valid_report(&hub);
    assert_eq!(hub["settings"]["dir"], "hf://org/tiny-series");
    assert_eq!(checkpoint(&hub, "step60")["fingerprint"], server.branches()[1].commit.as_str());
    assert_eq!(comparable(hub), comparable(folder));
    // the standard layout: refs name commits, snapshot files are relative links into blobs/
    let step30 = &server.branches()[0];
    let root = repo_cache(&cache);
    assert_eq!(std::fs::read_to_string(root.join("refs/step30")).unwrap(), step30.commit);
    let link = std::fs::read_link(root.join("snapshots").join(&step30.commit).join("model.safetensors")).unwrap();
    let weights = step30.files.iter().find(|f| f.name == "model.safetensors").unwrap();
    assert_eq!(link, PathBuf::from(format!("../../blobs/{}", weights.blob)));
}

#[test]
fn only_the_selected_revisions_are_fetched() {
    // the Hub is briefly unavailable: the listing is retried
    let faults = Faults { statuses: vec![("/refs".into(), 503, 2)], ..Faults::default() };
    let (server, dir) = (server(faults), Dir::new());
    let json = dir.path().join("r.json");
    hub_scan(&server, &dir.path().join("hub"), &["--revisions", "step60,step12*", "--json", json.to_str().unwrap()])
        .assert()
        .success();
    let names: Vec<String> = util::json(&json)["checkpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap().into())
        .collect();
    assert_eq!(names, ["step60", "step120"]);
    let log = server.log();
    assert_eq!(log.iter().filter(|r| r.path.ends_with("/refs")).count(), 3, "two 503s, then the listing");
    for skipped in [&server.branches()[0], &server.branches()[2]] {
        assert!(!log.iter().any(|r| r.path.contains(&skipped.commit)), "{} was fetched", skipped.name);
        let blob = &skipped.files.iter().find(|f| f.name == "model.safetensors").unwrap().blob;
        assert!(!log.iter().any(|r| r.path.contains(blob.as_str())), "{}'s weights were fetched", skipped.name);
    }
}

#[test]
fn a_cut_download_resumes_where_it_stopped() {
    let faults = Faults { cuts: vec![("/cdn/".into(), 100_000, 1)], ..Faults::default() };
    let (server, dir) = (server(faults), Dir::new());
    let cache = dir.path().join("hub");
    // a partial file left by an earlier process is resumed, not restarted
    let step90 = server.branches()[2].files.iter().find(|f| f.name == "model.safetensors").unwrap().clone();
    std::fs::create_dir_all(repo_cache(&cache).join("blobs")).unwrap();
    std::fs::write(repo_cache(&cache).join(format!("blobs/{}.incomplete", step90.blob)), &step90.bytes[..1000])
        .unwrap();
    let json = dir.path().join("r.json");
    let out = hub_scan(&server, &cache, &["--json", json.to_str().unwrap()]).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let ranges: Vec<Option<String>> =
        server.log().into_iter().filter(|r| r.path.starts_with("/cdn/")).map(|r| r.range).collect();
    assert!(ranges.contains(&Some("bytes=100000-".into())), "the cut file is resumed: {ranges:?}");
    assert!(ranges.contains(&Some("bytes=1000-".into())), "the partial file is resumed: {ranges:?}");
    let report = util::json(&json);
    assert!(report["checkpoints"].as_array().unwrap().iter().all(|c| c["status"] == "ok"));
    assert!(!std::fs::read_dir(repo_cache(&cache).join("blobs"))
        .unwrap()
        .flatten()
        .any(|e| e.path().extension().is_some_and(|x| x == "incomplete")));
}

#[test]
fn a_gated_repository_asks_for_hf_token_and_the_cdn_never_sees_it() {
    let faults = Faults { token: Some("hf_secret".into()), ..Faults::default() };
    let (server, dir) = (server(faults), Dir::new());
    let cache = dir.path().join("hub");
    let out = hub_scan(&server, &cache, &[]).output().unwrap();
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("hf://org/tiny-series") && err.contains("HTTP 401") && err.contains("HF_TOKEN"), "{err}");
    assert_eq!(err.lines().filter(|l| l.starts_with("error:")).count(), 1, "{err}");
    let out = hub_scan(&server, &cache, &[]).env("HF_TOKEN", "hf_other").output().unwrap();
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    assert!(stderr(&out).contains("the token in HF_TOKEN has no access"), "{}", stderr(&out));
    let out = hub_scan(&server, &cache, &["--revisions", "step30"]).env("HF_TOKEN", "hf_secret").output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    // a renamed repository redirects within the Hub: the token follows
    server.faults().renamed_from = Some("org/old-name".into());
    let mut cmd =
        util::scan(Path::new("hf://org/old-name"), &fixtures().join("task.jsonl"), &["--revisions", "step60"]);
    let out = cmd
        .env("HF_ENDPOINT", &server.endpoint)
        .env("HF_HUB_CACHE", &cache)
        .env("HF_TOKEN", "hf_secret")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let log = server.log();
    assert!(log.iter().any(|r| r.path.starts_with("/cdn/")));
    assert!(log.iter().filter(|r| r.path.starts_with("/cdn/")).all(|r| r.authorization.is_none()));
}

#[test]
fn a_missing_revision_fails_that_snapshot_and_the_scan_goes_on() {
    let commit = series()[1].commit.clone();
    let faults = Faults { statuses: vec![(format!("/revision/{commit}"), 404, u32::MAX)], ..Faults::default() };
    let (server, dir) = (server(faults), Dir::new());
    let json = dir.path().join("r.json");
    let out = hub_scan(&server, &dir.path().join("hub"), &["--json", json.to_str().unwrap()]).output().unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let report = util::json(&json);
    let failed = checkpoint(&report, "step60");
    assert_eq!(failed["status"], "failed");
    let error = failed["error"].as_str().unwrap();
    assert!(error.contains("revision step60") && error.contains("HTTP 404"), "{error}");
    assert_eq!(checkpoint(&report, "step90")["status"], "ok");
    // a repository that does not exist stops the scan before any fine-tuning
    let mut cmd = util::scan(Path::new("hf://org/missing"), &fixtures().join("task.jsonl"), &[]);
    let out = cmd.env("HF_ENDPOINT", &server.endpoint).env("HF_HUB_CACHE", dir.path().join("hub")).output().unwrap();
    assert_eq!(out.status.code(), Some(4));
    assert!(stderr(&out).contains("hf://org/missing: listing its revisions: HTTP 404"), "{}", stderr(&out));
}

#[test]
fn a_connection_cut_on_every_attempt_fails_the_snapshot_and_resume_completes_it() {
    let weights = |b: &Branch| b.files.iter().find(|f| f.name == "model.safetensors").unwrap().blob.clone();
    let blob = weights(&series()[2]);
    let faults = Faults { cuts: vec![(format!("/cdn/{blob}"), 50_000, u32::MAX)], ..Faults::default() };
    let (server, dir) = (server(faults), Dir::new());
    let cache = dir.path().join("hub");
    let json = dir.path().join("r.json");
    let out = hub_scan(&server, &cache, &["--delete-downloads", "--json", json.to_str().unwrap()]).output().unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let report = util::json(&json);
    let error = checkpoint(&report, "step90")["error"].as_str().unwrap().to_string();
    assert!(
        error.contains("revision step90") && error.contains("connection lost") && error.contains("after 5 attempts"),
        "{error}"
    );
    let snapshot = repo_cache(&cache).join("snapshots").join(&server.branches()[2].commit);
    assert!(snapshot.join("config.json").is_file());
    assert!(!snapshot.join("model.safetensors").exists(), "a partial file is not a cached file");
    assert!(repo_cache(&cache).join(format!("blobs/{blob}.incomplete")).is_file());
    // the connection recovers: --resume reuses the three snapshots and downloads the fourth
    server.faults().cuts.clear();
    server.clear_log();
    let resumed = dir.path().join("resumed.json");
    let resume = ["--delete-downloads", "--resume", json.to_str().unwrap(), "--json", resumed.to_str().unwrap()];
    let out = hub_scan(&server, &cache, &resume).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stderr(&out).matches("reusing the measurement").count(), 3, "{}", stderr(&out));
    let cdn: Vec<_> = server.log().into_iter().filter(|r| r.path.starts_with("/cdn/")).collect();
    assert_eq!(cdn.len(), 1, "only step90's weights are fetched, none for the reused snapshots: {cdn:?}");
    assert!(cdn[0].range.as_deref().is_some_and(|r| r != "bytes=0-"), "{cdn:?}");
    assert_eq!(checkpoint(&util::json(&resumed), "step90")["status"], "ok");
}

#[test]
fn a_full_disk_is_refused_before_the_download_naming_both_sizes() {
    let (server, dir) = (server(Faults::default()), Dir::new());
    let json = dir.path().join("r.json");
    let out = hub_scan(&server, &dir.path().join("hub"), &["--revisions", "step30", "--json", json.to_str().unwrap()])
        .env("PLASTICITY_DISK_FREE", "100000")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let error = checkpoint(&util::json(&json), "step30")["error"].as_str().unwrap().to_string();
    assert!(error.contains("needs 665.5 kB") && error.contains("only 100.0 kB free"), "{error}");
    assert!(!server.log().iter().any(|r| r.path.starts_with("/cdn/")), "nothing was downloaded");
}

#[test]
fn offline_mode_scans_the_cache_and_names_what_is_missing() {
    let (server, dir) = (server(Faults::default()), Dir::new());
    let cache = dir.path().join("hub");
    hub_scan(&server, &cache, &[]).assert().success();
    let step90 = &server.branches()[2];
    std::fs::remove_file(repo_cache(&cache).join("snapshots").join(&step90.commit).join("model.safetensors")).unwrap();
    server.clear_log();
    let json = dir.path().join("r.json");
    let out = hub_scan(&server, &cache, &["--json", json.to_str().unwrap()])
        .env("HF_HUB_OFFLINE", "1")
        .env("HF_ENDPOINT", "http://127.0.0.1:9")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(stderr(&out).contains("not in the cache, reported as failed: step90"), "{}", stderr(&out));
    let report = util::json(&json);
    assert_eq!(checkpoint(&report, "step60")["status"], "ok");
    assert!(checkpoint(&report, "step90")["error"].as_str().unwrap().contains("HF_HUB_OFFLINE"));
    assert!(server.log().is_empty(), "offline mode makes no request");
    // an empty cache says so
    let out = hub_scan(&server, &dir.path().join("empty"), &[]).env("HF_HUB_OFFLINE", "1").output().unwrap();
    assert_eq!(out.status.code(), Some(4));
    assert!(stderr(&out).contains("HF_HUB_OFFLINE is set and the cache holds no revision"), "{}", stderr(&out));
}

#[test]
fn delete_downloads_keeps_only_the_small_files() {
    let (server, dir) = (server(Faults::default()), Dir::new());
    let cache = dir.path().join("hub");
    hub_scan(&server, &cache, &["--delete-downloads", "--revisions", "step30,step60"]).assert().success();
    for b in &server.branches()[..2] {
        let snapshot = repo_cache(&cache).join("snapshots").join(&b.commit);
        assert!(snapshot.join("config.json").is_file() && !snapshot.join("model.safetensors").exists());
        let blob = &b.files.iter().find(|f| f.name == "model.safetensors").unwrap().blob;
        assert!(!repo_cache(&cache).join("blobs").join(blob).exists());
    }
    let out = util::scan(&fixtures().join("series"), &fixtures().join("task.jsonl"), &["--delete-downloads"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("--delete-downloads: is for hf:// scans"), "{}", stderr(&out));
}

#[test]
fn probe_asks_for_the_cache_folder_of_a_hub_repository() {
    let mut cmd = assert_cmd::Command::cargo_bin("plasticity").unwrap();
    let out =
        cmd.args(["probe", "hf://org/tiny-series", "--task"]).arg(fixtures().join("task.jsonl")).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("probe reads a folder"), "{}", stderr(&out));
}

/// A scan of hf://org/tiny-series against `server` in a child process, with `extra` flags.
fn spawn_scan(server: &HubServer, cache: &Path, extra: &[&str]) -> std::process::Child {
    std::process::Command::new(assert_cmd::cargo::cargo_bin("plasticity"))
        .args(["scan", "hf://org/tiny-series", "--task"])
        .arg(fixtures().join("task.jsonl"))
        .args(["--steps", "4", "--seq-len", "32", "--eval-blocks", "4", "--batch-size", "4"])
        .args(extra)
        .env("HF_ENDPOINT", &server.endpoint)
        .env("HF_HUB_CACHE", cache)
        .env_remove("HF_TOKEN")
        .env_remove("HF_HUB_OFFLINE")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

/// Waits (at most a minute) until the server's log satisfies `reached`.
fn wait_for(server: &HubServer, reached: impl Fn(&[super::hub_server::Logged]) -> bool) {
    let t0 = std::time::Instant::now();
    while !reached(&server.log()) {
        assert!(t0.elapsed().as_secs() < 60, "the scan never reached the awaited request");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// Starts a scan, sends SIGINT once the log reaches `started`, and returns the output and the
/// seconds from the signal to the exit.
fn interrupted_scan(
    server: &HubServer,
    cache: &Path,
    json: &Path,
    started: impl Fn(&[super::hub_server::Logged]) -> bool,
) -> (std::process::Output, f64) {
    let child = spawn_scan(server, cache, &["--json", json.to_str().unwrap()]);
    wait_for(server, started);
    std::thread::sleep(std::time::Duration::from_millis(300));
    std::process::Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap();
    let signalled = std::time::Instant::now();
    let out = child.wait_with_output().unwrap();
    (out, signalled.elapsed().as_secs_f64())
}

#[test]
fn ctrl_c_during_a_download_stops_it_and_keeps_the_partial_file() {
    let faults = Faults { stalls: vec![("/cdn/".into(), 200)], ..Faults::default() };
    let (server, dir) = (server(faults), Dir::new());
    let cache = dir.path().join("hub");
    let json = dir.path().join("r.json");
    let (out, waited) = interrupted_scan(&server, &cache, &json, |log| log.iter().any(|r| r.path.starts_with("/cdn/")));
    assert_eq!(out.status.code(), Some(130), "{}", stderr(&out));
    assert!(waited < 5.0, "the scan waited for the slow download");
    assert_eq!(util::json(&json)["status"], "interrupted");
    let partial = std::fs::read_dir(repo_cache(&cache).join("blobs"))
        .unwrap()
        .flatten()
        .any(|e| e.path().extension().is_some_and(|x| x == "incomplete") && e.metadata().unwrap().len() > 0);
    assert!(partial, "the partial download stays for the next scan to resume");
}

#[test]
fn ctrl_c_while_the_small_files_come_in_interrupts_the_scan() {
    let faults = Faults { stalls: vec![("/resolve/".into(), 300)], ..Faults::default() };
    let (server, dir) = (server(faults), Dir::new());
    let json = dir.path().join("r.json");
    let (out, waited) = interrupted_scan(&server, &dir.path().join("hub"), &json, |log| {
        log.iter().any(|r| r.path.contains("/resolve/"))
    });
    assert_eq!(out.status.code(), Some(130), "{}", stderr(&out));
    assert!(waited < 5.0, "the scan went on fetching after Ctrl-C");
    let revisions = server.log().iter().filter(|r| r.path.contains("/revision/")).count();
    assert!(revisions < 4, "revisions were listed after Ctrl-C ({revisions})");
}

/// Two processes sharing a cache never write one blob at once: a download waits on
/// huggingface_hub's lock (`.locks/models--ORG--NAME/ETAG.lock`), and takes the blob that the
/// lock's holder finished instead of fetching it again.
#[test]
fn a_blob_another_process_is_downloading_is_waited_for_not_fetched_twice() {
    let (server, dir) = (server(Faults::default()), Dir::new());
    let cache = dir.path().join("hub");
    let weights = server.branches()[0].files.iter().find(|f| f.name == "model.safetensors").unwrap().clone();
    let locks = cache.join(".locks").join("models--org--tiny-series");
    std::fs::create_dir_all(&locks).unwrap();
    let held = std::fs::File::create(locks.join(format!("{}.lock", weights.blob))).unwrap();
    // SAFETY: flock on a descriptor the File owns; closing it releases the lock.
    assert_eq!(unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&held), libc::LOCK_EX) }, 0);
    let child = spawn_scan(&server, &cache, &["--revisions", "step30"]);
    wait_for(&server, |log| log.iter().any(|r| r.path.contains("/revision/")));
    std::thread::sleep(std::time::Duration::from_millis(1000));
    // the lock's holder finishes its download, then lets go
    let blobs = cache.join("models--org--tiny-series").join("blobs");
    std::fs::write(blobs.join(&weights.blob), &weights.bytes[..]).unwrap();
    drop(held);
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("waiting for another process's download of model.safetensors"), "{}", stderr(&out));
    assert!(!server.log().iter().any(|r| r.path.contains(weights.blob.as_str())), "the blob was fetched twice");
}

/// Every way the runner opens snapshots waits for the fetcher: two workers (--devices), a
/// race, a sweep. Each fetches every snapshot's weights once and fails none.
#[test]
fn workers_races_and_sweeps_stream_each_snapshot_once() {
    for flags in [&["--devices", "cpu,cpu"][..], &["--strategy", "race"], &["--lrs", "1e-3,3e-3"]] {
        let (server, dir) = (server(Faults::default()), Dir::new());
        let json = dir.path().join("r.json");
        let out = hub_scan(&server, &dir.path().join("hub"), &[flags, &["--json", json.to_str().unwrap()]].concat())
            .output()
            .unwrap();
        assert!(out.status.success(), "{flags:?}: {}", stderr(&out));
        let report = util::json(&json);
        assert!(report["checkpoints"].as_array().unwrap().iter().all(|c| c["status"] == "ok"), "{flags:?}");
        let cdn = server.log().iter().filter(|r| r.path.starts_with("/cdn/")).count();
        assert_eq!(cdn, 4, "{flags:?}: each snapshot's weights are fetched once");
    }
}
