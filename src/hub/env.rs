//! The Hugging Face environment a Hub scan honours, read once: the endpoint (`HF_ENDPOINT`),
//! the token (`HF_TOKEN` or the older `HUGGING_FACE_HUB_TOKEN`, else the file `HF_TOKEN_PATH`
//! or `$HF_HOME/token` that `hf auth login` writes), the cache (`HF_HUB_CACHE` or the older
//! `HUGGINGFACE_HUB_CACHE`, else `$HF_HOME/hub`, else `$XDG_CACHE_HOME/huggingface/hub`, else
//! `~/.cache/huggingface/hub`; a leading `~` is the home folder) and offline mode
//! (`HF_HUB_OFFLINE`), with huggingface_hub's precedence, spelling of true and token cleaning. It also reads
//! the free-space override `PLASTICITY_DISK_FREE` (bytes). This module must not make requests.

use std::path::PathBuf;

/// Where the Hub is, who asks, and where downloads go.
#[derive(Debug, Clone)]
pub struct HubEnv {
    /// Without a trailing slash, e.g. `https://huggingface.co`.
    pub endpoint: String,
    pub token: Option<String>,
    /// The hub cache root, holding `models--ORG--NAME/` folders.
    pub cache: PathBuf,
    pub offline: bool,
    /// Free bytes to assume on the cache's disk instead of asking the file system.
    pub disk_free: Option<u64>,
}

impl HubEnv {
    /// The environment of this process.
    pub fn from_process() -> Self {
        HubEnv::from_vars(|k| std::env::var(k).ok().filter(|v| !v.is_empty()))
    }

    /// The environment as `var` reports it (tests pass a map).
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Self {
        let home = hf_home(&var);
        let endpoint = var("HF_ENDPOINT").unwrap_or_else(|| "https://huggingface.co".into());
        HubEnv {
            endpoint: endpoint.trim_end_matches('/').to_string(),
            token: token(&var, &home),
            cache: var("HF_HUB_CACHE")
                .or_else(|| var("HUGGINGFACE_HUB_CACHE"))
                .map(|p| expand_home(&p, &var))
                .unwrap_or_else(|| home.join("hub")),
            offline: var("HF_HUB_OFFLINE").is_some_and(|v| is_true(&v)),
            disk_free: var("PLASTICITY_DISK_FREE").and_then(|v| v.trim().parse().ok()),
        }
    }
}

/// `HF_HOME`, else `$XDG_CACHE_HOME/huggingface`, else `~/.cache/huggingface`.
fn hf_home(var: &impl Fn(&str) -> Option<String>) -> PathBuf {
    if let Some(home) = var("HF_HOME") {
        return expand_home(&home, var);
    }
    let cache = var("XDG_CACHE_HOME")
        .map(|p| expand_home(&p, var))
        .unwrap_or_else(|| PathBuf::from(var("HOME").unwrap_or_else(|| ".".into())).join(".cache"));
    cache.join("huggingface")
}

/// `~` or `~/...` with the home folder in place of the `~` (Python's `expanduser`).
fn expand_home(path: &str, var: &impl Fn(&str) -> Option<String>) -> PathBuf {
    match (path.strip_prefix('~'), var("HOME")) {
        (Some(rest), Some(home)) if rest.is_empty() || rest.starts_with('/') => PathBuf::from(format!("{home}{rest}")),
        _ => PathBuf::from(path),
    }
}

/// `HF_TOKEN` (or `HUGGING_FACE_HUB_TOKEN`), else the stored token file, cleaned as
/// huggingface_hub cleans it (line breaks removed, spaces trimmed); blank counts as none.
fn token(var: &impl Fn(&str) -> Option<String>, home: &std::path::Path) -> Option<String> {
    let stored = || {
        let path = var("HF_TOKEN_PATH").map(|p| expand_home(&p, var)).unwrap_or_else(|| home.join("token"));
        std::fs::read_to_string(path).ok()
    };
    let token = var("HF_TOKEN").or_else(|| var("HUGGING_FACE_HUB_TOKEN")).or_else(stored)?;
    Some(token.replace(['\r', '\n'], "").trim().to_string()).filter(|t| !t.is_empty())
}

/// huggingface_hub's `_is_true`: 1, ON, YES, TRUE in any case.
fn is_true(value: &str) -> bool {
    ["1", "on", "yes", "true"].contains(&value.trim().to_ascii_lowercase().as_str())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> HubEnv {
        let map: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        HubEnv::from_vars(|k| map.get(k).cloned())
    }

    #[test]
    fn defaults_follow_huggingface_hub() {
        let e = env(&[("HOME", "/home/u")]);
        assert_eq!(e.endpoint, "https://huggingface.co");
        assert_eq!(e.cache, PathBuf::from("/home/u/.cache/huggingface/hub"));
        assert!(!e.offline);
        assert_eq!(env(&[("HOME", "/h"), ("XDG_CACHE_HOME", "/x")]).cache, PathBuf::from("/x/huggingface/hub"));
    }

    #[test]
    fn hub_cache_wins_over_hf_home_and_endpoints_lose_their_slash() {
        let e = env(&[("HF_HOME", "/hf"), ("HF_HUB_CACHE", "/c"), ("HF_ENDPOINT", "http://127.0.0.1:9/")]);
        assert_eq!(e.cache, PathBuf::from("/c"));
        assert_eq!(e.endpoint, "http://127.0.0.1:9");
        assert_eq!(env(&[("HF_HOME", "/hf")]).cache, PathBuf::from("/hf/hub"));
    }

    #[test]
    fn offline_takes_huggingface_hubs_spellings_of_true() {
        for yes in ["1", "ON", "yes", "True"] {
            assert!(env(&[("HF_HUB_OFFLINE", yes)]).offline, "{yes}");
        }
        for no in ["0", "off", "no", "false"] {
            assert!(!env(&[("HF_HUB_OFFLINE", no)]).offline, "{no}");
        }
    }

    #[test]
    fn the_token_comes_from_the_variable_or_the_stored_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("token"), "hf_stored\n").unwrap();
        let home = dir.path().to_str().unwrap();
        assert_eq!(env(&[("HF_HOME", home)]).token.as_deref(), Some("hf_stored"));
        assert_eq!(env(&[("HF_HOME", home), ("HF_TOKEN", "hf_var")]).token.as_deref(), Some("hf_var"));
        assert_eq!(env(&[("HF_HOME", "/nonexistent")]).token, None);
        std::fs::write(dir.path().join("token"), "hf_a\r\nb\n").unwrap();
        assert_eq!(env(&[("HF_HOME", home)]).token.as_deref(), Some("hf_ab"));
        assert_eq!(env(&[("HUGGING_FACE_HUB_TOKEN", "hf_old")]).token.as_deref(), Some("hf_old"));
    }

    #[test]
    fn older_names_and_a_leading_tilde_are_read() {
        let e = env(&[("HOME", "/home/u"), ("HUGGINGFACE_HUB_CACHE", "~/hub")]);
        assert_eq!(e.cache, PathBuf::from("/home/u/hub"));
        assert_eq!(env(&[("HOME", "/home/u"), ("HF_HOME", "~/hf")]).cache, PathBuf::from("/home/u/hf/hub"));
        assert_eq!(env(&[("HOME", "/h"), ("HF_HUB_CACHE", "~x/c")]).cache, PathBuf::from("~x/c"));
    }
}
