#!/usr/bin/env bash
# The GPU check, for a machine with an NVIDIA GPU and no Rust toolchain: the fixture models'
# losses on the GPU against the CPU (the CPU matches transformers, see docs/correctness.md),
# GPU against CPU loss curves and ranking on the committed series, the series in bf16 against
# f32 and with two workers on one GPU against one, and tokens/s at the Pythia-70M benchmark
# shape on the GPU (f32 and bf16) next to the CPU. A few minutes:
#
#   scripts/build-cuda.sh && scripts/gpu-check.sh --pack   # here: a stripped CUDA binary in .gpu/
#   bash scripts/gpu-check.sh                               # there, from the repository root
#
# Copy .gpu/ to the GPU machine with the repository (it is ignored through .git/info/exclude).
# cuBLAS, cuRAND and the CUDA 13 runtime are looked up in the machine's Python (NVIDIA's
# wheels, as PyTorch installs them), in CUDA_LIB_DIR, or under /usr/local/cuda; python3 with
# torch and transformers writes the 70M-shape checkpoint.
set -euo pipefail
# (each analysis step below ends in `|| true`: one failed comparison must not hide the rest)
cd "$(dirname "$0")/.."
if [ "${1:-}" = "--pack" ]; then
  # stripped and compressed (58 MB -> 8 MB), so it is quick to copy
  mkdir -p .gpu
  strip -o .gpu/plasticity target/cuda/release/plasticity
  xz -T0 -6 -f .gpu/plasticity
  grep -qx '/.gpu/' .git/info/exclude 2>/dev/null || echo '/.gpu/' >> .git/info/exclude
  du -sh .gpu
  exit 0
fi
work=$(mktemp -d)
bin=$work/plasticity
python3 -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], "wb"))' .gpu/plasticity.xz "$bin"
chmod +x "$bin"
lib=${CUDA_LIB_DIR:-$(python3 - <<'PY' 2>/dev/null || true
import glob, os, sys
for p in sys.path:
    for d in glob.glob(os.path.join(p, "nvidia", "*", "lib")):
        if glob.glob(os.path.join(d, "libcublas.so.13")):
            print(d); sys.exit()
PY
)}
[ -n "$lib" ] || lib=$(ls -d /usr/local/cuda*/lib64 2>/dev/null | head -1)
extra=$(python3 -c 'import glob, os, sys; print(":".join(sorted({os.path.dirname(f) for p in sys.path for f in glob.glob(os.path.join(p, "nvidia", "*", "lib", "lib*.so.1[03]"))})))' 2>/dev/null || true)
export LD_LIBRARY_PATH="$lib:$extra:${LD_LIBRARY_PATH:-}"
task=tests/fixtures/task.jsonl
echo "== GPU: $(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null || echo unknown); CUDA libraries: $lib"
"$bin" --version

echo "== fixture models, 4 LoRA steps (seq 32, batch 4): GPU against CPU"
for m in llama_gqa llama_tied_bf16 llama_sharded mistral qwen2 gpt_neox_parallel gpt_neox_sequential gpt2; do
  for dev in cpu cuda; do
    "$bin" scan "tests/fixtures/models/$m" --task "$task" --steps 4 --eval-every 2 --seq-len 32 --eval-blocks 4 \
      --batch-size 4 --threads 4 --device "$dev" --quiet --json "$work/$m-$dev.json" > /dev/null 2> "$work/$m-$dev.err" || true
  done
done
python3 - "$work" <<'PY' || true
import json, os, sys
work = sys.argv[1]
for m in ["llama_gqa", "llama_tied_bf16", "llama_sharded", "mistral", "qwen2", "gpt_neox_parallel", "gpt_neox_sequential", "gpt2"]:
    try:
        a, b = (json.load(open(os.path.join(work, f"{m}-{d}.json")))["checkpoints"][0] for d in ("cpu", "cuda"))
    except Exception as e:
        err = open(os.path.join(work, f"{m}-cuda.err")).read().strip().splitlines()
        print(f"{m:<22} no result: {e}; {err[-1] if err else ''}"); continue
    if b["status"] != "ok":
        print(f"{m:<22} GPU {b['status']}: {b.get('error')}"); continue
    la = [p["eval_loss"] for p in a["curve"] if p["eval_loss"] is not None]
    lb = [p["eval_loss"] for p in b["curve"] if p["eval_loss"] is not None]
    ta = [p["train_loss"] for p in a["curve"] if p["train_loss"] is not None]
    tb = [p["train_loss"] for p in b["curve"] if p["train_loss"] is not None]
    rel = lambda x, y: max(abs(u - v) / abs(u) for u, v in zip(x, y))
    print(f"{m:<22} eval loss at step 0: cpu {la[0]:.7f} gpu {lb[0]:.7f}; max rel diff eval {rel(la, lb):.1e}, train {rel(ta, tb):.1e}")
PY

echo "== the committed series, 20 LoRA steps: GPU against CPU"
for dev in cpu cuda; do
  "$bin" scan tests/fixtures/series --task "$task" --steps 20 --eval-every 5 --device "$dev" --quiet --json "$work/series-$dev.json" > /dev/null || echo "(that scan exited $?)"
