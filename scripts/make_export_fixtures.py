#!/usr/bin/env python3
"""Adapters exported by `plasticity scan --save-adapters`, loaded with PEFT.

Run from the repository root with the pinned environment of scripts/make_fixtures.py:

    python scripts/make_export_fixtures.py

For llama_gqa, gpt2 (Conv1D, fan_in_fan_out), olmo and olmo2 (no PEFT default targets: the
exported config must list them) it runs a short scan of the fixture model
with --save-adapters into tests/fixtures/exported/ (the flags are EXPORT_FLAGS, repeated in
tests/suite/export.rs), then loads each adapter with PeftModel.from_pretrained on the f32 base
and writes tests/fixtures/exported/<name>/peft_logits.json: PEFT's logits for the input of
expected/<name>.json. It checks that PEFT loads every tensor (no missing or unexpected key)
and that the adapter moves the logits (a trained, non-zero B).
"""

import os
import shutil
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_fixtures as mf  # noqa: E402

import json  # noqa: E402

import torch  # noqa: E402
from peft import PeftModel  # noqa: E402

MODELS = ["llama_gqa", "gpt2", "olmo", "olmo2", "bloom"]
EXPORT_FLAGS = ["--steps", "6", "--seq-len", "32", "--batch-size", "4", "--eval-blocks", "4", "--lr", "1e-2",
                "--seed", "3", "--device", "cpu", "--threads", "1", "--quiet"]


def export(name):
    out = mf.FIX / "exported"
    shutil.rmtree(out / name, ignore_errors=True)
    subprocess.run(["cargo", "run", "--quiet", "--", "scan", str(mf.FIX / "models" / name), "--task", str(mf.FIX / "task.jsonl"),
                    *EXPORT_FLAGS, "--save-adapters", str(out), "--json", os.devnull], check=True, stdout=subprocess.DEVNULL)
    # the scan records the base model's absolute path; the fixture keeps it relative to the repository
    config_path = out / name / "adapter_config.json"
    config = json.loads(config_path.read_text())
    config["base_model_name_or_path"] = os.path.relpath(config["base_model_name_or_path"], os.getcwd())
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return out / name


def main():
    for name in MODELS:
        d = export(name)
        expected = json.loads((mf.FIX / "expected" / f"{name}.json").read_text())
        ids = torch.tensor(expected["input_ids"], dtype=torch.int64)
        base = mf.load_f32(mf.FIX / "models" / name).eval()
        with torch.no_grad():
            base_logits = base(input_ids=ids).logits
        model = PeftModel.from_pretrained(base, str(d)).eval()
        sd = model.state_dict()
        lora_keys = sorted(k for k in sd if "lora_" in k)
        from safetensors.torch import load_file
        saved = load_file(str(d / "adapter_model.safetensors"))
        assert len(lora_keys) == len(saved), (lora_keys, sorted(saved))
        for k, v in saved.items():
            peft_key = k.replace(".weight", ".default.weight")
            assert torch.equal(sd[peft_key], v), k
        with torch.no_grad():
            logits = model(input_ids=ids).logits
        moved = (logits - base_logits).abs().max().item()
        assert moved > 1e-3, f"{name}: the adapter does not move the logits ({moved})"
        mf.dump_json(d / "peft_logits.json", {
            "input_ids": ids.tolist(),
            "logits_shape": list(logits.shape),
            "logits": mf.F32Array(logits),
            "max_abs_moved_by_adapter": moved,
            "export_flags": EXPORT_FLAGS,
            **mf.VERSIONS,
            "peft_version": mf.peft.__version__,
        })
        print(f"[export] {name:12s} {len(saved)} tensors loaded by PEFT; the adapter moves the logits {moved:.4f}", flush=True)


if __name__ == "__main__":
    main()
