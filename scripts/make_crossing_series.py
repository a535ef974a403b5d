#!/usr/bin/env python3
"""Generate the checkpoint series whose fine-tuning the tests forecast, and the long PEFT runs
that check the forecasts.

For each of three architectures a tiny model (hidden 32, 2 layers, 4 heads) is pre-trained from
scratch with transformers' Trainer on the fixture pre-training corpus (stdlib docstrings, as
``make_fixtures.py`` builds it), and checkpoints 100, 200, 400 and 800 are kept:

    tests/fixtures/series_crossing/     Llama (tied embeddings)
    tests/fixtures/series_gpt2/         GPT-2 (dropouts 0)
    tests/fixtures/series_gpt_neox/     GPT-NeoX (parallel residual, dropouts 0)

The task, ``tests/fixtures/task_upper.jsonl``, is the fixture task upper-cased: the same kind of
text in tokens the pre-training rarely saw. Every checkpoint is then fine-tuned with PEFT as the
tests scan it (LoRA r 8, alpha 8 on PEFT's default targets, AdamW lr 3e-3 without weight decay,
clipping at 1, batch 8 x 32 tokens, the last 8 blocks held out) for three epochs of the task's
training blocks (the scan's default budget), evaluating every 10 updates, at lr 3e-3 and again at
1e-3; the curves go to ``tests/fixtures/expected/long_runs/<series>_lr<lr>.json``. On the Llama
series checkpoint-800 starts above checkpoint-400 and ends below it (asserted): curves that
cross. At lr 1e-3 checkpoint-800 ends three epochs lower (asserted), while a 60-update probe's
own ranking (speed to the median final loss) puts checkpoint-400 first: a ranking the budget
reverses (tests/suite/forecast.rs checks both).

Run it after make_fixtures.py (about a minute on 2 CPU cores):

    .venv/bin/python scripts/make_crossing_series.py

Versions: as make_fixtures.py (scripts/requirements-fixtures.txt).
"""

import json
import math
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_fixtures as mf  # noqa: E402  (re-executes with a fixed hash seed, chdirs to the repo root)

import torch  # noqa: E402
import transformers  # noqa: E402
from peft import LoraConfig, get_peft_model  # noqa: E402
from peft.utils import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING  # noqa: E402
from tokenizers import Tokenizer  # noqa: E402
from transformers import AutoModelForCausalLM, GPT2Config, GPTNeoXConfig, LlamaConfig, Trainer, TrainingArguments  # noqa: E402

TASK = mf.FIX / "task_upper.jsonl"
LONG_RUNS = mf.FIX / "expected" / "long_runs"
STEPS = [100, 200, 400, 800]
KEEP = {"config.json", "model.safetensors", "trainer_state.json"}
# The fine-tunes the tests scan: --lr 3e-3 or 1e-3 --seq-len 32 --eval-blocks 8 (r 8, alpha 8,
# batch 8, eval every 10), for the default budget of three epochs.
LRS, BATCH, EVAL_BLOCKS, EPOCHS = ["3e-3", "1e-3"], 8, 8, 3
COMMON = dict(vocab_size=mf.VOCAB_SIZE, bos_token_id=mf.EOS_ID, eos_token_id=mf.EOS_ID)
SERIES = {
    "series_crossing": LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                                   num_key_value_heads=4, max_position_embeddings=128, tie_word_embeddings=True,
                                   rms_norm_eps=1e-5, **COMMON),
    "series_gpt2": GPT2Config(n_embd=32, n_inner=64, n_layer=2, n_head=4, n_positions=128, tie_word_embeddings=True,
                              attn_pdrop=0.0, resid_pdrop=0.0, embd_pdrop=0.0, **COMMON),
    "series_gpt_neox": GPTNeoXConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                                     max_position_embeddings=128, use_parallel_residual=True, attention_dropout=0.0,
                                     hidden_dropout=0.0, tie_word_embeddings=False, **COMMON),
}


