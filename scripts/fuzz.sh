#!/usr/bin/env bash
# Runs the cargo-fuzz targets in fuzz/ for SECONDS each (default 600), one after another,
# starting from fuzz/corpus/TARGET (committed, grown by each run) and the seeds in
# fuzz/seeds/TARGET. A crash leaves its input in fuzz/artifacts/TARGET/ and stops the script;
# turn each into a regression test (tests/suite/errors.rs) before fixing it.
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]     e.g. scripts/fuzz.sh 60 config task_file
#
# Needs the nightly toolchain and cargo-fuzz (`cargo install cargo-fuzz --locked`); CI does not
# run it. Inputs are capped at 64 KiB (task files at 2 KiB) and 2 GiB of memory: a larger
# allocation is a finding, and so is an arithmetic overflow (built with debug assertions).
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
secs=${1:-600}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(step_name config safetensors_header shard_index task_file)
command -v cargo-fuzz >/dev/null || { echo "cargo-fuzz is not installed: cargo install cargo-fuzz --locked" >&2; exit 2; }
for t in "${targets[@]}"; do
  mkdir -p "corpus/$t" "seeds/$t"
  echo "== $t: ${secs}s"
  # tokenizing is the slow part of a task file: shorter inputs keep the target at hundreds of runs a second
  max_len=65536
  [ "$t" = task_file ] && max_len=2048
  cargo +nightly fuzz run --debug-assertions "$t" "corpus/$t" "seeds/$t" -- \
    -max_total_time="$secs" -rss_limit_mb=2048 -malloc_limit_mb=2048 -max_len="$max_len" -timeout=10 -print_final_stats=1 2>&1 \
    | grep -E '^(#[0-9]+ *DONE|stat::|==|SUMMARY|.*(panicked|ERROR|crash|deadly))' || true
  if compgen -G "artifacts/$t/*" >/dev/null; then
    echo "$t: findings in fuzz/artifacts/$t/" >&2
    exit 1
  fi
  # keep the corpus small enough to commit: only inputs that add coverage
  cargo +nightly fuzz cmin --debug-assertions "$t" "corpus/$t" >/dev/null 2>&1 || true
done
