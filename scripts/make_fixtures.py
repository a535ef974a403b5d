#!/usr/bin/env python3
"""Generate the reference fixtures under ``tests/fixtures/`` for plasticity's Rust tests.

The Rust test-suite never runs Python: it reads the committed files this script
writes and compares its own forward pass / LoRA training against the numbers
recorded here (computed with Hugging Face transformers + PEFT).

Run it (from anywhere; it chdir()s to the repository root; ~20 s on 2 CPU cores):

    .venv/bin/python scripts/make_fixtures.py            # generate + self-check
    .venv/bin/python scripts/make_fixtures.py --no-check # skip the self-check

Versions used to produce the committed fixtures (see
``scripts/requirements-fixtures.txt`` for the full pinned set):

    Python        3.11.7   (the corpora are stdlib docstrings, so the Python
                            version determines the text!)
    torch         2.15.0   (CPU)
    transformers  5.24.0
    peft          0.21.2
    tokenizers    0.23.3
    safetensors   0.8.0
    accelerate    1.15.0   (needed by transformers.Trainer)

Everything is created locally (no model hub, no network): the tokenizer is
trained on standard-library docstrings, the models are random-init from
configs, and the checkpoint series is trained from scratch.  All randomness is
seeded, torch runs single-threaded and the script re-executes itself with
PYTHONHASHSEED=0, so two runs produce identical ``expected/*.json``,
``peft/*/expected.json`` and safetensors files.

Layout written (see tests/fixtures/README.md for details):

    tests/fixtures/tokenizer.json                 byte-level BPE, vocab 512, <|endoftext|> = 0
    tests/fixtures/task.jsonl                     {"text": ...} documents (fine-tuning task)
    tests/fixtures/task_prompt.jsonl              {"prompt": ..., "completion": ...}
    tests/fixtures/models/<name>/                 tiny random-init checkpoints
    tests/fixtures/expected/<name>.json           logits + eval loss for each model
    tests/fixtures/expected/task_tokens.json      tokenisation check of task.jsonl
    tests/fixtures/peft/<name>/                   initial adapter, batches, expected training trace
    tests/fixtures/series/checkpoint-*/           a real Trainer pre-training series (GPT-NeoX)

tests/fixtures/README.md is hand-written (not generated) and is left untouched.
At the end, ``self_check`` re-derives every expected number independently (float64
numpy forward passes from config.json + safetensors, and a hand-written AdamW
replay of the PEFT traces) and asserts agreement.
"""

import os
import sys

# Determinism: PEFT stores target_modules as a *set*; its JSON order depends on
# str hashing.  Re-exec once with a fixed hash seed so every run is identical.
if os.environ.get("PYTHONHASHSEED") != "0":
    os.environ["PYTHONHASHSEED"] = "0"
    os.execv(sys.executable, [sys.executable] + sys.argv)

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import glob
import importlib
import inspect
import json
import math
import re
import shutil
import warnings
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

import peft
import tokenizers
import transformers
from peft import LoraConfig, get_peft_model
from peft.utils import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    AutoModelForCausalLM,
    BloomConfig,
    GPT2Config,
    GPTNeoXConfig,
    LlamaConfig,
    MistralConfig,
    Olmo2Config,
    Olmo3Config,
    OlmoConfig,
    Qwen2Config,
    Trainer,
    TrainingArguments,
)

warnings.filterwarnings("ignore")
transformers.logging.set_verbosity_error()
torch.set_num_threads(1)
torch.use_deterministic_algorithms(True)

ROOT = Path(__file__).resolve().parent.parent
# Work from the repository root with *relative* paths, so that e.g. PEFT's
# adapter_config.json records base_model_name_or_path = "tests/fixtures/models/<name>"
# instead of an absolute, machine-specific path.
os.chdir(ROOT)
FIX = Path("tests") / "fixtures"

VOCAB_SIZE = 512
EOS_ID = 0
SEQ_LEN = 32
EVAL_BLOCKS = 4
INIT_STD = 0.1  # initializer_range for the random-init parity models
NOISE_STD = 0.1  # noise added to every 1-D parameter (biases, norm weights)

VERSIONS = {
    "transformers_version": transformers.__version__,
    "torch_version": torch.__version__,
}

# ---------------------------------------------------------------------------
# Text corpora: stdlib docstrings (deterministic for a fixed Python version).
# ---------------------------------------------------------------------------

# Fine-tuning task documents (task.jsonl / task_prompt.jsonl).
TASK_MODULES = [
    "textwrap", "json", "collections", "functools", "itertools", "posixpath",
    "shutil", "heapq", "bisect", "fnmatch", "glob", "difflib", "string",
    "base64", "statistics", "random", "contextlib", "copy", "operator", "pprint",
    "os", "math", "struct", "binascii", "zlib", "html", "warnings", "traceback",
    "reprlib", "sys", "time", "pkgutil", "dis", "pydoc", "sysconfig", "runpy",
    "platform", "importlib", "site",
]
# Pre-training corpus for the tokenizer and the checkpoint series.  Disjoint
# module set; documents are additionally de-duplicated against the task set.
PRETRAIN_MODULES = [
    "argparse", "logging", "subprocess", "pathlib", "datetime", "decimal",
    "fractions", "csv", "configparser", "unittest", "threading", "tarfile",
    "zipfile", "pickle", "re", "enum", "dataclasses", "inspect", "ast",
    "tokenize", "calendar", "locale", "gettext", "optparse", "sched", "queue",
    "selectors", "smtplib", "ftplib", "imaplib", "mailbox", "mimetypes",
    "uuid", "hashlib", "hmac", "secrets", "tempfile", "filecmp", "pdb",
    "doctest", "trace", "timeit", "codecs", "weakref", "types", "numbers",
    "typing", "urllib.parse", "http.client", "email.message", "socket",
    "asyncio", "gzip", "bz2", "lzma", "sqlite3", "xml.dom.minidom",
    "wave", "colorsys", "ipaddress", "shlex", "getopt", "netrc", "plistlib",
]

