#!/usr/bin/env bash
# Where a LoRA training step spends its time: records STEPS steps of examples/step_timing with
# `perf record` (after WARMUP) on a random-weight checkpoint, and sums the samples' self time by
# category. Reports figures; asserts nothing. Needs `perf` and permission to use it.
#
#   benches/profile_step.sh ARCH SHAPE [THREADS] [STEPS] [ops]   (defaults: 2 threads, 30 steps)
#
# With `ops`, the steps are recorded with call graphs instead and the samples are summed by the
# engine's operation (benches/profile_ops.py: the fused MLP, the adapted linear layer, attention
# forward and backward, candle's backward sums, ...).
#
# ARCH: llama, gpt_neox or gpt2; SHAPE: tiny, 14m, 70m-body, 70m or 160m (see step_timing).
# The categories are matched on symbol names (first match wins; the fused kernels run inside
# one AVX2 wrapper, so attention, norms and activations share a line); the products' line also
# gives their share outside gemm's micro-kernel, mostly the packing of operands that gemm does on
# every call. "idle and synchronisation"
# is worker threads waiting for work: with 2 threads it measures how much of the step runs on
# one core only.
set -euo pipefail
cd "$(dirname "$0")/.."
arch=$1
shape=$2
threads=${3:-2}
steps=${4:-30}
mode=${5:-categories}
cargo build -q --release --example step_timing
bin=${CARGO_TARGET_DIR:-target}/release/examples/step_timing
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$bin" write "$work/model" "$arch" "$shape"
if [ "$mode" = ops ]; then
  RAYON_NUM_THREADS=$threads perf record -q --call-graph dwarf,32768 -F 300 -o "$work/perf.data" "$bin" time "$work/model" "$steps" 3 2>/dev/null
  perf script -i "$work/perf.data" --no-inline -F ip,sym 2>/dev/null | sed 's/+0x[0-9a-f]*//' | python3 benches/profile_ops.py
  exit
fi
RAYON_NUM_THREADS=$threads perf record -q -F 1999 -o "$work/perf.data" "$bin" time "$work/model" "$steps" 3 >"$work/step.json" 2>/dev/null
perf report -i "$work/perf.data" --no-children --sort symbol --percent-limit 0 --stdio 2>/dev/null |
  python3 -c '
import json, re, sys
step = json.load(open(sys.argv[1]))
categories = [
    ("matrix products (gemm)", r"gemm"),
    ("output head + loss (fused)", r"head_loss"),
    ("fused kernels: attention, norms, activations", r"sdpa|plasticity::model::fused|plasticity::math"),
    ("autograd bookkeeping", r"backprop|GradStore|sorted_nodes|HashMap|hashbrown"),
    ("copies and contiguous", r"memmove|memcpy|copy_strided|copy2d|Contiguous|to_vec|clone"),
    ("allocation and zero-filling", r"memset|malloc|free|realloc|alloc|clear_page|page_fault|do_anonymous|zeros"),
    ("other candle elementwise ops", r"binary_map|unary_map|Affine|cpu_backend|reduce|where_cond"),
    ("idle and synchronisation", r"__rust_begin_short_backtrace|rayon|Barrier|sched|yield|futex|finish_task_switch|spin|schedule|syscall"),
]
totals = {name: 0.0 for name, _ in categories}
other = packing = 0.0
for line in sys.stdin:
    m = re.match(r"\s*([0-9.]+)%\s+\[[.k]\]\s+(.*)", line)
    if not m:
        continue
    pct, sym = float(m.group(1)), m.group(2)
    for name, pattern in categories:
        if re.search(pattern, sym):
            totals[name] += pct
            packing += pct if name.startswith("matrix") and "microkernel" not in sym else 0.0
            break
    else:
        other += pct
model, tps, gflops = step["model_type"], step["tokens_per_s"], step["achieved_gflops"]
print(f"{model} {sys.argv[2]}, {sys.argv[3]} threads: {tps:.0f} tokens/s, {gflops:.1f} GFLOP/s")
for name, _ in categories:
    print(f"  {name:<44} {totals[name]:5.1f}%")
    if name.startswith("matrix"):
        print("    %-42s %5.1f%%" % ("of which outside the micro-kernel (packing)", packing))
print("  %-44s %5.1f%%" % ("everything else", other))
' "$work/step.json" "$shape" "$threads"
