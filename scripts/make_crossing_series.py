#!/usr/bin/env python3
"""Generate ``tests/fixtures/series_crossing/``: a checkpoint series whose LoRA curves cross.

A tiny Llama (hidden 32, 2 layers, tied embeddings) is pre-trained from scratch with
transformers' Trainer on the fixture pre-training corpus (stdlib docstrings, as
``make_fixtures.py`` builds it), and checkpoints 100, 200, 400 and 800 are kept.  The task,
``tests/fixtures/task_upper.jsonl``, is the fixture task upper-cased: the same kind of text
in tokens the pre-training rarely saw.  Fine-tuned on it (LoRA r 8, alpha 8, lr 3e-3, batch
8 x 32 tokens), checkpoint-800 starts higher than checkpoint-400 and then falls below it:
the curves cross, which is what racing must not be fooled by.  The script fine-tunes every
checkpoint with PEFT at those settings and asserts the crossing, printing the curves.

Run it after make_fixtures.py (it reuses that script's corpora and tokenizer; ~40 s on 2 CPU
cores):

    .venv/bin/python scripts/make_crossing_series.py

Versions: as make_fixtures.py (scripts/requirements-fixtures.txt).
"""

import json
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_fixtures as mf  # noqa: E402  (re-executes with a fixed hash seed, chdirs to the repo root)

import torch  # noqa: E402
import transformers  # noqa: E402
from peft import LoraConfig, get_peft_model  # noqa: E402
from tokenizers import Tokenizer  # noqa: E402
from transformers import AutoModelForCausalLM, LlamaConfig, Trainer, TrainingArguments  # noqa: E402

OUT = mf.FIX / "series_crossing"
TASK = mf.FIX / "task_upper.jsonl"
STEPS = [100, 200, 400, 800]
KEEP = {"config.json", "model.safetensors", "trainer_state.json"}
# The fine-tune the tests run: plasticity scan --lr 3e-3 --seq-len 32 --eval-blocks 8 (r 8,
# alpha 8, batch 8, 60 updates, eval every 10).
LR, BATCH, UPDATES, EVAL_BLOCKS = 3e-3, 8, 60, 8


def pretrain(tok_path, pre_blocks):
    if OUT.exists():
        shutil.rmtree(OUT)
    config = LlamaConfig(
        vocab_size=mf.VOCAB_SIZE, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=128,
        tie_word_embeddings=True, rms_norm_eps=1e-5, bos_token_id=mf.EOS_ID, eos_token_id=mf.EOS_ID,
    )
    transformers.set_seed(1234)
    model = AutoModelForCausalLM.from_config(config, attn_implementation="eager", dtype=torch.float32)
    args = TrainingArguments(
        output_dir=str(OUT), use_cpu=True, learning_rate=3e-3, lr_scheduler_type="constant",
        per_device_train_batch_size=16, max_steps=STEPS[-1], save_steps=STEPS[0], logging_steps=25,
        report_to=[], seed=1234, data_seed=1234, save_only_model=True, dataloader_num_workers=0,
        disable_tqdm=True,
    )
    Trainer(model=model, args=args, train_dataset=mf.BlockDataset(pre_blocks)).train()
    for p in list(OUT.iterdir()):
        keep = p.name in {f"checkpoint-{s}" for s in STEPS}
        if not keep:
            shutil.rmtree(p) if p.is_dir() else p.unlink()
            continue
        for f in list(p.iterdir()):
            if f.name not in KEEP:
                shutil.rmtree(f) if f.is_dir() else f.unlink()
        shutil.copy(tok_path, p / "tokenizer.json")


def peft_curves(task_blocks):
    """Eval-loss curves of a PEFT fine-tune of every checkpoint (every 10 updates)."""
    train, ev = task_blocks[:-EVAL_BLOCKS], task_blocks[-EVAL_BLOCKS:]
    g = torch.Generator().manual_seed(0)
    order = torch.cat([torch.randperm(len(train), generator=g) for _ in range(UPDATES * BATCH // len(train) + 2)])
    curves = {}
    for s in STEPS:
        model = AutoModelForCausalLM.from_pretrained(str(OUT / f"checkpoint-{s}"), dtype=torch.float32)
        torch.manual_seed(0)
        pm = get_peft_model(model, LoraConfig(r=8, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "v_proj"]))
        opt = torch.optim.AdamW([p for p in pm.parameters() if p.requires_grad], lr=LR, weight_decay=0.0)

        def evaluate():
            pm.eval()
            with torch.no_grad():
                loss = pm(input_ids=ev, labels=ev).loss.item()
            pm.train()
            return round(loss, 4)

        curve = [evaluate()]
        for k in range(UPDATES):
            b = train[order[k * BATCH:(k + 1) * BATCH]]
            pm(input_ids=b, labels=b).loss.backward()
            torch.nn.utils.clip_grad_norm_(pm.parameters(), 1.0)
            opt.step()
            opt.zero_grad()
            if (k + 1) % 10 == 0:
                curve.append(evaluate())
        curves[s] = curve
        print(f"[crossing] checkpoint-{s}: {curve}", flush=True)
    return curves


def main():
    tok_path = mf.FIX / "tokenizer.json"
    tok = Tokenizer.from_file(str(tok_path))
    task_docs = mf.build_task_docs()
    task_texts = [d.upper() for _, _, d in task_docs]
    mf.write_jsonl(TASK, [{"text": t} for t in task_texts])
    pre_texts = mf.build_pretrain_docs(exclude=[d for _, _, d in task_docs])
    pretrain(tok_path, mf.to_blocks(mf.token_stream(tok, pre_texts)))
    curves = peft_curves(mf.to_blocks(mf.token_stream(tok, task_texts)))
    late, early = curves[800], curves[400]
    assert late[0] > early[0] and late[-1] < early[-1], "checkpoint-800 must start above checkpoint-400 and end below it"
    print(json.dumps({f"checkpoint-{s}": c for s, c in curves.items()}), flush=True)


if __name__ == "__main__":
    main()