TASK_N_DOCS = 60
TASK_MIN_CHARS, TASK_MAX_CHARS = 200, 1500
PROMPT_N = 40
PRETRAIN_MIN_CHARS, PRETRAIN_MAX_CHARS = 80, 4000


def _public_members(modname, with_methods):
    """(qualified name, kind, docstring) for public objects defined in ``modname``."""
    mod = importlib.import_module(modname)
    out = []
    mdoc = inspect.getdoc(mod)
    if mdoc:
        out.append((modname, "module", mdoc))
    for name in sorted(dir(mod)):
        if name.startswith("_"):
            continue
        obj = getattr(mod, name)
        if not (inspect.isfunction(obj) or inspect.isclass(obj) or inspect.isbuiltin(obj)):
            continue
        if getattr(obj, "__module__", None) != mod.__name__:
            continue  # re-exported from somewhere else
        kind = "class" if inspect.isclass(obj) else "function"
        doc = inspect.getdoc(obj)
        if doc:
            out.append((f"{modname}.{name}", kind, doc))
        if with_methods and inspect.isclass(obj):
            for mname in sorted(vars(obj)):
                if mname.startswith("_"):
                    continue
                meth = vars(obj)[mname]
                if not (inspect.isfunction(meth) or inspect.ismethoddescriptor(meth)):
                    continue
                mdoc = meth.__doc__
                if mdoc:
                    out.append((f"{modname}.{name}.{mname}", "method", inspect.cleandoc(mdoc)))
    return out


def build_task_docs():
    cands, seen = [], set()
    for m in TASK_MODULES:
        for q, kind, doc in _public_members(m, with_methods=False):
            if kind == "module" or doc in seen:
                continue
            if TASK_MIN_CHARS <= len(doc) <= TASK_MAX_CHARS:
                seen.add(doc)
                cands.append((q, kind, doc))
    # Keep the TASK_N_DOCS longest (ties: original order), then restore the
    # original (module, name) order.
    idx = sorted(range(len(cands)), key=lambda i: (-len(cands[i][2]), i))[:TASK_N_DOCS]
    return [cands[i] for i in sorted(idx)]


def build_pretrain_docs(exclude):
    docs, seen = [], set(exclude)
    for m in PRETRAIN_MODULES:
        for q, kind, doc in _public_members(m, with_methods=True):
            if doc in seen:
                continue
            if PRETRAIN_MIN_CHARS <= len(doc) <= PRETRAIN_MAX_CHARS:
                seen.add(doc)
                docs.append(doc)
    return docs


def first_sentence(doc):
    para = re.split(r"\n\s*\n", doc.strip())[0]
    para = " ".join(para.split())
    m = re.search(r"(?<=[.!?])\s", para)
    return para[: m.start()] if m else para


def build_prompts(task_docs):
    rows = []
    for q, kind, doc in task_docs:
        s = first_sentence(doc)
        if kind != "function" or not (20 <= len(s) <= 250) or not s.endswith("."):
            continue
        rows.append({"prompt": f"Q: what does {q} do?\nA:", "completion": " " + s})
    if len(rows) < PROMPT_N:  # fall back to classes too
        for q, kind, doc in task_docs:
            s = first_sentence(doc)
            if kind == "class" and 20 <= len(s) <= 250 and s.endswith("."):
                rows.append({"prompt": f"Q: what does {q} do?\nA:", "completion": " " + s})
    return rows[:PROMPT_N]