def pretrain(out, config, tok_path, pre_blocks):
    if out.exists():
        shutil.rmtree(out)
    transformers.set_seed(1234)
    model = AutoModelForCausalLM.from_config(config, attn_implementation="eager", dtype=torch.float32)
    args = TrainingArguments(
        output_dir=str(out), use_cpu=True, learning_rate=3e-3, lr_scheduler_type="constant",
        per_device_train_batch_size=16, max_steps=STEPS[-1], save_steps=STEPS[0], logging_steps=25,
        report_to=[], seed=1234, data_seed=1234, save_only_model=True, dataloader_num_workers=0,
        disable_tqdm=True,
    )
    Trainer(model=model, args=args, train_dataset=mf.BlockDataset(pre_blocks)).train()
    for p in list(out.iterdir()):
        keep = p.name in {f"checkpoint-{s}" for s in STEPS}
        if not keep:
            shutil.rmtree(p) if p.is_dir() else p.unlink()
            continue
        for f in list(p.iterdir()):
            if f.name not in KEEP:
                shutil.rmtree(f) if f.is_dir() else f.unlink()
        shutil.copy(tok_path, p / "tokenizer.json")


def peft_curves(out, task_blocks, updates, lr):
    """[step, eval loss] every 10 updates of a PEFT fine-tune of every checkpoint."""
    train, ev = task_blocks[:-EVAL_BLOCKS], task_blocks[-EVAL_BLOCKS:]
    g = torch.Generator().manual_seed(0)
    order = torch.cat([torch.randperm(len(train), generator=g) for _ in range(updates * BATCH // len(train) + 2)])
    curves = {}
    for s in STEPS:
        model = AutoModelForCausalLM.from_pretrained(str(out / f"checkpoint-{s}"), dtype=torch.float32, attn_implementation="eager")
        targets = list(TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING[model.config.model_type])
        torch.manual_seed(0)
        pm = get_peft_model(model, LoraConfig(r=8, lora_alpha=8, lora_dropout=0.0, target_modules=targets))
        opt = torch.optim.AdamW([p for p in pm.parameters() if p.requires_grad], lr=lr, weight_decay=0.0)

        def evaluate():
            pm.eval()
            with torch.no_grad():
                loss = pm(input_ids=ev, labels=ev).loss.item()
            pm.train()
            return round(loss, 5)

        curve = [[0, evaluate()]]
        for k in range(updates):
            b = train[order[k * BATCH:(k + 1) * BATCH]]
            pm(input_ids=b, labels=b).loss.backward()
            torch.nn.utils.clip_grad_norm_(pm.parameters(), 1.0)
            opt.step()
            opt.zero_grad()
            if (k + 1) % 10 == 0 or k + 1 == updates:
                curve.append([k + 1, evaluate()])
        curves[f"checkpoint-{s}"] = curve
        print(f"[long run] {out.name}/checkpoint-{s} lr {lr}: {curve[0][1]} -> {curve[6][1]} at 60 -> {curve[-1][1]} at {updates}", flush=True)
    return curves


def main():
    tok_path = mf.FIX / "tokenizer.json"
    tok = Tokenizer.from_file(str(tok_path))
    task_docs = mf.build_task_docs()
    task_texts = [d.upper() for _, _, d in task_docs]
    mf.write_jsonl(TASK, [{"text": t} for t in task_texts])
    pre_blocks = mf.to_blocks(mf.token_stream(tok, mf.build_pretrain_docs(exclude=[d for _, _, d in task_docs])))
    task_blocks = mf.to_blocks(mf.token_stream(tok, task_texts))
    updates = math.ceil(EPOCHS * (len(task_blocks) - EVAL_BLOCKS) / BATCH)
    LONG_RUNS.mkdir(parents=True, exist_ok=True)
    for name, config in SERIES.items():
        out = mf.FIX / name
        pretrain(out, config, tok_path, pre_blocks)
        for lr in LRS:
            curves = peft_curves(out, task_blocks, updates, float(lr))
            late, early = curves["checkpoint-800"], curves["checkpoint-400"]
            if name == "series_crossing" and lr == "3e-3":
                assert late[0][1] > early[0][1] and late[6][1] < early[6][1], "checkpoint-800 must start above checkpoint-400 and be below it by 60 updates"
            if name == "series_crossing" and lr == "1e-3":
                assert late[-1][1] < early[-1][1], "checkpoint-800 must end three epochs below checkpoint-400"
            mf.dump_json(LONG_RUNS / f"{name}_lr{lr}.json", {
                "updates": updates, "epochs": EPOCHS, "lr": float(lr), "batch_size": BATCH, "seq_len": mf.SEQ_LEN,
                "eval_blocks": EVAL_BLOCKS, "rank": 8, "alpha": 8, "curves": curves, **mf.VERSIONS,
            })


if __name__ == "__main__":
    main()
