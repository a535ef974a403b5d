//! The Hugging Face environment a Hub scan honours, read once: the endpoint (`HF_ENDPOINT`),
//! the token (`HF_TOKEN`, else the file `HF_TOKEN_PATH` or `$HF_HOME/token` that
//! `hf auth login` writes), the cache (`HF_HUB_CACHE`, else `$HF_HOME/hub`, else
//! `$XDG_CACHE_HOME/huggingface/hub`, else `~/.cache/huggingface/hub`) and offline mode
//! (`HF_HUB_OFFLINE`), with huggingface_hub's precedence and spelling of true. It also reads
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
            cache: var("HF_HUB_CACHE").map(PathBuf::from).unwrap_or_else(|| home.join("hub")),
            offline: var("HF_HUB_OFFLINE").is_some_and(|v| is_true(&v)),
            disk_free: var("PLASTICITY_DISK_FREE").and_then(|v| v.trim().parse().ok()),
        }
    }
}

/// `HF_HOME`, else `$XDG_CACHE_HOME/huggingface`, else `~/.cache/huggingface`.
fn hf_home(var: &impl Fn(&str) -> Option<String>) -> PathBuf {
    if let Some(home) = var("HF_HOME") {
        return PathBuf::from(home);
    }
    let cache = var("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(var("HOME").unwrap_or_else(|| ".".into())).join(".cache"));
    cache.join("huggingface")
}

/// `HF_TOKEN`, else the first line of the stored token file; blank counts as none.
fn token(var: &impl Fn(&str) -> Option<String>, home: &std::path::Path) -> Option<String> {
    let stored = || {
        let path = var("HF_TOKEN_PATH").map(PathBuf::from).unwrap_or_else(|| home.join("token"));
        std::fs::read_to_string(path).ok()
    };
    let token = var("HF_TOKEN").or_else(stored)?;
    Some(token.trim().to_string()).filter(|t| !t.is_empty())
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
    }
}