def write_jsonl(path, rows):
    with open(path, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


# ---------------------------------------------------------------------------
# Tokenizer
# ---------------------------------------------------------------------------


def train_tokenizer(texts, path):
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        min_frequency=2,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    assert tok.get_vocab_size() == VOCAB_SIZE, tok.get_vocab_size()
    assert tok.token_to_id("<|endoftext|>") == EOS_ID
    assert tok.post_processor is None
    tok.save(str(path))
    return Tokenizer.from_file(str(path))


def token_stream(tok, texts):
    ids = []
    for t in texts:
        ids.extend(tok.encode(t, add_special_tokens=False).ids)
        ids.append(EOS_ID)
    return ids


def to_blocks(stream, seq_len=SEQ_LEN):
    n = len(stream) // seq_len
    return torch.tensor(stream[: n * seq_len], dtype=torch.int64).view(n, seq_len)


# ---------------------------------------------------------------------------
# JSON float helpers
# ---------------------------------------------------------------------------


class F32Array:
    """Marker: serialise a float32 tensor as a compact flat JSON list."""

    def __init__(self, t):
        self.a = t.detach().to(torch.float32).reshape(-1).numpy().copy()


def f32_json_list(a):
    """Shortest decimal strings that round-trip to the exact float32 values.

    Each string parses back to the identical float32 both when parsed directly
    as f32 (correctly rounded, e.g. Rust's ``str::parse::<f32>``) and when
    parsed as f64 and then cast to f32 (e.g. serde_json into ``f32``); this is
    asserted below.  (Python's ``float`` repr of an f32 would be ~2x longer.)
    """
    assert np.all(np.isfinite(a))
    strs = [np.format_float_scientific(x, unique=True, trim="-") if (x != 0 and not 1e-4 <= abs(x) < 1e6)
            else np.format_float_positional(x, unique=True, trim="-") for x in a]
    back64 = np.array([float(s) for s in strs], dtype=np.float64)
    assert np.array_equal(back64.astype(np.float32).view(np.uint32), a.view(np.uint32))
    return "[" + ",".join(strs) + "]"


def dump_json(path, obj):
    """json.dump with indent=1, except F32Array values which go on one compact line."""
    raw = {}
    plain = {}
    for k, v in obj.items():
        if isinstance(v, F32Array):
            raw[k] = f32_json_list(v.a)
            plain[k] = f"@@RAW:{k}@@"
        else:
            plain[k] = v
    text = json.dumps(plain, indent=1)
    for k, r in raw.items():
        text = text.replace(json.dumps(f"@@RAW:{k}@@"), r)
    with open(path, "w", encoding="utf-8") as f:
        f.write(text + "\n")
    # Self-check: the file parses and float arrays come back bit-exact.
    back = json.loads(Path(path).read_text())
    for k, v in obj.items():
        if isinstance(v, F32Array):
            assert np.array_equal(np.array(back[k], dtype=np.float64).astype(np.float32).view(np.uint32),
                                  v.a.view(np.uint32)), k


# ---------------------------------------------------------------------------
# Tiny random-init models
# ---------------------------------------------------------------------------

COMMON = dict(
    vocab_size=VOCAB_SIZE,
    max_position_embeddings=128,
    num_hidden_layers=2,
    hidden_size=64,
    bos_token_id=EOS_ID,
    eos_token_id=EOS_ID,
    initializer_range=INIT_STD,
)


def model_specs():
    llama = dict(COMMON, num_attention_heads=4, num_key_value_heads=2, intermediate_size=176,
                 rms_norm_eps=1e-6)
    bloom = dict(vocab_size=VOCAB_SIZE, hidden_size=64, n_layer=2, bos_token_id=EOS_ID, eos_token_id=EOS_ID,
                 initializer_range=INIT_STD, layer_norm_epsilon=1e-5, hidden_dropout=0.0, attention_dropout=0.0)
    olmo = dict(COMMON, num_attention_heads=4, num_key_value_heads=2, intermediate_size=176,
                attention_bias=False)
    neox = dict(COMMON, num_attention_heads=4, intermediate_size=256, tie_word_embeddings=False,
                attention_dropout=0.0, hidden_dropout=0.0)
    return [
        # name, config, seed, save dtype, max_shard_size
        ("llama_gqa", LlamaConfig(**llama, tie_word_embeddings=False,
                                  rope_parameters={"rope_type": "default", "rope_theta": 10000.0}),
         1001, torch.float32, None),
        ("llama_tied_bf16", LlamaConfig(**llama, tie_word_embeddings=True,
                                        rope_parameters={"rope_type": "default", "rope_theta": 500000.0}),
         1002, torch.bfloat16, None),
        ("qwen2", Qwen2Config(**dict(llama, rms_norm_eps=1e-6), tie_word_embeddings=True,
                              use_sliding_window=False, sliding_window=None,
                              rope_parameters={"rope_type": "default", "rope_theta": 10000.0}),
         1003, torch.float32, None),
        ("mistral", MistralConfig(**dict(llama, num_key_value_heads=1), tie_word_embeddings=False,
                                  sliding_window=None,
                                  rope_parameters={"rope_type": "default", "rope_theta": 10000.0}),
         1004, torch.float32, None),
        ("gpt_neox_parallel", GPTNeoXConfig(**neox, use_parallel_residual=True,
                                            rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                                             "partial_rotary_factor": 0.25}),
         1005, torch.float32, None),
        ("gpt_neox_sequential", GPTNeoXConfig(**neox, use_parallel_residual=False,
                                              rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                                               "partial_rotary_factor": 0.5}),
         1006, torch.float32, None),
        ("gpt2", GPT2Config(vocab_size=VOCAB_SIZE, n_embd=64, n_layer=2, n_head=4, n_positions=128,
                            bos_token_id=EOS_ID, eos_token_id=EOS_ID, initializer_range=INIT_STD,
                            resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0),
         1007, torch.float32, None),
        ("llama_sharded", LlamaConfig(**llama, tie_word_embeddings=False,
                                      rope_parameters={"rope_type": "default", "rope_theta": 10000.0}),
         1008, torch.float32, "250KB"),
        # OLMo: weightless LayerNorm; clip_qkv low enough that the clamp cuts some q/k/v values
        ("olmo", OlmoConfig(**olmo, clip_qkv=0.35, tie_word_embeddings=False,
                            rope_parameters={"rope_type": "default", "rope_theta": 10000.0}),
         1011, torch.float32, None),
        ("olmo2", Olmo2Config(**olmo, rms_norm_eps=1e-6, tie_word_embeddings=False,
                              rope_parameters={"rope_type": "default", "rope_theta": 500000.0}),
         1012, torch.float32, None),
        # OLMo 3: a sliding layer (window 6, shorter than the 16- and 32-token inputs) then a
        # full one, each layer type with its own rotary settings
        ("olmo3", Olmo3Config(**olmo, rms_norm_eps=1e-6, tie_word_embeddings=False, sliding_window=6,
                              layer_types=["sliding_attention", "full_attention"],
                              rope_parameters={"sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
                                               "full_attention": {"rope_type": "linear", "factor": 2.0,
                                                                  "rope_theta": 500000.0}}),
         1013, torch.float32, None),
        # BLOOM: ALiBi, interleaved query_key_value, embedding LayerNorm, tied head
        ("bloom", BloomConfig(**bloom, n_head=4), 1014, torch.float32, None),
        # six heads (ALiBi's slopes past a power of two), the residual taken after the norms
        ("bloom_post_ln", BloomConfig(**dict(bloom, hidden_size=48), n_head=6,
                                      apply_residual_connection_post_layernorm=True), 1015, torch.float32, None),
    ]


def rope_scaling_specs():
    """Smaller Llamas (1 layer, hidden 32) whose rope_parameters scale the frequencies:
    Llama 3's "llama3" rule and the "linear" rule. Not in the numpy self-check, which only
    knows the default rope; transformers' own forward pass is the reference."""
    small = dict(COMMON, num_hidden_layers=1, hidden_size=32, intermediate_size=64,
                 num_attention_heads=2, num_key_value_heads=1, rms_norm_eps=1e-5)
    llama3 = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
              "high_freq_factor": 4.0, "original_max_position_embeddings": 64}
    linear = {"rope_type": "linear", "rope_theta": 10000.0, "factor": 4.0}
    return [
        ("llama_rope_llama3", LlamaConfig(**small, tie_word_embeddings=True, rope_parameters=llama3),
         1009, torch.float32, None),
        ("llama_rope_linear", LlamaConfig(**small, tie_word_embeddings=True, rope_parameters=linear),
         1010, torch.float32, None),
    ]