done
python3 - "$work/series-cpu.json" "$work/series-cuda.json" <<'PY' || true
import json, sys
cpu, gpu = (json.load(open(p)) for p in sys.argv[1:])
for a, b in zip(cpu["checkpoints"], gpu["checkpoints"]):
    la = [p["eval_loss"] for p in a["curve"] if p["eval_loss"] is not None]
    lb = [p["eval_loss"] for p in b["curve"] if p["eval_loss"] is not None]
    print(f"{a['name']:<16} final eval cpu {la[-1]:.6f} gpu {lb[-1]:.6f}; max rel diff over the curve {max(abs(x - y) / abs(x) for x, y in zip(la, lb)):.1e}")
print(f"ranking cpu {cpu['ranking']}, gpu {gpu['ranking']}; device {gpu['device']}")
PY

echo "== the series in bf16 (--dtype bf16) against f32 on the GPU; two workers on one GPU against one"
"$bin" scan tests/fixtures/series --task "$task" --steps 20 --eval-every 5 --device cuda --dtype bf16 --quiet --json "$work/series-cuda-bf16.json" > /dev/null || echo "(that scan exited $?)"
"$bin" scan tests/fixtures/series --task "$task" --steps 20 --eval-every 5 --devices cuda:0,cuda:0 --quiet --json "$work/series-cuda-2w.json" > /dev/null || echo "(that scan exited $?)"
python3 - "$work/series-cuda.json" "$work/series-cuda-bf16.json" "$work/series-cuda-2w.json" <<'PY' || true
import json, sys
f32, bf16, two = (json.load(open(p)) for p in sys.argv[1:])
evals = lambda c: [p["eval_loss"] for p in c["curve"] if p["eval_loss"] is not None]
for a, b in zip(f32["checkpoints"], bf16["checkpoints"]):
    print(f"{a['name']:<16} final eval f32 {evals(a)[-1]:.6f} bf16 {evals(b)[-1]:.6f}; max rel diff {max(abs(x - y) / abs(x) for x, y in zip(evals(a), evals(b))):.1e}")
print(f"ranking f32 {f32['ranking']}, bf16 {bf16['ranking']}")
same = all([(p["step"], p["train_loss"], p["eval_loss"]) for p in a["curve"]] == [(p["step"], p["train_loss"], p["eval_loss"]) for p in b["curve"]] for a, b in zip(f32["checkpoints"], two["checkpoints"]))
print(f"two workers: curves identical to one worker: {same}; ranking {two['ranking']}; device {two['device']}")
PY

echo "== plasticity probe on the series: GPU against CPU"
for dev in cpu cuda; do
  "$bin" probe tests/fixtures/series --task "$task" --device "$dev" --json "$work/probe-$dev.json" > /dev/null 2>&1 || true
done
python3 - "$work/probe-cpu.json" "$work/probe-cuda.json" <<'PY' || true
import json, sys
try:
    cpu, gpu = (json.load(open(p)) for p in sys.argv[1:])
except Exception as e:
    print(f"no probe result: {e}"); sys.exit()
for a, b in zip(cpu["probes"], gpu["probes"]):
    print(f"{a['name']:<16} forecast cpu {a['forecast']:.6f} gpu {b['forecast']:.6f}; effective rank cpu {a['effective_rank']:.4f} gpu {b['effective_rank']:.4f}; zero-shot cpu {a['zero_shot_loss']:.6f} gpu {b['zero_shot_loss']:.6f}")
PY

echo "== one LoRA step at the Pythia-70M shape (gpt_neox, 6 x 512, vocab 50304; batch 8 x 128, r 8, f32)"
python3 - "$work/neox70" <<'PY'
import sys, torch
from transformers import GPTNeoXConfig, GPTNeoXForCausalLM
torch.manual_seed(0)
cfg = GPTNeoXConfig(vocab_size=50304, hidden_size=512, num_hidden_layers=6, num_attention_heads=8, intermediate_size=2048,
                    rotary_pct=0.25, max_position_embeddings=2048, use_parallel_residual=True, tie_word_embeddings=False)
GPTNeoXForCausalLM(cfg).save_pretrained(sys.argv[1], safe_serialization=True)
PY
cp tests/fixtures/tokenizer.json "$work/neox70/"
"$bin" scan "$work/neox70" --task "$task" --steps 20 --eval-every 20 --batch-size 8 --seq-len 128 --eval-blocks 2 \
  --device cuda --quiet --json "$work/neox70-cuda.json" > /dev/null || echo "(that scan exited $?)"
"$bin" scan "$work/neox70" --task "$task" --steps 3 --eval-every 3 --batch-size 8 --seq-len 128 --eval-blocks 2 \
  --device cpu --threads "$(nproc)" --quiet --json "$work/neox70-cpu.json" > /dev/null || echo "(that scan exited $?)"
"$bin" scan "$work/neox70" --task "$task" --steps 20 --eval-every 20 --batch-size 8 --seq-len 128 --eval-blocks 2 \
  --device cuda --dtype bf16 --quiet --json "$work/neox70-cuda-bf16.json" > /dev/null || echo "(that scan exited $?)"
python3 - "$work/neox70-cuda.json" "$work/neox70-cuda-bf16.json" "$work/neox70-cpu.json" <<'PY' || true
import json, sys
for p in sys.argv[1:]:
    r = json.load(open(p)); c = r["checkpoints"][0]
    print(f"{r['device']['kind']:<5} {r['settings']['dtype']:<5} {r['device']['name']:<32} {c.get('tokens_per_s') or 0:>10.0f} tokens/s  median step {c.get('median_step_s') or 0:.4f} s  ({c['status']})")
PY
