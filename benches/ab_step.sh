#!/usr/bin/env bash
# Two builds of examples/step_timing, run alternately on one checkpoint: a before/after figure
# for an engine change on a host whose speed drifts between runs. Each round times STEPS steps
# (after 3 warm-up ones) with the first binary, then with the second; the report gives both
# medians and the median of the per-round ratios (second / first). Reports figures; asserts
# nothing.
#
#   benches/ab_step.sh BEFORE AFTER DIR [THREADS] [ROUNDS] [STEPS]   (defaults: 2, 14, 20)
#
# BEFORE and AFTER are step_timing binaries, for example one built from an earlier commit in a
# git worktree with its own CARGO_TARGET_DIR; DIR a checkpoint from `step_timing write DIR ARCH
# SHAPE`.
set -euo pipefail
before=$1
after=$2
dir=$3
threads=${4:-2}
rounds=${5:-14}
steps=${6:-20}
tps() { RAYON_NUM_THREADS=$threads "$1" time "$dir" "$steps" 3 2>/dev/null; }
for _ in $(seq "$rounds"); do
  echo "before $(tps "$before")"
  echo "after $(tps "$after")"
done | python3 -c '
import json, statistics, sys
runs = {"before": [], "after": []}
for line in sys.stdin:
    which, row = line.split(" ", 1)
    runs[which].append(json.loads(row)["tokens_per_s"])
before, after = runs["before"], runs["after"]
ratios = [a / b for b, a in zip(before, after)]
print(f"before: median {statistics.median(before):.0f} tok/s")
print(f"after:  median {statistics.median(after):.0f} tok/s")
print(f"after / before, per round: median {statistics.median(ratios):.3f}, range {min(ratios):.3f}-{max(ratios):.3f}")'