def make_pickle():
    """gpt2 again, as a zip-format pytorch_model.bin (torch.save of the state dict), to test
    the pickle reader; its expected numbers are those of models/gpt2."""
    src, d = FIX / "models" / "gpt2", FIX / "models" / "gpt2_pickle"
    if d.exists():
        shutil.rmtree(d)
    d.mkdir(parents=True)
    for f in ["config.json", "tokenizer.json"]:
        shutil.copy(src / f, d / f)
    torch.save(load_f32(src).state_dict(), str(d / "pytorch_model.bin"))


def load_f32(model_dir):
    model, info = AutoModelForCausalLM.from_pretrained(
        str(model_dir), dtype=torch.float32, attn_implementation="eager", output_loading_info=True
    )
    bad = {k: v for k, v in info.items() if v}
    assert not bad, f"{model_dir}: loading info {bad}"
    for p in model.parameters():
        assert p.dtype == torch.float32
    return model


def make_models(tok_path, eval_blocks):
    torch.manual_seed(4242)
    input_ids = torch.randint(1, VOCAB_SIZE, (2, 16), dtype=torch.int64)
    (FIX / "models").mkdir(parents=True, exist_ok=True)
    (FIX / "expected").mkdir(parents=True, exist_ok=True)
    for name, config, seed, dtype, shard in model_specs() + rope_scaling_specs():
        d = FIX / "models" / name
        if d.exists():
            shutil.rmtree(d)
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, attn_implementation="eager", dtype=torch.float32)
        # Non-trivial biases / norm weights: add noise to every 1-D parameter.
        gen = torch.Generator().manual_seed(seed + 50000)
        with torch.no_grad():
            for pname, p in model.named_parameters():
                if p.dim() == 1:
                    p.add_(torch.randn(p.shape, generator=gen) * NOISE_STD)
        model.to(dtype)
        kw = {"max_shard_size": shard} if shard else {}
        model.save_pretrained(str(d), **kw)
        shutil.copy(tok_path, d / "tokenizer.json")
        if shard:
            shards = sorted(glob.glob(str(d / "model-*-of-*.safetensors")))
            assert (d / "model.safetensors.index.json").exists() and 2 <= len(shards) <= 3, shards
        del model

        # Expected values always come from what is on disk, loaded in f32.
        model = load_f32(d)
        model.eval()
        with torch.no_grad():
            logits = model(input_ids=input_ids).logits
            loss = model(input_ids=eval_blocks, labels=eval_blocks).loss
        assert logits.shape == (2, 16, VOCAB_SIZE) and logits.dtype == torch.float32
        out = {
            "input_ids": input_ids.tolist(),
            "logits_shape": list(logits.shape),
            "logits": F32Array(logits),
            "eval_loss": float(loss.item()),
            "seq_len": SEQ_LEN,
            "eval_blocks": EVAL_BLOCKS,
            **VERSIONS,
        }
        dump_json(FIX / "expected" / f"{name}.json", out)
        print(f"[models] {name:22s} logits std {logits.std().item():.4f} "
              f"eval_loss {loss.item():.5f}", flush=True)


# ---------------------------------------------------------------------------
# PEFT LoRA parity traces
# ---------------------------------------------------------------------------

PEFT_MODELS = ["llama_gqa", "gpt_neox_parallel", "gpt2", "qwen2", "olmo", "olmo2", "olmo3", "bloom"]
# PEFT has no default targets for these model types (it asks for target_modules); plasticity
# adapts Llama's, and so do the traces.
DEFAULT_TARGETS = {"olmo": ["q_proj", "v_proj"], "olmo2": ["q_proj", "v_proj"], "olmo3": ["q_proj", "v_proj"]}
PEFT_STEPS, PEFT_BATCH = 10, 4
LR, RANK, ALPHA, MAX_GRAD_NORM = 1e-3, 8, 16, 1.0
BETAS, EPS, WD = (0.9, 0.999), 1e-8, 0.0
LORA_B_STD = 0.02


def make_peft(train_blocks):
    # Deterministic batches: two distinct batches of 4 blocks (a seeded choice
    # among the non-eval task blocks), alternated A B A B ... over the 10 steps.
    # With 10 *different* batches the per-batch loss variance hides the tiny
    # training signal of a random-init model; with A/B alternation both the
    # even and the odd loss sub-sequences must decrease (asserted below), and
    # replaying the wrong step's batch is still detected.
    g = torch.Generator().manual_seed(777)
    perm = torch.randperm(train_blocks.shape[0], generator=g)[: 2 * PEFT_BATCH]
    ab = train_blocks[perm].reshape(2, PEFT_BATCH, SEQ_LEN)
    batches = torch.stack([ab[s % 2] for s in range(PEFT_STEPS)]).contiguous()
    for i, name in enumerate(PEFT_MODELS):
        d = FIX / "peft" / name
        if d.exists():
            shutil.rmtree(d)
        d.mkdir(parents=True)
        save_file({"input_ids": batches.clone(), "labels": batches.clone()}, str(d / "batches.safetensors"))

        base = load_f32(FIX / "models" / name)
        model_type = base.config.model_type
        targets = list(TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING.get(model_type)
                       or DEFAULT_TARGETS[model_type])
        cfg = LoraConfig(r=RANK, lora_alpha=ALPHA, lora_dropout=0.0, target_modules=targets,
                         bias="none", task_type="CAUSAL_LM")
        model = get_peft_model(base, cfg)
        # PEFT initialises lora_B to zero; make it non-zero so the B path is exercised.
        gen = torch.Generator().manual_seed(9000 + i)
        with torch.no_grad():
            for pname, p in model.named_parameters():
                if "lora_B" in pname:
                    p.copy_(torch.randn(p.shape, generator=gen) * LORA_B_STD)
        model.save_pretrained(str(d))  # the start of training
        (d / "README.md").unlink(missing_ok=True)  # PEFT's auto-generated model card

        params = [p for p in model.parameters() if p.requires_grad]
        names = [n for n, p in model.named_parameters() if p.requires_grad]
        assert names and all("lora_" in n for n in names), names
        opt = torch.optim.AdamW(params, lr=LR, betas=BETAS, eps=EPS, weight_decay=WD)
        model.train()
        losses, grad_norms = [], []
        for step in range(PEFT_STEPS):
            b = batches[step]
            loss = model(input_ids=b, labels=b).loss
            losses.append(float(loss.item()))
            loss.backward()
            gn = torch.nn.utils.clip_grad_norm_(params, MAX_GRAD_NORM)
            grad_norms.append(float(gn.item()))
            opt.step()
            opt.zero_grad()
        with torch.no_grad():
            l2 = math.sqrt(sum(float((p.double() ** 2).sum()) for p in params))
        model.save_pretrained(str(d / "final"))  # adapter after the 10 steps (for debugging)
        (d / "final" / "README.md").unlink(missing_ok=True)
        assert all(losses[s + 2] < losses[s] for s in range(PEFT_STEPS - 2)), losses
        out = {
            "lr": LR, "rank": RANK, "alpha": ALPHA, "max_grad_norm": MAX_GRAD_NORM,
            "betas": list(BETAS), "eps": EPS, "weight_decay": WD,
            "targets": targets,
            "steps": PEFT_STEPS, "batch_size": PEFT_BATCH, "seq_len": SEQ_LEN,
            "batch_schedule": "batches.safetensors input_ids[step]; steps alternate between two distinct batches",
            "losses": losses,
            "grad_norms": grad_norms,
            "final_lora_params_l2": l2,
            "trainable_params": names,
            "peft_version": peft.__version__,
            **VERSIONS,
        }
        dump_json(d / "expected.json", out)
        print(f"[peft] {name:20s} losses {losses[0]:.4f} -> {losses[-1]:.4f}  "
              f"grad_norm[0] {grad_norms[0]:.4f}  l2 {l2:.5f}", flush=True)


