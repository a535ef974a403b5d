#!/usr/bin/env bash
# Side by side: one LoRA training step (forward, backward, clipping, AdamW) in plasticity and in
# PyTorch + transformers + PEFT, on the same random-weight checkpoint, the same batch and the
# same thread count, over a matrix of architectures x shapes x thread counts. Next to each row:
# the gemm kernel's own rate at the largest matrix product in that model's blocks (the output
# head left out: the kernel runs it slower than the step does), measured in the same run, and
# the fraction of it plasticity's step achieves. Reports figures; asserts nothing.
#
#   benches/compare_peft.sh [THREADS] [STEPS] [ROUNDS] [SHAPES] [ARCHS]
#
# THREADS: a comma list (default 1,2); STEPS timed steps after 2 warm-up ones (default 5; ten
# times as many at tiny and twice at 14m, whose steps take 50-250 ms, so that each median
# spans seconds rather than a fraction of one);
# ROUNDS (default 3); SHAPES a comma list of tiny, 14m, 70m-body, 70m, 160m (default all);
# ARCHS a comma list of llama, gpt_neox, gpt2 (default all).
#
# Each round runs plasticity, then PyTorch+PEFT, then the kernel, so all three see the same
# machine conditions. The tokens/s columns are medians over the rounds; the ratio and the
# achieved fraction are medians of each round's own ratio, with the rounds' range beside the
# ratio: a shared machine drifts by tens of percent between runs a minute apart, and a ratio
# taken within one round cancels most of that drift.
#
# Creates .venv-bench (ignored by git) with the pinned PyTorch, transformers and PEFT of
# benches/requirements-bench.txt from PyPI on first use, and reinstalls when that file changes.
set -euo pipefail
cd "$(dirname "$0")/.."
thread_list=${1:-1,2}
steps=${2:-5}
rounds=${3:-3}
shapes=${4:-tiny,14m,70m-body,70m,160m}
archs=${5:-llama,gpt_neox,gpt2}
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
echo "machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); batch 8 x 128, r = 8, f32; medians of $rounds rounds, ratios paired within each round"
echo "pytorch side: $("$venv/bin/python" -c 'import torch, transformers, peft; print(f"torch {torch.__version__}, transformers {transformers.__version__}, peft {peft.__version__}")')"
printf '%-9s %-9s %3s %14s %14s %7s %13s %9s %9s %9s %9s\n' arch shape thr plasticity pytorch+peft ratio 'rounds' 'GFLOP/s' 'kernel' achieved 'peak/bnd'
for shape in ${shapes//,/ }; do
  for arch in ${archs//,/ }; do
    dir="$work/$arch-$shape"
    "$bin" write "$dir" "$arch" "$shape"
    case $shape in tiny) timed=$((steps * 10)) ;; 14m) timed=$((steps * 2)) ;; *) timed=$steps ;; esac
    for threads in ${thread_list//,/ }; do
      ours=(); theirs=(); kernel=()
      for _ in $(seq "$rounds"); do
        ours+=("$(RAYON_NUM_THREADS=$threads "$bin" time "$dir" "$timed" "$warmup")")
        theirs+=("$(OMP_NUM_THREADS=$threads "$venv/bin/python" benches/compare_peft.py "$dir" "$timed" "$warmup" "$threads" 2>/dev/null | tail -1)")
        kernel+=("$(RAYON_NUM_THREADS=$threads "$bin" kernel "$shape")")
      done
      python3 - "$arch" "$shape" "$threads" "$(printf '%s\n' "${ours[@]}")" "$(printf '%s\n' "${theirs[@]}")" "$(printf '%s\n' "${kernel[@]}")" <<'PY'
import json, statistics, sys
arch, shape, threads = sys.argv[1:4]
rows = lambda text: [json.loads(l) for l in text.splitlines() if l.strip()]
ours, theirs, kernel = rows(sys.argv[4]), rows(sys.argv[5]), rows(sys.argv[6])
med = lambda xs, key: statistics.median(x[key] for x in xs)
paired = lambda xs, ys, kx, ky: [x[kx] / y[ky] for x, y in zip(xs, ys)]
a, b = med(ours, "tokens_per_s"), med(theirs, "tokens_per_s")
ratios = paired(ours, theirs, "tokens_per_s", "tokens_per_s")
fractions = paired(ours, kernel, "achieved_gflops", "gflops")
flops, rate, peak = med(ours, "achieved_gflops"), med(kernel, "gflops"), med(ours, "peak_over_bound")
spread = f"{min(ratios):.2f}-{max(ratios):.2f}"
print(f"{arch:<9} {shape:<9} {threads:>3} {a:>10.0f} t/s {b:>10.0f} t/s {statistics.median(ratios):>6.2f}x {spread:>13} {flops:>9.1f} {rate:>9.1f} {statistics.median(fractions):>8.0%} {peak:>9.2f}")
PY
    done
  done
done
