#!/usr/bin/env python3
"""bf16 reference numbers for `--dtype bf16`, from the committed fixture models.

Run from the repository root with the pinned environment of scripts/make_fixtures.py
(scripts/requirements-fixtures.txt), after it:

    python scripts/make_bf16_fixtures.py

For each model that has a PEFT trace (tests/fixtures/peft/<name>/), it writes
tests/fixtures/expected/bf16/<name>.json:

- the logits of the first row of the fixture input (expected/<name>.json's input_ids),
  with the model loaded as transformers loads it with dtype=torch.bfloat16 (eager
  attention), next to the same logits in f32 (how far bf16 moves them);
- PEFT's 10-step LoRA loss curve on that bf16 base: the committed initial adapter, loaded
  with PEFT's default autocast_adapter_dtype=True (adapters in f32), the committed batches,
  AdamW and gradient clipping as in make_fixtures.make_peft, in f32 optimizer state.

It also writes tests/fixtures/models/llama_hd128/ (bf16 on disk, 0.7 MB): a Llama with one
head of dimension 128, whose attention scale 1/sqrt(128) is not a bf16 number, so the point
where the scale is rounded shows; its expected/bf16/llama_hd128.json has logits only. Nothing
else here changes the committed models, adapters or batches.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_fixtures as mf  # noqa: E402  (sets the deterministic environment first)

import json  # noqa: E402
import shutil  # noqa: E402

import torch  # noqa: E402
from peft import PeftModel  # noqa: E402
from safetensors.torch import load_file  # noqa: E402
from transformers import AutoModelForCausalLM  # noqa: E402


def load_bf16(model_dir):
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.bfloat16, attn_implementation="eager")
    for p in model.parameters():
        assert p.dtype == torch.bfloat16
    return model


def logits_row0(name):
    expected = json.loads((mf.FIX / "expected" / f"{name}.json").read_text())
    ids = torch.tensor(expected["input_ids"][:1], dtype=torch.int64)  # (1, 16)
    with torch.no_grad():
        bf16 = load_bf16(mf.FIX / "models" / name).eval()(input_ids=ids).logits
        f32 = mf.load_f32(mf.FIX / "models" / name).eval()(input_ids=ids).logits
    assert bf16.dtype == torch.bfloat16
    return ids, bf16.float(), f32


def peft_losses_bf16(name):
    d = mf.FIX / "peft" / name
    trace = json.loads((d / "expected.json").read_text())
    batches = load_file(str(d / "batches.safetensors"))["input_ids"]
    model = PeftModel.from_pretrained(load_bf16(mf.FIX / "models" / name), str(d), is_trainable=True)
    params = [p for p in model.parameters() if p.requires_grad]
    assert params and all(p.dtype == torch.float32 for p in params)  # autocast_adapter_dtype
    opt = torch.optim.AdamW(params, lr=trace["lr"], betas=tuple(trace["betas"]), eps=trace["eps"], weight_decay=trace["weight_decay"])
    model.train()
    losses = []
    for step in range(trace["steps"]):
        b = batches[step]
        loss = model(input_ids=b, labels=b).loss
        assert loss.dtype == torch.float32
        losses.append(float(loss.item()))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, trace["max_grad_norm"])
        opt.step()
        opt.zero_grad()
    return losses, trace["losses"]


HD128 = "llama_hd128"


def make_hd128():
    """A 2-layer Llama, hidden 128, one head of 128 (scale 1/sqrt(128)), saved in bf16."""
    from transformers import LlamaConfig
    d = mf.FIX / "models" / HD128
    shutil.rmtree(d, ignore_errors=True)
    cfg = LlamaConfig(vocab_size=mf.VOCAB_SIZE, hidden_size=128, num_hidden_layers=2, num_attention_heads=1,
                      num_key_value_heads=1, intermediate_size=344, max_position_embeddings=256, rms_norm_eps=1e-6,
                      tie_word_embeddings=True, bos_token_id=0, eos_token_id=0,
                      rope_parameters={"rope_type": "default", "rope_theta": 10000.0})
    torch.manual_seed(1128)
    model = AutoModelForCausalLM.from_config(cfg, attn_implementation="eager", dtype=torch.float32)
    gen = torch.Generator().manual_seed(51128)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 1:
                p.add_(torch.randn(p.shape, generator=gen) * mf.NOISE_STD)
        for layer in model.model.layers:  # attention scores of order 10, so their rounding shows
            layer.self_attn.q_proj.weight.mul_(12.0)
            layer.self_attn.k_proj.weight.mul_(12.0)
    model.to(torch.bfloat16).save_pretrained(str(d))
    shutil.copy(mf.FIX / "tokenizer.json", d / "tokenizer.json")


def logits_only(name, ids):
    with torch.no_grad():
        bf16 = load_bf16(mf.FIX / "models" / name).eval()(input_ids=ids).logits.float()
        f32 = mf.load_f32(mf.FIX / "models" / name).eval()(input_ids=ids).logits
    return bf16, f32


def main():
    out_dir = mf.FIX / "expected" / "bf16"
    out_dir.mkdir(parents=True, exist_ok=True)
    make_hd128()
    ids = torch.tensor(json.loads((mf.FIX / "expected" / "llama_gqa.json").read_text())["input_ids"][:1], dtype=torch.int64)
    bf16, f32 = logits_only(HD128, ids)
    moved = (bf16 - f32).abs().max().item()
    mf.dump_json(out_dir / f"{HD128}.json", {
        "input_ids": ids.tolist(), "logits_shape": list(bf16.shape), "logits": mf.F32Array(bf16),
        "logits_f32": mf.F32Array(f32), "max_abs_bf16_vs_f32": moved, **mf.VERSIONS,
    })
    print(f"[bf16] {HD128:20s} logits moved {moved:.4f} by bf16", flush=True)
    for name in mf.PEFT_MODELS:
        ids, bf16, f32 = logits_row0(name)
        losses, f32_losses = peft_losses_bf16(name)
        moved = (bf16 - f32).abs().max().item()
        mf.dump_json(out_dir / f"{name}.json", {
            "input_ids": ids.tolist(),
            "logits_shape": list(bf16.shape),
            "logits": mf.F32Array(bf16),
            "logits_f32": mf.F32Array(f32),
            "max_abs_bf16_vs_f32": moved,
            "peft_losses": losses,
            "peft_losses_f32": f32_losses,
            **mf.VERSIONS,
            "peft_version": mf.peft.__version__,
        })
        print(f"[bf16] {name:20s} logits moved {moved:.4f} by bf16; losses {losses[0]:.5f} -> {losses[-1]:.5f} "
              f"(f32 {f32_losses[0]:.5f} -> {f32_losses[-1]:.5f})", flush=True)


if __name__ == "__main__":
    main()
