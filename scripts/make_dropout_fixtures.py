#!/usr/bin/env python3
"""Generate ``tests/fixtures/expected/dropout/<model>.json``: PEFT training losses with the
base model's own dropouts switched on, over many dropout seeds.

transformers' Trainer fine-tunes in train mode, so every dropout a config.json sets is active:
GPT-2's ``attn_pdrop``, ``resid_pdrop`` and ``embd_pdrop`` (0.1 each in real checkpoints),
GPT-NeoX's ``attention_dropout`` and ``hidden_dropout``, Llama's ``attention_dropout``. For
three fixture models this script sets those to ``P``, starts from the fixture's PEFT adapter
(``tests/fixtures/peft/<model>/``), trains the same ten steps on the same batches as the PEFT
parity fixture, once per dropout seed, and records every seed's losses. Dropout masks cannot
be matched draw for draw between torch and plasticity, so the Rust test compares the mean
training loss over seeds within a band built from both sides' spread; the p = 0 trace of the
parity fixture lies outside that band, so ignoring the dropouts fails the test.

Run it after make_fixtures.py (about 30 s on 2 CPU cores):

    .venv/bin/python scripts/make_dropout_fixtures.py

Versions: as make_fixtures.py (scripts/requirements-fixtures.txt).
"""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_fixtures as mf  # noqa: E402  (re-executes with a fixed hash seed, chdirs to the repo root)

import torch  # noqa: E402
from peft import PeftModel  # noqa: E402
from safetensors.torch import load_file  # noqa: E402
from transformers import AutoModelForCausalLM  # noqa: E402

P = 0.1
SEEDS = 64
DROPOUTS = {
    "gpt2": ["attn_pdrop", "resid_pdrop", "embd_pdrop"],
    "gpt_neox_parallel": ["attention_dropout", "hidden_dropout"],
    "llama_gqa": ["attention_dropout"],
}
OUT = mf.FIX / "expected" / "dropout"


def train(name, fields, seed):
    """The ten losses of one PEFT fine-tune with `fields` set to P (none: the parity run)."""
    overrides = {f: P for f in fields}
    base = AutoModelForCausalLM.from_pretrained(str(mf.FIX / "models" / name), dtype=torch.float32, attn_implementation="eager", **overrides)
    adapter = mf.FIX / "peft" / name
    model = PeftModel.from_pretrained(base, str(adapter), is_trainable=True)
    expected = json.loads((adapter / "expected.json").read_text())
    batches = load_file(str(adapter / "batches.safetensors"))["input_ids"]
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=expected["lr"], betas=tuple(expected["betas"]), eps=expected["eps"], weight_decay=expected["weight_decay"])
    model.train()
    torch.manual_seed(seed)
    losses = []
    for step in range(expected["steps"]):
        b = batches[step]
        loss = model(input_ids=b, labels=b).loss
        losses.append(float(loss.item()))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, expected["max_grad_norm"])
        opt.step()
        opt.zero_grad()
    return losses


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    for name, fields in DROPOUTS.items():
        parity = train(name, [], 0)
        expected = json.loads((mf.FIX / "peft" / name / "expected.json").read_text())
        assert max(abs(a - b) for a, b in zip(parity, expected["losses"])) < 1e-5, "the p = 0 run must be the parity fixture's"
        runs = [train(name, fields, 1000 + s) for s in range(SEEDS)]
        means = [sum(r) / len(r) for r in runs]
        mean = sum(means) / SEEDS
        sd = (sum((m - mean) ** 2 for m in means) / (SEEDS - 1)) ** 0.5
        mf.dump_json(OUT / f"{name}.json", {
            "dropouts": {f: P for f in fields},
            "seeds": SEEDS,
            "losses": runs,
            "mean_loss_per_seed": means,
            "mean": mean,
            "sd": sd,
            "no_dropout_mean": sum(parity) / len(parity),
            **mf.VERSIONS,
        })
        print(f"[dropout] {name:18s} mean loss {mean:.5f} (sd over seeds {sd:.5f}); without dropout {sum(parity) / len(parity):.5f}", flush=True)


if __name__ == "__main__":
    main()
