"""Tokenizers behind one interface: sentencepiece models we train, and the
tokenizer that comes with a Hugging Face model folder.

Both give encode(text) -> ids WITHOUT special tokens (callers add [CLS]/[SEP]
or EOS where their format needs them), encode_batch, decode, vocab_size, the
special ids (None when absent), ``special_ids`` (never masked by MLM) and a
``fingerprint`` (sha256 of the model files) that keys the token caches.
Both pickle small (the model bytes / the folder path), so worker processes
can receive them.
"""
from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional, Protocol, Sequence, Union, runtime_checkable

__all__ = ["Tokenizer", "SPTokenizer", "HFTokenizer", "load_tokenizer", "token_dtype", "MLM_SYMBOLS"]

MLM_SYMBOLS = ("[MASK]", "[CLS]", "[SEP]")
# Fixed special ids for the models we train: pad 0 matches BertConfig.pad_token_id's default.
SP_PAD, SP_UNK, SP_BOS, SP_EOS = 0, 1, 2, 3
_HF_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                       "vocab.txt", "vocab.json", "merges.txt", "spiece.model", "tokenizer.model",
                       "sentencepiece.bpe.model")


@runtime_checkable
class Tokenizer(Protocol):
    vocab_size: int
    bos_id: Optional[int]
    eos_id: Optional[int]
    pad_id: Optional[int]
    unk_id: Optional[int]
    cls_id: Optional[int]
    sep_id: Optional[int]
    mask_id: Optional[int]

    def encode(self, text: str) -> list[int]: ...

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]: ...

    def decode(self, ids: Sequence[int]) -> str: ...


def token_dtype(vocab_size: int):
    """np.uint16 when every id (< vocab_size) fits in 16 bits, else np.uint32."""
    import numpy as np
    return np.uint16 if vocab_size <= 1 << 16 else np.uint32


def _sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ----------------------------------------------------------------- sentencepiece

def _is_file_list(x: Any) -> bool:
    if isinstance(x, (str, os.PathLike)):
        return True
    if isinstance(x, (list, tuple)) and x:
        if all(isinstance(p, os.PathLike) for p in x):
            return True
        # plain strings are files only if every one of them names an existing file
        return all(isinstance(p, str) and "\n" not in p and len(p) < 4096 and os.path.isfile(p) for p in x)
    return False


def _sentences(texts: Iterable[Any]) -> Iterator[str]:
    """Lines of each text (sentencepiece drops sentences longer than max_sentence_length, so whole
    documents are split); rows of a `datasets` corpus are read from their "text" column."""
    for t in texts:
        if isinstance(t, dict):
            t = t.get("text")
        if not t:
            continue
        for line in t.split("\n"):
            line = line.strip()
            if line:
                yield line


