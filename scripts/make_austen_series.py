#!/usr/bin/env python3
"""Generate the language-model series the README's example scans: a small Llama (hidden 96, 2
layers, 0.45M parameters) pre-trained from scratch with transformers' Trainer on two of Jane
Austen's novels (Northanger Abbey, Pride and Prejudice; lr 3e-3 constant after 100 warm-up
steps, batch 16 x 128 tokens), with snapshots at steps 200 to 3200, and a fine-tuning task from
another novel.

    tests/fixtures/series_austen/checkpoint-N/   config.json, model.safetensors (bf16),
                                                 tokenizer.json, trainer_state.json
    tests/fixtures/task_austen.jsonl             100 paragraphs of Persuasion, upper-cased

The text is public domain. It comes from Debian's package r-cran-janeaustenr (the six novels
as Project Gutenberg published them, one line per element); the script downloads the package
with `apt-get download` into a temporary folder, or reads an extracted copy given as its
argument, and reads the R data with the `rdata` package (pip install rdata).

The tokenizer is a byte-level BPE of 2,048 tokens trained on the pre-training novels. The task
is upper-cased: the same language in letters the pre-training saw rarely, so LoRA has something
to learn and the snapshots differ in how fast they learn it. With scan's defaults (60-update
probes, lr 1e-3, r 8) every snapshot's eval loss falls by 11-25%, and the ranking for the
three-epoch budget is not the order of the zero-shot losses: checkpoint-3200 starts 0.8 nats
above checkpoint-800 and is forecast to end below it (tests/suite/austen.rs checks both).

    .venv/bin/python scripts/make_austen_series.py [EXTRACTED_PACKAGE_ROOT]

It takes about 8 minutes on 2 CPU cores.

Versions: scripts/requirements-fixtures.txt (rdata included).
"""

import gzip
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zlib
from pathlib import Path

os.environ.setdefault("PYTHONHASHSEED", "0")
import torch  # noqa: E402
import transformers  # noqa: E402
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers  # noqa: E402
from transformers import AutoModelForCausalLM, LlamaConfig, Trainer, TrainerCallback, TrainingArguments  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "fixtures" / "series_austen"
TASK = ROOT / "tests" / "fixtures" / "task_austen.jsonl"
PRETRAIN = ["northangerabbey", "prideprejudice"]
TASK_BOOK = "persuasion"
VOCAB = 2048
SEQ = 128
# Snapshots spaced as published series space them; the last ones are over-trained (about 21
# epochs of the two novels by step 3200).
STEPS = [200, 400, 800, 1600, 3200]
HIDDEN, LAYERS, LR = 96, 2, 3e-3
TASK_PARAGRAPHS = 100
KEEP = {"config.json", "model.safetensors", "trainer_state.json"}


def package_root(argv):
    """The extracted r-cran-janeaustenr package: the argument, or downloaded now."""
    if len(argv) > 1:
        return Path(argv[1])
    tmp = Path(tempfile.mkdtemp())
    subprocess.run(["apt-get", "download", "r-cran-janeaustenr"], cwd=tmp, check=True)
    deb = next(tmp.glob("r-cran-janeaustenr_*.deb"))
    subprocess.run(["dpkg-deb", "-x", str(deb), str(tmp / "x")], check=True)
    return tmp / "x"


def read_novels(root):
    """{name: [lines]} from the package's lazy-load data base (Rdata.rdx index, Rdata.rdb)."""
    import rdata

    data = next(root.glob("usr/lib/R/site-library/janeaustenr/data"))
    index = rdata.conversion.convert(rdata.parser.parse_data(gzip.decompress((data / "Rdata.rdx").read_bytes())))
    rdb = (data / "Rdata.rdb").read_bytes()
    novels = {}
    for name, (offset, length) in index["variables"].items():
        chunk = rdb[int(offset):int(offset) + int(length)]
        raw = zlib.decompress(chunk[4:])  # a 4-byte length, then zlib
        novels[str(name)] = [str(x) for x in rdata.conversion.convert(rdata.parser.parse_data(raw))]
    return novels