# ---------------------------------------------------------------------------
# Pre-training checkpoint series (real transformers.Trainer output)
# ---------------------------------------------------------------------------


class BlockDataset(torch.utils.data.Dataset):
    def __init__(self, blocks):
        self.blocks = blocks

    def __len__(self):
        return self.blocks.shape[0]

    def __getitem__(self, i):
        x = self.blocks[i]
        return {"input_ids": x, "labels": x.clone()}


SERIES_KEEP = {"config.json", "model.safetensors", "trainer_state.json", "generation_config.json"}


def make_series(tok_path, pre_blocks):
    out_dir = FIX / "series"
    if out_dir.exists():
        shutil.rmtree(out_dir)
    config = GPTNeoXConfig(
        vocab_size=VOCAB_SIZE, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=256, max_position_embeddings=128, tie_word_embeddings=False,
        use_parallel_residual=True, attention_dropout=0.0, hidden_dropout=0.0,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.25},
        bos_token_id=EOS_ID, eos_token_id=EOS_ID,
    )
    transformers.set_seed(1234)
    model = AutoModelForCausalLM.from_config(config, attn_implementation="eager", dtype=torch.float32)
    args = TrainingArguments(
        output_dir=str(out_dir),
        use_cpu=True,
        learning_rate=3e-3,
        per_device_train_batch_size=16,
        max_steps=120,
        save_steps=30,
        logging_steps=10,
        report_to=[],
        seed=1234,
        data_seed=1234,
        save_only_model=True,
        dataloader_num_workers=0,
        disable_tqdm=True,
    )
    trainer = Trainer(model=model, args=args, train_dataset=BlockDataset(pre_blocks))
    trainer.train()
    ckpts = sorted(p.name for p in out_dir.iterdir() if p.name.startswith("checkpoint-"))
    assert ckpts == ["checkpoint-120", "checkpoint-30", "checkpoint-60", "checkpoint-90"], ckpts
    for p in list(out_dir.iterdir()):
        if not p.name.startswith("checkpoint-"):
            shutil.rmtree(p) if p.is_dir() else p.unlink()
    for c in ckpts:
        cd = out_dir / c
        for f in list(cd.iterdir()):
            if f.name not in SERIES_KEEP:
                shutil.rmtree(f) if f.is_dir() else f.unlink()
        shutil.copy(tok_path, cd / "tokenizer.json")
        state = json.loads((cd / "trainer_state.json").read_text())
        assert any("loss" in e for e in state["log_history"]), c
    (out_dir / "README.txt").write_text(
        "This folder is a checkpoint series written by transformers.Trainer "
        "(tiny GPT-NeoX pre-trained from scratch by scripts/make_fixtures.py).\n"
        "Only the checkpoint-<step>/ sub-folders are checkpoints; this README is not one\n"
        "and checkpoint discovery must skip it (with a warning).\n"
    )
    losses = [(e["step"], round(e["loss"], 4)) for e in
              json.loads((out_dir / "checkpoint-120" / "trainer_state.json").read_text())["log_history"]
              if "loss" in e]
    print(f"[series] {ckpts} train losses {losses}", flush=True)



# ---------------------------------------------------------------------------
# Self-check: independent float64 numpy re-implementation of the forward
# passes (from config.json + safetensors only, textbook formulas) and a manual
# AdamW replay of the PEFT traces.  This both validates the fixtures and
# documents, in runnable form, the conventions the Rust side must follow.
# ---------------------------------------------------------------------------


def _np_weights(d):
    from safetensors.torch import load_file
    files = ([d / "model.safetensors"] if (d / "model.safetensors").exists() else
             [d / f for f in sorted(set(json.loads((d / "model.safetensors.index.json").read_text())
                                        ["weight_map"].values()))])
    w = {}
    for f in files:
        w.update({k: v.to(torch.float64).numpy() for k, v in load_file(str(f)).items()})  # bf16 upcast
    return w