class SPTokenizer:
    """A sentencepiece model (unigram or BPE). Construct from a .model file or its bytes."""

    def __init__(self, model_file: Union[str, os.PathLike, None] = None, *, model_proto: Optional[bytes] = None):
        import sentencepiece as spm

        if (model_file is None) == (model_proto is None):
            raise ValueError("SPTokenizer: give exactly one of model_file or model_proto")
        if model_file is not None:
            path = Path(model_file)
            if not path.is_file():
                raise FileNotFoundError(f"sentencepiece model not found: {str(path)!r}")
            model_proto = path.read_bytes()
            self.path: Optional[str] = str(path)
        else:
            self.path = None
        self._proto = bytes(model_proto)
        try:
            self.sp = spm.SentencePieceProcessor(model_proto=self._proto)
        except RuntimeError as e:  # sentencepiece's "INTERNAL: ... ParseFromArray" for a damaged or foreign file
            raise ValueError(f"{self.path or 'model_proto'} is not a valid sentencepiece model "
                             f"({str(e).splitlines()[0][:120]})") from None
        self.fingerprint = _sha256_bytes(self._proto)
        self.vocab_size = int(self.sp.get_piece_size())

        def opt(i: int) -> Optional[int]:
            return None if i < 0 else int(i)

        def piece(name: str) -> Optional[int]:
            i = self.sp.piece_to_id(name)
            return int(i) if 0 <= i < self.vocab_size and self.sp.id_to_piece(i) == name else None

        self.pad_id, self.unk_id = opt(self.sp.pad_id()), opt(self.sp.unk_id())
        self.bos_id, self.eos_id = opt(self.sp.bos_id()), opt(self.sp.eos_id())
        self.mask_id, self.cls_id, self.sep_id = piece("[MASK]"), piece("[CLS]"), piece("[SEP]")
        # control pieces (pad/bos/eos), unk, and the MLM symbols (sentencepiece's Python API cannot tell
        # other user-defined pieces apart without protobuf; those count as ordinary tokens)
        named = {i for i in (self.mask_id, self.cls_id, self.sep_id) if i is not None}
        self.special_ids = frozenset(named | {i for i in range(self.vocab_size)
                                              if self.sp.is_control(i) or self.sp.is_unknown(i)})

    # pickling: the model bytes, not the C++ object
    def __getstate__(self) -> dict:
        return {"proto": self._proto, "path": self.path}

    def __setstate__(self, state: dict) -> None:
        self.__init__(model_proto=state["proto"])
        self.path = state["path"]

    def __repr__(self) -> str:
        return f"SPTokenizer(vocab_size={self.vocab_size}, path={self.path!r})"

    def encode(self, text: str) -> list[int]:
        return self.sp.encode(text, out_type=int)

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return self.sp.encode(list(texts), out_type=int, num_threads=1)

    def decode(self, ids: Sequence[int]) -> str:
        return self.sp.decode([int(i) for i in ids])

    def id_to_piece(self, i: int) -> str:
        return self.sp.id_to_piece(int(i))

    def save(self, path: Union[str, os.PathLike]) -> Path:
        """Write the .model file (atomically) and return its path."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        tmp.write_bytes(self._proto)
        os.replace(tmp, path)
        self.path = str(path)
        return path

    @classmethod
    def train(cls, texts_or_files: Any, vocab_size: int, model_type: str = "unigram",
              prefix: Union[str, os.PathLike, None] = None, *, mlm: bool = False,
              user_defined_symbols: Sequence[str] = (), character_coverage: float = 0.9995,
              input_sentence_size: int = 1_000_000, max_sentence_length: int = 16384, seed: int = 0,
              num_threads: Optional[int] = None, byte_fallback: bool = False,
              hard_vocab_limit: bool = True) -> "SPTokenizer":
        """Train a model with pad=0, unk=1, bos=2, eos=3 (+ [MASK], [CLS], [SEP] when mlm=True).

        texts_or_files: a path or list of paths of plain-text files (read by sentencepiece itself,
        one sentence per line), or any iterable of texts (a list, a generator, a `datasets` corpus
        with a "text" column); texts are split into lines and never collected in a list here.
        input_sentence_size: at most this many sentences are sampled (reservoir sampling), so huge
        corpora train in bounded memory. prefix: write <prefix>.model/.vocab (else kept in memory)."""
        import sentencepiece as spm

        if model_type not in ("unigram", "bpe"):
            raise ValueError(f"SPTokenizer.train: model_type must be 'unigram' or 'bpe', got {model_type!r}")
        if not isinstance(vocab_size, int) or vocab_size < 8:
            raise ValueError(f"SPTokenizer.train: vocab_size must be an int >= 8, got {vocab_size!r}")
        symbols = list(MLM_SYMBOLS if mlm else ()) + [s for s in user_defined_symbols if not (mlm and s in MLM_SYMBOLS)]
        args: dict[str, Any] = dict(
            vocab_size=vocab_size, model_type=model_type, pad_id=SP_PAD, unk_id=SP_UNK, bos_id=SP_BOS,
            eos_id=SP_EOS, character_coverage=character_coverage, input_sentence_size=input_sentence_size,
            shuffle_input_sentence=True, max_sentence_length=max_sentence_length,
            num_threads=num_threads or max(1, min(os.cpu_count() or 1, 16)), byte_fallback=byte_fallback,
            hard_vocab_limit=hard_vocab_limit, minloglevel=2)
        if symbols:
            args["user_defined_symbols"] = symbols
        if _is_file_list(texts_or_files):
            files = [texts_or_files] if isinstance(texts_or_files, (str, os.PathLike)) else list(texts_or_files)
            for f in files:
                if not os.path.isfile(f):
                    raise FileNotFoundError(f"SPTokenizer.train: training file not found: {os.fspath(f)!r}")
            args["input"] = ",".join(os.fspath(f) for f in files)
        else:
            if isinstance(texts_or_files, str):
                texts_or_files = [texts_or_files]
            args["sentence_iterator"] = _sentences(texts_or_files)
        writer = None
        if prefix is not None:
            Path(prefix).parent.mkdir(parents=True, exist_ok=True)
            args["model_prefix"] = os.fspath(prefix)
        else:
            writer = io.BytesIO()
            args["model_writer"] = writer
        spm.set_random_generator_seed(seed)
        try:
            spm.SentencePieceTrainer.train(**args)
        except RuntimeError as e:
            msg = str(e)
            if "Vocabulary size" in msg or "vocab_size" in msg:
                raise ValueError(f"SPTokenizer.train: vocab_size={vocab_size} does not fit this text ({msg}); "
                                 "lower it or pass hard_vocab_limit=False") from e
            if "all_chars_count" in msg or "sentences_.empty" in msg:  # nothing but whitespace to learn from
                raise ValueError("SPTokenizer.train: the training text is empty or only whitespace") from None
            raise
        if writer is not None:
            return cls(model_proto=writer.getvalue())
        return cls(f"{os.fspath(prefix)}.model")


# ----------------------------------------------------------------- Hugging Face

class HFTokenizer:
    """The tokenizer of a local Hugging Face model folder (transformers.AutoTokenizer, offline)."""

    def __init__(self, folder: Union[str, os.PathLike]):
        folder = Path(folder)
        if not folder.is_dir():
            raise FileNotFoundError(f"HFTokenizer: model folder not found: {str(folder)!r}")
        present = [f for f in _HF_TOKENIZER_FILES if (folder / f).is_file()]
        if not present:
            raise ValueError(f"HFTokenizer: {str(folder)!r} holds no tokenizer files (looked for "
                             f"{', '.join(_HF_TOKENIZER_FILES)})")
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from transformers import AutoTokenizer

        self.folder = str(folder)
        self.tok = AutoTokenizer.from_pretrained(self.folder, local_files_only=True)
        # we truncate ourselves; silence "sequence longer than model_max_length" on long documents
        self.tok.model_max_length = 1 << 62
        h = hashlib.sha256()
        for name in present:
            h.update(name.encode())
            h.update((folder / name).read_bytes())
        self.fingerprint = h.hexdigest()
        self.vocab_size = len(self.tok)
        t = self.tok
        self.pad_id, self.unk_id = t.pad_token_id, t.unk_token_id
        self.bos_id, self.eos_id = t.bos_token_id, t.eos_token_id
        self.cls_id, self.sep_id, self.mask_id = t.cls_token_id, t.sep_token_id, t.mask_token_id
        self.special_ids = frozenset(int(i) for i in t.all_special_ids)

    def __getstate__(self) -> dict:
        return {"folder": self.folder}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["folder"])

    def __repr__(self) -> str:
        return f"HFTokenizer({self.folder!r}, vocab_size={self.vocab_size})"

    def encode(self, text: str) -> list[int]:
        return self.tok(text, add_special_tokens=False)["input_ids"]

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        texts = list(texts)
        if not texts:
            return []
        return self.tok(texts, add_special_tokens=False)["input_ids"]

    def decode(self, ids: Sequence[int]) -> str:
        return self.tok.decode([int(i) for i in ids])


def load_tokenizer(path: Any) -> Any:
    """A tokenizer from a sentencepiece .model file, a folder holding one, or an HF model folder.
    Tokenizer objects pass through unchanged."""
    if hasattr(path, "encode") and hasattr(path, "vocab_size"):
        return path
    p = Path(path)
    if p.is_file():
        if p.suffix == ".model":
            return SPTokenizer(p)
        raise ValueError(f"load_tokenizer: {str(p)!r} is not a sentencepiece .model file or a model folder")
    if p.is_dir():
        if any((p / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "vocab.json")):
            return HFTokenizer(p)
        models = sorted(p.glob("*.model"))
        if len(models) == 1:
            return SPTokenizer(models[0])
        raise ValueError(f"load_tokenizer: {str(p)!r} holds neither HF tokenizer files nor exactly one "
                         f".model file (found {[m.name for m in models]})")
    raise FileNotFoundError(f"load_tokenizer: no tokenizer at {str(p)!r}")
