"""Times the same LoRA training step as examples/step_timing.rs in PyTorch + transformers + PEFT.

    python benches/compare_peft.py DIR STEPS WARMUP THREADS [ATTN]
    python benches/compare_peft.py serve DIR WARMUP THREADS [ATTN]

Same checkpoint files, same batch (8 x 128 ids from the same formula, below min(vocab, 50000)), LoRA r=8, alpha=8,
dropout 0 on PEFT's default targets, AdamW (torch defaults but weight_decay=0), grad-norm
clipping at 1.0, f32, torch.set_num_threads(THREADS). ATTN is transformers' attention
implementation, eager unless given (transformers' own default is sdpa, which trained no faster
on the CPU: BENCHMARKS.md, "One LoRA step against PyTorch + PEFT"). Prints one JSON line.
With `serve`, as `step_timing serve`: after the warm-up steps it prints `ready`, then answers
each line read from stdin with one step's seconds until stdin closes (benches/interleave_peft.py).
"""
import json
import sys
import time

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

BATCH, SEQ = 8, 128


def trainer(path, threads, attn):
    """The model with its adapters, and a function that runs one timed step of it."""
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation=attn)
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=8, lora_dropout=0.0, task_type="CAUSAL_LM"))
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.0)
    vocab = min(model.config.vocab_size, 50000)
    ids = torch.tensor([(i * 7919 + 13) % vocab for i in range(BATCH * SEQ)], dtype=torch.long).view(BATCH, SEQ)

    def step():
        t = time.perf_counter()
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return time.perf_counter() - t

    return step


def serve(step):
    """Prints `ready`, then one step's seconds for each line on stdin; returns them all."""
    print("ready", flush=True)
    times = []
    for _ in sys.stdin:
        times.append(step())
        print(f"{times[-1]:.6f}", flush=True)
    return times


def main():
    serving = sys.argv[1] == "serve"
    args = sys.argv[2:] if serving else sys.argv[1:]
    path, steps = args[0], None if serving else int(args[1])
    warmup, threads = (int(a) for a in (args[1:3] if serving else args[2:4]))
    attn = args[3 if serving else 4] if len(args) > (3 if serving else 4) else "eager"
    t0 = time.perf_counter()
    step = trainer(path, threads, attn)
    load_s = time.perf_counter() - t0
    for _ in range(warmup):
        step()
    times = sorted(serve(step) if serving else [step() for _ in range(steps)])
    if not times:
        sys.exit("compare_peft.py: no step was timed")
    step_s = times[len(times) // 2] if len(times) % 2 else (times[len(times) // 2 - 1] + times[len(times) // 2]) / 2
    print(json.dumps({"stack": "pytorch+peft", "torch": torch.__version__, "attn": attn, "load_s": round(load_s, 3),
                      "median_step_s": round(step_s, 4), "tokens_per_s": round(BATCH * SEQ / step_s, 1)}))


if __name__ == "__main__":
    main()