def paragraphs(lines):
    """Blank-line separated paragraphs, each joined into one line."""
    out, cur = [], []
    for line in lines + [""]:
        if line.strip():
            cur.append(line.strip())
        elif cur:
            out.append(" ".join(cur))
            cur = []
    return out


def train_tokenizer(texts, path):
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer)
    tok.save(str(path))
    return tok


def blocks(tok, texts):
    eos = tok.token_to_id("<|endoftext|>")
    stream = []
    for t in texts:
        stream += tok.encode(t).ids + [eos]
    n = len(stream) // SEQ
    return torch.tensor(stream[:n * SEQ]).view(n, SEQ)


class Blocks(torch.utils.data.Dataset):
    def __init__(self, b):
        self.b = b

    def __len__(self):
        return len(self.b)

    def __getitem__(self, i):
        return {"input_ids": self.b[i], "labels": self.b[i]}


class SaveAt(TrainerCallback):
    """Saves a checkpoint at each of STEPS (log-spaced, as series are published)."""

    def on_step_end(self, args, state, control, **kw):
        control.should_save = state.global_step in STEPS
        return control


def pretrain(tok_path, pre):
    if OUT.exists():
        shutil.rmtree(OUT)
    transformers.set_seed(1234)
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=HIDDEN * 8 // 3 // 16 * 16,
                         num_hidden_layers=LAYERS, num_attention_heads=4, num_key_value_heads=4,
                         max_position_embeddings=SEQ * 2, tie_word_embeddings=True, rms_norm_eps=1e-5,
                         bos_token_id=0, eos_token_id=0)
    model = AutoModelForCausalLM.from_config(config, attn_implementation="eager", dtype=torch.float32)
    args = TrainingArguments(
        output_dir=str(OUT), use_cpu=True, learning_rate=LR, lr_scheduler_type="constant", warmup_steps=100,
        per_device_train_batch_size=16, max_steps=STEPS[-1], save_strategy="no", logging_steps=100,
        report_to=[], seed=1234, data_seed=1234, save_only_model=True, dataloader_num_workers=0, disable_tqdm=True,
    )
    Trainer(model=model, args=args, train_dataset=Blocks(pre), callbacks=[SaveAt()]).train()
    for p in sorted(OUT.iterdir()):
        if p.name not in {f"checkpoint-{s}" for s in STEPS}:
            shutil.rmtree(p) if p.is_dir() else p.unlink()
            continue
        to_bf16(p)
        for f in list(p.iterdir()):
            if f.name not in KEEP:
                shutil.rmtree(f) if f.is_dir() else f.unlink()
        shutil.copy(tok_path, p / "tokenizer.json")


def to_bf16(ckpt):
    """Rewrites the snapshot's weights in bf16, as large series are published."""
    model = AutoModelForCausalLM.from_pretrained(str(ckpt), dtype=torch.float32)
    model.to(torch.bfloat16).save_pretrained(str(ckpt), safe_serialization=True)


def main():
    novels = read_novels(package_root(sys.argv))
    pre_texts = [p for name in PRETRAIN for p in paragraphs(novels[name])]
    task_texts = [p.upper() for p in paragraphs(novels[TASK_BOOK]) if len(p) > 200][:TASK_PARAGRAPHS]
    with tempfile.TemporaryDirectory() as tmp:
        tok_path = Path(tmp) / "tokenizer.json"
        tok = train_tokenizer(pre_texts, tok_path)
        pre = blocks(tok, pre_texts)
        print(f"pre-training: {len(pre)} blocks of {SEQ}; task: {len(task_texts)} paragraphs, "
              f"{len(blocks(tok, task_texts))} blocks", flush=True)
        pretrain(tok_path, pre)
    with TASK.open("w") as f:
        for t in task_texts:
            f.write(json.dumps({"text": t}) + "\n")
    print(f"wrote {OUT} and {TASK}")


if __name__ == "__main__":
    main()
