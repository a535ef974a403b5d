//! The shipped binary and scripts: a CPU build must need no CUDA library to start, and the
//! cluster examples must at least parse.

use std::path::Path;
use std::process::Command;

/// `ldd` lists every shared library the dynamic loader would map for the binary.
#[test]
fn the_cpu_binary_links_no_cuda_library() {
    let bin = assert_cmd::cargo::cargo_bin("plasticity");
    let out = Command::new("ldd").arg(&bin).output().expect("ldd (libc-bin) is installed");
    assert!(out.status.success(), "ldd failed: {}", String::from_utf8_lossy(&out.stderr));
    let libs = String::from_utf8_lossy(&out.stdout);
    assert!(libs.contains("libc.so"), "unexpected ldd output: {libs}");
    for cuda in ["libcuda", "libcudart", "libcublas", "libcurand", "libnvrtc", "libcudnn", "libnccl"] {
        assert!(!libs.contains(cuda), "{} links {cuda}:\n{libs}", bin.display());
    }
}

#[test]
fn the_cluster_examples_parse_and_agree_on_the_part_count() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/cluster");
    let status = Command::new("bash").arg("-n").arg(dir.join("slurm_scan.sh")).status().unwrap();
    assert!(status.success(), "slurm_scan.sh does not parse");
    let job = std::fs::read_to_string(dir.join("k8s_scan.yaml")).unwrap();
    let completions = job.lines().find_map(|l| l.trim().strip_prefix("completions:")).unwrap().trim();
    assert!(
        job.contains(&format!("--partition auto/{completions}")),
        "k8s_scan.yaml: --partition auto/N must match completions: {completions}"
    );
}

/// The shipped binary must parse floats exactly (merge and --resume rebuild curves from JSON).
/// The tests' own dependencies switch serde_json's `float_roundtrip` on, which would hide its
/// absence from every other test: ask cargo for the normal (non-dev) dependency graph.
#[test]
fn the_binary_reads_json_floats_exactly() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args(["tree", "--offline", "--locked", "-e", "normal,features", "-i", "serde_json"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    let tree = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "cargo tree failed: {}", String::from_utf8_lossy(&out.stderr));
    assert!(
        tree.contains("serde_json feature \"float_roundtrip\""),
        "serde_json's float_roundtrip is off in the binary's build:\n{tree}"
    );
}