def _rope(x, pos, theta, rot, factor=1.0):
    """HF rotate_half RoPE applied to the first `rot` dims of each head ([T, H, D]); `factor`
    divides the frequencies (the "linear" rule)."""
    inv = 1.0 / (theta ** (np.arange(0, rot, 2) / rot)) / factor
    f = np.outer(pos, inv)
    emb = np.concatenate([f, f], -1)
    cos, sin = np.cos(emb)[:, None, :], np.sin(emb)[:, None, :]
    xr, xp = x[..., :rot], x[..., rot:]
    rh = np.concatenate([-xr[..., rot // 2:], xr[..., : rot // 2]], -1)
    return np.concatenate([xr * cos + rh * sin, xp], -1)


def _attn(q, k, v, window=None):
    """Causal softmax attention, optionally over the last `window` keys (itself included);
    GQA: kv head j serves query heads j*rep .. j*rep+rep-1."""
    T, H, D = q.shape
    rep = H // k.shape[1]
    k, v = np.repeat(k, rep, 1), np.repeat(v, rep, 1)
    mask = np.triu(np.full((T, T), -np.inf), 1)
    if window is not None:
        mask = mask + np.tril(np.full((T, T), -np.inf), -window)
    s = np.einsum("thd,shd->hts", q, k) / math.sqrt(D) + mask
    s = np.exp(s - s.max(-1, keepdims=True))
    s /= s.sum(-1, keepdims=True)
    return np.einsum("hts,shd->thd", s, v).reshape(T, H * D)


def _rms(x, w, eps):
    return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * w


def _ln(x, w, b, eps):
    m = x.mean(-1, keepdims=True)
    return (x - m) / np.sqrt(((x - m) ** 2).mean(-1, keepdims=True) + eps) * w + b


_erf = np.vectorize(math.erf)


def _llama_fwd(cfg, w, ids):  # llama / mistral / qwen2
    H, KV = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    hd, eps = cfg["hidden_size"] // H, cfg["rms_norm_eps"]
    theta = cfg["rope_parameters"]["rope_theta"]

    def lin(x, n):
        return x @ w[n + ".weight"].T + (w[n + ".bias"] if n + ".bias" in w else 0.0)

    x, pos = w["model.embed_tokens.weight"][ids], np.arange(len(ids))
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        h = _rms(x, w[p + "input_layernorm.weight"], eps)
        q = _rope(lin(h, p + "self_attn.q_proj").reshape(-1, H, hd), pos, theta, hd)
        k = _rope(lin(h, p + "self_attn.k_proj").reshape(-1, KV, hd), pos, theta, hd)
        v = lin(h, p + "self_attn.v_proj").reshape(-1, KV, hd)
        x = x + lin(_attn(q, k, v), p + "self_attn.o_proj")
        h = _rms(x, w[p + "post_attention_layernorm.weight"], eps)
        g = lin(h, p + "mlp.gate_proj")
        x = x + lin(g / (1 + np.exp(-g)) * lin(h, p + "mlp.up_proj"), p + "mlp.down_proj")
    x = _rms(x, w["model.norm.weight"], eps)
    return x @ w.get("lm_head.weight", w["model.embed_tokens.weight"]).T  # tied: no lm_head in file


def _olmo_fwd(cfg, w, ids):  # olmo (pre-norm, weightless LayerNorm, clip_qkv) / olmo2, olmo3 (post-norm, q/k norms)
    H, KV = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    hd = cfg["hidden_size"] // H
    olmo2, clip = cfg["model_type"] in ("olmo2", "olmo3"), cfg.get("clip_qkv")
    types = cfg.get("layer_types") or ["full_attention"] * cfg["num_hidden_layers"]

    def rope_of(layer_type):  # (theta, factor) of a layer type: per type in olmo3, one set before
        p = cfg["rope_parameters"].get(layer_type, cfg["rope_parameters"])
        return p["rope_theta"], p.get("factor", 1.0) if p.get("rope_type") == "linear" else 1.0

    def norm(x, name):
        return _rms(x, w[name + ".weight"], cfg["rms_norm_eps"]) if olmo2 else _ln(x, 1.0, 0.0, 1e-5)

    def proj(h, n, norm_name=None):
        y = h @ w[n + ".weight"].T
        y = np.clip(y, -clip, clip) if clip is not None else y
        return norm(y, norm_name) if olmo2 and norm_name else y

    x, pos = w["model.embed_tokens.weight"][ids], np.arange(len(ids))
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        h = x if olmo2 else norm(x, p + "input_layernorm")
        (theta, factor), sliding = rope_of(types[i]), types[i] == "sliding_attention"
        q = _rope(proj(h, p + "self_attn.q_proj", p + "self_attn.q_norm").reshape(-1, H, hd), pos, theta, hd, factor)
        k = _rope(proj(h, p + "self_attn.k_proj", p + "self_attn.k_norm").reshape(-1, KV, hd), pos, theta, hd, factor)
        v = proj(h, p + "self_attn.v_proj").reshape(-1, KV, hd)
        a = _attn(q, k, v, cfg["sliding_window"] if sliding else None) @ w[p + "self_attn.o_proj.weight"].T
        x = x + (norm(a, p + "post_attention_layernorm") if olmo2 else a)
        h = x if olmo2 else norm(x, p + "post_attention_layernorm")
        g = h @ w[p + "mlp.gate_proj.weight"].T
        m = (g / (1 + np.exp(-g)) * (h @ w[p + "mlp.up_proj.weight"].T)) @ w[p + "mlp.down_proj.weight"].T
        x = x + (norm(m, p + "post_feedforward_layernorm") if olmo2 else m)
    x = norm(x, "model.norm")
    return x @ w.get("lm_head.weight", w["model.embed_tokens.weight"]).T


def _alibi_slopes(heads):
    closest = 2 ** math.floor(math.log2(heads))
    base = 2 ** (-(2 ** -(math.log2(closest) - 3)))
    slopes = [base ** p for p in range(1, closest + 1)]
    if closest != heads:
        extra = 2 ** (-(2 ** -(math.log2(2 * closest) - 3)))
        slopes += [extra ** p for p in range(1, 1 + 2 * min(closest, heads - closest), 2)]
    return np.array(slopes)


def _bloom_fwd(cfg, w, ids):  # ALiBi, per-head interleaved qkv, embedding LayerNorm, tied head
    H, hid, eps = cfg["n_head"], cfg["hidden_size"], cfg["layer_norm_epsilon"]
    hd, T, post = hid // H, len(ids), cfg["apply_residual_connection_post_layernorm"]
    pre = "transformer." if "transformer.word_embeddings.weight" in w else ""

    def lin(x, n):
        return x @ w[n + ".weight"].T + w[n + ".bias"]

    def ln(x, n):
        return _ln(x, w[n + ".weight"], w[n + ".bias"], eps)

    alibi = _alibi_slopes(H)[:, None, None] * np.arange(T)[None, None, :]
    x = ln(w[pre + "word_embeddings.weight"][ids], pre + "word_embeddings_layernorm")
    for i in range(cfg["n_layer"]):
        p = f"{pre}h.{i}."
        h = ln(x, p + "input_layernorm")
        qkv = lin(h, p + "self_attention.query_key_value").reshape(T, H, 3, hd)
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
        s = np.einsum("thd,shd->hts", q, k) / math.sqrt(hd) + alibi + np.triu(np.full((T, T), -np.inf), 1)
        s = np.exp(s - s.max(-1, keepdims=True))
        s /= s.sum(-1, keepdims=True)
        x = lin(np.einsum("hts,shd->thd", s, v).reshape(T, hid), p + "self_attention.dense") + (h if post else x)
        h = ln(x, p + "post_attention_layernorm")
        u = lin(h, p + "mlp.dense_h_to_4h")
        x = lin(u * 0.5 * (1 + np.tanh(0.79788456 * u * (1 + 0.044715 * u * u))), p + "mlp.dense_4h_to_h") + (h if post else x)
    return ln(x, pre + "ln_f") @ w[pre + "word_embeddings.weight"].T


def _neox_fwd(cfg, w, ids):
    H = cfg["num_attention_heads"]
    hd, eps, rp = cfg["hidden_size"] // H, cfg["layer_norm_eps"], cfg["rope_parameters"]
    rot = int(hd * rp["partial_rotary_factor"])

    def lin(x, n):
        return x @ w[n + ".weight"].T + w[n + ".bias"]

    x, pos = w["gpt_neox.embed_in.weight"][ids], np.arange(len(ids))
    for i in range(cfg["num_hidden_layers"]):
        p = f"gpt_neox.layers.{i}."
        h = _ln(x, w[p + "input_layernorm.weight"], w[p + "input_layernorm.bias"], eps)
        qkv = lin(h, p + "attention.query_key_value").reshape(-1, H, 3 * hd)  # per head: [q | k | v]
        q, k, v = qkv[..., :hd], qkv[..., hd:2 * hd], qkv[..., 2 * hd:]
        a = lin(_attn(_rope(q, pos, rp["rope_theta"], rot), _rope(k, pos, rp["rope_theta"], rot), v),
                p + "attention.dense")

        def mlp(h):
            u = lin(h, p + "mlp.dense_h_to_4h")
            return lin(0.5 * u * (1 + _erf(u / math.sqrt(2))), p + "mlp.dense_4h_to_h")  # exact gelu

        ln2 = (p + "post_attention_layernorm.weight", p + "post_attention_layernorm.bias")
        if cfg["use_parallel_residual"]:
            x = x + a + mlp(_ln(x, w[ln2[0]], w[ln2[1]], eps))
        else:
            x = x + a
            x = x + mlp(_ln(x, w[ln2[0]], w[ln2[1]], eps))
    x = _ln(x, w["gpt_neox.final_layer_norm.weight"], w["gpt_neox.final_layer_norm.bias"], eps)
    return x @ w["embed_out.weight"].T


def _gpt2_fwd(cfg, w, ids):
    H, eps = cfg["n_head"], cfg["layer_norm_epsilon"]
    hd = cfg["n_embd"] // H

    def conv(x, n):  # Conv1D: weight stored [in, out]
        return x @ w[n + ".weight"] + w[n + ".bias"]

    x = w["transformer.wte.weight"][ids] + w["transformer.wpe.weight"][: len(ids)]
    for i in range(cfg["n_layer"]):
        p = f"transformer.h.{i}."
        h = _ln(x, w[p + "ln_1.weight"], w[p + "ln_1.bias"], eps)
        q, k, v = (t.reshape(-1, H, hd) for t in np.split(conv(h, p + "attn.c_attn"), 3, -1))
        x = x + conv(_attn(q, k, v), p + "attn.c_proj")
        h = _ln(x, w[p + "ln_2.weight"], w[p + "ln_2.bias"], eps)
        u = conv(h, p + "mlp.c_fc")
        u = 0.5 * u * (1 + np.tanh(math.sqrt(2 / math.pi) * (u + 0.044715 * u ** 3)))  # gelu_new
        x = x + conv(u, p + "mlp.c_proj")
    x = _ln(x, w["transformer.ln_f.weight"], w["transformer.ln_f.bias"], eps)
    return x @ w["transformer.wte.weight"].T  # tied


_NP_FWD = {"llama": _llama_fwd, "mistral": _llama_fwd, "qwen2": _llama_fwd, "olmo": _olmo_fwd, "olmo2": _olmo_fwd, "olmo3": _olmo_fwd, "bloom": _bloom_fwd,
           "gpt_neox": _neox_fwd, "gpt2": _gpt2_fwd}


def _np_nll(logits, ids):
    lg = logits[:-1]
    m = lg.max(-1, keepdims=True)
    return np.log(np.exp(lg - m).sum(-1)) + m[:, 0] - lg[np.arange(len(ids) - 1), ids[1:]]


def self_check(eval_blocks):
    from safetensors.torch import load_file
    eb = eval_blocks.numpy()
    for name, *_ in model_specs():
        d = FIX / "models" / name
        cfg, w = json.loads((d / "config.json").read_text()), _np_weights(d)
        exp = json.loads((FIX / "expected" / f"{name}.json").read_text())
        fwd = _NP_FWD[cfg["model_type"]]
        lg = np.stack([fwd(cfg, w, r) for r in np.array(exp["input_ids"])])
        dl = np.abs(lg - np.array(exp["logits"]).reshape(exp["logits_shape"])).max()
        loss = np.concatenate([_np_nll(fwd(cfg, w, b), b) for b in eb]).mean()
        print(f"[check] {name:22s} numpy-f64 vs expected: max|dlogit| {dl:.1e}  "
              f"|d eval_loss| {abs(loss - exp['eval_loss']):.1e}", flush=True)
        assert dl < 1e-4 and abs(loss - exp["eval_loss"]) < 1e-5, name

    for name in PEFT_MODELS:
        d = FIX / "peft" / name
        exp = json.loads((d / "expected.json").read_text())
        ac = json.loads((d / "adapter_config.json").read_text())
        batches = load_file(str(d / "batches.safetensors"))["input_ids"]
        # (a) step-0 loss = numpy forward with the initial adapter merged:
        #     W += (alpha/r) * B @ A   (transposed for GPT-2's Conv1D: fan_in_fan_out)
        md = FIX / "models" / name
        cfg, w = json.loads((md / "config.json").read_text()), _np_weights(md)
        ad = {k: v.to(torch.float64).numpy() for k, v in load_file(str(d / "adapter_model.safetensors")).items()}
        for k in ad:
            if k.endswith(".lora_A.weight"):
                tgt = k[len("base_model.model."): -len(".lora_A.weight")] + ".weight"
                delta = ac["lora_alpha"] / ac["r"] * ad[k.replace("lora_A", "lora_B")] @ ad[k]
                w[tgt] = w[tgt] + (delta.T if ac["fan_in_fan_out"] else delta)
        fwd = _NP_FWD[cfg["model_type"]]
        l0 = np.concatenate([_np_nll(fwd(cfg, w, b), b) for b in batches[0].numpy()]).mean()
        # (b) replay with PEFT-loaded adapter and a hand-written AdamW + clipping.
        base = load_f32(md)
        model = peft.PeftModel.from_pretrained(base, str(d), is_trainable=True)
        ps = [p for p in model.parameters() if p.requires_grad]
        m1 = [torch.zeros_like(p) for p in ps]
        m2 = [torch.zeros_like(p) for p in ps]
        (b1, b2), lr, eps = exp["betas"], exp["lr"], exp["eps"]
        losses, gns = [], []
        for t in range(1, exp["steps"] + 1):
            x = batches[t - 1]
            loss = model(input_ids=x, labels=x).loss
            losses.append(loss.item())
            loss.backward()
            gn = math.sqrt(sum(float((p.grad.double() ** 2).sum()) for p in ps))
            gns.append(gn)
            coef = min(1.0, exp["max_grad_norm"] / (gn + 1e-6))  # torch clip_grad_norm_
            with torch.no_grad():
                for p, ma, va in zip(ps, m1, m2):
                    g = p.grad * coef
                    ma.mul_(b1).add_(g, alpha=1 - b1)
                    va.mul_(b2).addcmul_(g, g, value=1 - b2)
                    p.sub_(lr * (ma / (1 - b1 ** t)) / ((va / (1 - b2 ** t)).sqrt() + eps))
                    p.grad = None
        with torch.no_grad():
            l2 = math.sqrt(sum(float((p.double() ** 2).sum()) for p in ps))
        dls = max(abs(a - b) for a, b in zip(losses, exp["losses"]))
        dgn = max(abs(a - b) for a, b in zip(gns, exp["grad_norms"]))
        print(f"[check] peft {name:18s} |d loss0| numpy {abs(l0 - exp['losses'][0]):.1e}; manual AdamW "
              f"max|d loss| {dls:.1e} max|d gnorm| {dgn:.1e} |d l2| {abs(l2 - exp['final_lora_params_l2']):.1e}",
              flush=True)
        assert abs(l0 - exp["losses"][0]) < 1e-5 and dls < 1e-5 and dgn < 1e-5
        assert abs(l2 - exp["final_lora_params_l2"]) < 1e-5


# ---------------------------------------------------------------------------


def main():
    FIX.mkdir(parents=True, exist_ok=True)

    task_docs = build_task_docs()
    task_texts = [d for _, _, d in task_docs]
    pre_texts = build_pretrain_docs(exclude=task_texts)
    assert not set(task_texts) & set(pre_texts)
    prompts = build_prompts(task_docs)
    write_jsonl(FIX / "task.jsonl", [{"text": t} for t in task_texts])
    write_jsonl(FIX / "task_prompt.jsonl", prompts)
    print(f"[text] task: {len(task_texts)} docs, {sum(map(len, task_texts))} chars; "
          f"prompts: {len(prompts)}; pre-training: {len(pre_texts)} docs, "
          f"{sum(map(len, pre_texts))} chars", flush=True)

    tok_path = FIX / "tokenizer.json"
    tok = train_tokenizer(pre_texts, tok_path)

    task_stream = token_stream(tok, task_texts)
    (FIX / "expected").mkdir(exist_ok=True)
    dump_json(FIX / "expected" / "task_tokens.json",
              {"n_tokens": len(task_stream), "first_64": task_stream[:64],
               "tokenizers_version": tokenizers.__version__})
    task_blocks = to_blocks(task_stream)
    eval_blocks = task_blocks[-EVAL_BLOCKS:]
    train_blocks = task_blocks[:-EVAL_BLOCKS]
    print(f"[text] task stream {len(task_stream)} tokens -> {task_blocks.shape[0]} blocks", flush=True)

    make_models(tok_path, eval_blocks)
    make_pickle()
    make_peft(train_blocks)

    pre_blocks = to_blocks(token_stream(tok, pre_texts))
    print(f"[text] pre-training stream -> {pre_blocks.shape[0]} blocks of {SEQ_LEN}", flush=True)
    make_series(tok_path, pre_blocks)

    if "--no-check" not in sys.argv:
        self_check(eval_blocks)


if __name__ == "__main__":
    main()
