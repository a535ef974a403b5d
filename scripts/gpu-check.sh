#!/usr/bin/env bash
# The GPU check: parity against transformers on the GPU, GPU against CPU loss curves on the
# committed series, and tokens/s at the Pythia-70M benchmark shape on the GPU next to the CPU.
# One short run (a few minutes) for a machine with an NVIDIA GPU and no Rust toolchain:
#
#   scripts/build-cuda.sh && scripts/gpu-check.sh --pack     # here: stripped CUDA binaries in .gpu/
#   scripts/gpu-check.sh                                      # there, from the repository root
#
# With the device tool: run `bash scripts/gpu-check.sh 2>&1 | tee $OUT/gpu-check.log` carrying
# .gpu (ignored by git through .git/info/exclude). cuBLAS, cuRAND and NVRTC of CUDA 13 are found
# in the machine's Python (NVIDIA's wheels, e.g. PyTorch's) or under /usr/local/cuda, or in
# CUDA_LIB_DIR.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=.gpu
if [ "${1:-}" = "--pack" ]; then
  mkdir -p "$bin"
  for b in plasticity examples/parity examples/step_timing; do
    strip -o "$bin/$(basename "$b")" "target/cuda/release/$b"
  done
  grep -qx '/.gpu/' .git/info/exclude 2>/dev/null || echo '/.gpu/' >> .git/info/exclude
  du -sh "$bin"
  exit 0
fi
lib=${CUDA_LIB_DIR:-$(python3 - <<'PY' 2>/dev/null || true
import glob, os, sys
for p in sys.path:
    for d in glob.glob(os.path.join(p, "nvidia", "cu13", "lib")) + glob.glob(os.path.join(p, "nvidia", "cublas", "lib")):
        if glob.glob(os.path.join(d, "libcublas.so*")):
            print(d); sys.exit()
PY
)}
[ -n "$lib" ] || lib=$(ls -d /usr/local/cuda*/lib64 2>/dev/null | head -1)
export LD_LIBRARY_PATH="$lib:${LD_LIBRARY_PATH:-}"
work=$(mktemp -d)
echo "== GPU: $(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null || echo unknown); CUDA libraries from $lib"

echo "== parity on the GPU (transformers' logits and eval losses, PEFT's ten LoRA steps; CPU figures in README)"
PLASTICITY_DEVICE=cuda "$bin/parity"

echo "== the committed series, 20 LoRA steps, GPU against CPU"
for dev in cpu cuda; do
  "$bin/plasticity" scan tests/fixtures/series --task tests/fixtures/task.jsonl --steps 20 --eval-every 5 \
    --device "$dev" --quiet --json "$work/$dev.json" > /dev/null
done
python3 - "$work/cpu.json" "$work/cuda.json" <<'PY'
import json, sys
cpu, gpu = (json.load(open(p)) for p in sys.argv[1:])
worst = 0.0
for a, b in zip(cpu["checkpoints"], gpu["checkpoints"]):
    la = [p["eval_loss"] for p in a["curve"] if p["eval_loss"] is not None]
    lb = [p["eval_loss"] for p in b["curve"] if p["eval_loss"] is not None]
    err = max(abs(x - y) / abs(x) for x, y in zip(la, lb))
    worst = max(worst, err)
    print(f"{a['name']:<16} cpu {la[-1]:.6f}  gpu {lb[-1]:.6f}  max rel diff over the curve {err:.2e}")
print(f"ranking cpu {cpu['ranking']}\nranking gpu {gpu['ranking']}\nworst {worst:.2e} (f32 on both)")
PY

echo "== one LoRA step at the Pythia-70M shape (gpt_neox, batch 8 x 128, r 8, f32)"
"$bin/step_timing" write "$work/neox70" gpt_neox 70m
PLASTICITY_DEVICE=cuda "$bin/step_timing" time "$work/neox70" 20 3
RAYON_NUM_THREADS=$(nproc) "$bin/step_timing" time "$work/neox70" 3 1
