#!/usr/bin/env bash
# Side by side: one LoRA training step (forward, backward, clipping, AdamW) in plasticity and in
# PyTorch + transformers + PEFT, on the same random-weight checkpoint, the same batch and the
# same thread count, for each architecture at the Pythia-14M and Pythia-70M shapes.
# Reports figures; asserts nothing.
#
#   benches/compare_peft.sh [THREADS] [STEPS] [ROUNDS]   (defaults: all cores, 5 timed steps, 3 rounds)
#
# Each round runs plasticity then PyTorch+PEFT, so both see the same machine conditions; the
# table gives each side's median tokens/s over the rounds (a shared machine drifts by tens of
# percent between runs a minute apart).
#
# Creates .venv-bench (ignored by git) with the pinned PyTorch, transformers and PEFT of
# benches/requirements-bench.txt from PyPI on first use, and reinstalls when that file changes.
set -euo pipefail
cd "$(dirname "$0")/.."
threads=${1:-$(nproc)}
steps=${2:-5}
rounds=${3:-3}
warmup=2
venv=.venv-bench
requirements=benches/requirements-bench.txt
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
if ! cmp -s "$requirements" "$venv/requirements-bench.txt"; then
  "$venv/bin/pip" install -q -r "$requirements"
  cp "$requirements" "$venv/requirements-bench.txt"
fi
cargo build -q --release --example step_timing
bin=${CARGO_TARGET_DIR:-target}/release/examples/step_timing
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
echo "machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $threads threads; batch 8 x 128, r = 8, f32; median of $rounds rounds"
printf '%-9s %-5s %14s %14s %7s\n' arch shape plasticity pytorch+peft ratio
for shape in 14m 70m; do
  for arch in llama gpt_neox gpt2; do
    dir="$work/$arch-$shape"
    "$bin" write "$dir" "$arch" "$shape"
    ours=(); theirs=()
    for _ in $(seq "$rounds"); do
      ours+=("$(RAYON_NUM_THREADS=$threads "$bin" time "$dir" "$steps" "$warmup")")
      theirs+=("$(OMP_NUM_THREADS=$threads "$venv/bin/python" benches/compare_peft.py "$dir" "$steps" "$warmup" "$threads" 2>/dev/null | tail -1)")
    done
    python3 - "$arch" "$shape" "$(printf '%s\n' "${ours[@]}")" "$(printf '%s\n' "${theirs[@]}")" <<'PY'
import json, statistics, sys
arch, shape = sys.argv[1], sys.argv[2]
a = statistics.median(json.loads(l)["tokens_per_s"] for l in sys.argv[3].splitlines() if l.strip())
b = statistics.median(json.loads(l)["tokens_per_s"] for l in sys.argv[4].splitlines() if l.strip())
print(f"{arch:<9} {shape:<5} {a:>10.0f} t/s {b:>10.0f} t/s {a / b:>6.2f}x")
PY
  done
done

