"""LIS and given-text retrieval runs: run directory contents, options, and the paper's numbers."""

from __future__ import annotations

import json
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest

from glossrec.config import load_config
from glossrec.errors import DataError
from glossrec.pipeline import build_index, load_data, run_lis, run_retrieve

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "data" / "beauty-sample"
SHARED = ROOT / ".." / "shared" / "data" / "amazon2014"


def _cfg(**ov):
    return load_config(None, {"data.path": str(SAMPLE), "retrieve.retriever": "bm25", **ov})


class _HashEncoder:
    """A deterministic bag-of-words encoder (no model download), counting what it encodes."""

    def __init__(self) -> None:
        self.encoded = 0

    def get_embedding_dimension(self) -> int:
        return 128

    def encode(self, texts, **kw):
        self.encoded += len(texts)
        out = np.zeros((len(texts), 128), dtype=np.float32)
        for i, t in enumerate(texts):
            for w in t.lower().split():
                out[i, zlib.crc32(w.encode()) % 128] += 1
        return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-9)


def _rows(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_lis_writes_a_run_directory(tmp_path: Path) -> None:
    ev = run_lis(_cfg(**{"evaluate.users": 300}), tmp_path)
    m = json.loads((tmp_path / "metrics.json").read_text())
    assert m["overall"]["users"] == 300 == len(ev.user_ids)
    assert sum(m[s]["users"] for s in ("cold", "regular", "power")) == 300
    assert {"recall@5", "ndcg@5", "mrr@5", "recall@20"} <= set(m["overall"])
    rows = _rows(tmp_path / "rankings.jsonl")
    assert len(rows) == 300 and set(rows[0]) == {"user_id", "target", "items", "scores"}
    assert all(r["scores"] == sorted(r["scores"], reverse=True) for r in rows)
    assert load_config(tmp_path / "config.toml").evaluate.users == 300
    # the same sample of users again (reproducible), a different seed gives others
    again = run_lis(_cfg(**{"evaluate.users": 300}))
    assert again.user_ids == ev.user_ids
    assert run_lis(_cfg(**{"evaluate.users": 300, "evaluate.user_seed": 1})).user_ids != ev.user_ids


def test_lis_keeps_the_query_item_unless_excluded(tmp_path: Path) -> None:
    cfg = _cfg(**{"evaluate.users": 200})
    ds = load_data(cfg)
    index = build_index(cfg, ds)
    keep = run_lis(cfg, tmp_path / "keep", ds, index)
    excl = run_lis(load_config(None, {**cfg.model_dump(mode="json", exclude_none=True),
                                      "retrieve": {"retriever": "bm25", "exclude_history": True}}),
                   tmp_path / "excl", ds, index)
    seqs = dict(zip(ds.users, ds.sequences))
    last_first = sum(int(r[0] == seqs[u][-2]) for u, r in zip(keep.user_ids, keep.ranked))
    assert last_first > 150  # the paper's LIS mostly returns the query item itself first
    for u, r in zip(excl.user_ids, excl.ranked):
        assert not set(r.tolist()) & set(seqs[u][:-1].tolist())


def test_dense_lis_reuses_item_embeddings(monkeypatch: pytest.MonkeyPatch) -> None:
    enc = _HashEncoder()
    monkeypatch.setattr("glossrec.retrieve.dense.load_encoder", lambda name, device=None: enc)
    cfg = _cfg(**{"evaluate.users": 100, "retrieve.retriever": "dense"})
    ds = load_data(cfg)
    index = build_index(cfg, ds)
    n_items = enc.encoded
    fast = run_lis(cfg, None, ds, index)
    assert enc.encoded == n_items  # no query was encoded
    queries = [ds.catalog.text(int(np.asarray(ds.sequences[ds.user_index[u]])[-2])) for u in fast.user_ids]
    slow_idx, _ = index.search(queries, 20)
    assert (slow_idx[:, :5] == fast.ranked[:, :5]).mean() > 0.99


@pytest.mark.parametrize("exclude", [False, True])
def test_lis_through_the_shared_ranking_is_the_retrievers_own_top_k(exclude: bool) -> None:
    # LIS = rank_texts with one text per user and max fusion: exactly the search's rows,
    # BM25 score ties included (the sample has many).
    cfg = _cfg(**{"evaluate.users": 300, "retrieve.exclude_history": exclude})
    ds = load_data(cfg)
    index = build_index(cfg, ds)
    ev = run_lis(cfg, None, ds, index)
    seqs = dict(zip(ds.users, ds.sequences))
    hist = [np.asarray(seqs[u][:-1], dtype=np.int64) for u in ev.user_ids]
    idx, sc = index.search([ds.catalog.text(int(h[-1])) for h in hist], 20,
                           hist if exclude else None)
    assert (ev.ranked == idx).all()
    assert np.array_equal(ev.scores, sc.astype(np.float64))
    finite = np.isfinite(sc[:, 1:]) & (sc[:, 1:] == sc[:, :-1])
    assert finite.any()  # the check covers tied scores


def test_retrieve_evaluates_exactly_the_given_users(tmp_path: Path) -> None:
    cfg = _cfg()
    ds = load_data(cfg)
    lis = run_lis(_cfg(**{"evaluate.users": 50}), None, ds)
    seqs = dict(zip(ds.users, ds.sequences))
    # LIS expressed as one query text per user: the paper rule keeps each text's top-1 item,
    # so the result is LIS's first item.
    queries = {u: [ds.catalog.text(int(seqs[u][-2]))] for u in lis.user_ids}
    ev = run_retrieve(cfg, queries, tmp_path, ds)
    assert ev.user_ids == lis.user_ids
    assert (ev.ranked[:, 0] == lis.ranked[:, 0]).all()
    assert (ev.ranked[:, 1:] == -1).all()
    # paper rule: top-1 per text -> at most one item per text
    assert all(len(r["items"]) <= 1 for r in _rows(tmp_path / "rankings.jsonl"))
    # unknown users are named and skipped; all unknown is an error
    queries["nobody"] = ["Title: x"]
    ev2 = run_retrieve(cfg, queries, None, ds)
    assert len(ev2.user_ids) == 50
    with pytest.raises(DataError, match="none of the 1 users"):
        run_retrieve(cfg, {"nobody": ["Title: x"]}, None, ds)


def _glossrec(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "glossrec.cli", *args], capture_output=True, text=True)


def test_cli_lis_and_retrieve_both_query_formats(tmp_path: Path) -> None:
    r = _glossrec("lis", "--data", str(SAMPLE), "--retriever", "bm25", "--users", "40",
                  "--out", str(tmp_path / "lis"))
    assert r.returncode == 0, r.stderr
    assert "LIS-bm25" in r.stdout and "power" in r.stdout
    users = [x["user_id"] for x in _rows(tmp_path / "lis" / "rankings.jsonl")]
    texts = ["Title: moisturizing shampoo", "Title: red lipstick"]
    (tmp_path / "q.jsonl").write_text("".join(json.dumps({"user_id": u, "texts": texts}) + "\n" for u in users))
    (tmp_path / "q.json").write_text(json.dumps([{"reviewer_id": u, "generated_sequences": texts} for u in users]))
    outs = []
    for name in ("q.jsonl", "q.json"):
        r = _glossrec("retrieve", "--data", str(SAMPLE), "--queries", str(tmp_path / name),
                      "--retriever", "bm25", "--ranking", "max", "--out", str(tmp_path / f"run-{name}"))
        assert r.returncode == 0, r.stderr
        outs.append((tmp_path / f"run-{name}" / "rankings.jsonl").read_text())
    assert outs[0] == outs[1]
    assert len(_rows(tmp_path / "run-q.jsonl" / "rankings.jsonl")[0]["items"]) == 20  # max fusion fills K


def test_cli_errors_are_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "q.jsonl"
    bad.write_text('{"user_id": "u1", "texts": ["a"]}\n{"user_id": "u2", "texts": "oops"}\n')
    r = _glossrec("retrieve", "--data", str(SAMPLE), "--queries", str(bad), "--out", str(tmp_path / "o"))
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "line 2" in r.stderr and "texts" in r.stderr
    r = _glossrec("lis", "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "o"))
    assert r.returncode == 2 and "not found" in r.stderr and "Traceback" not in r.stderr


BANDS = {  # LIS-BM25, paper settings; bands = what BM25 score ties alone move
    "beauty": ((0.0425, 0.0450), (0.0225, 0.0243)),
    "toys": ((0.0510, 0.0555), (0.0257, 0.0290)),
    "sports": ((0.0202, 0.0222), (0.0100, 0.0120)),
}


@pytest.mark.realdata
@pytest.mark.parametrize("name", list(BANDS))
def test_lis_bm25_reproduces_the_paper(name: str) -> None:
    if not (SHARED / name).is_dir():
        pytest.skip("shared data absent")
    ev = run_lis(load_config(None, {"data.path": str(SHARED / name), "retrieve.retriever": "bm25"}))
    (r_lo, r_hi), (n_lo, n_hi) = BANDS[name]
    assert r_lo <= ev.metrics["overall"]["recall@5"] <= r_hi
    assert n_lo <= ev.metrics["overall"]["ndcg@5"] <= n_hi


def test_run_end_to_end_leaves_a_servable_index_and_skips_done_stages(
        tmp_path: Path, tiny_lm_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import glossrec.train
    from glossrec.pipeline import run
    from glossrec.retrieve.live import ItemRecord, LiveCatalog

    cfg = _cfg(**{"model.name": str(tiny_lm_dir), "model.load_in_4bit": False,
                  "train.max_steps": 1, "train.max_examples": 8, "train.max_valid_examples": 2,
                  "train.warmup_steps": 0, "generate.num_beams": 2, "generate.num_return": 2,
                  "generate.max_new_tokens": 4, "evaluate.users": 4})
    out = tmp_path / "run"
    res = run(cfg, out, baselines=False)
    assert list(res) == ["GLoSS-bm25"] and len(res["GLoSS-bm25"].user_ids) == 4
    for name in ("config.toml", "adapter/adapter_config.json", "generations.jsonl", "report.md",
                 "manifest.json"):
        assert (out / name).is_file(), name

    # The scoring index is saved as the run's live catalog: serving needs no second indexing.
    ds = load_data(cfg)
    live = LiveCatalog.open(out / "index")
    assert [r.item_id for r in live.items()] == list(ds.catalog.ids)
    q = [ds.catalog.text(3), "lavender shampoo"]
    assert np.array_equal(live.retriever.search(q, 5)[0], build_index(cfg, ds).search(q, 5)[0])

    # A second run skips training and keeps the served catalog (with its new item) as it is.
    live.add([ItemRecord("NEW-1", "Lavender shampoo 500ml", {})])

    def no_training(*a, **k):
        raise AssertionError("train ran again")

    monkeypatch.setattr(glossrec.train, "train_from_config", no_training)
    again = run(cfg, out, baselines=False)
    assert np.array_equal(again["GLoSS-bm25"].ranked, res["GLoSS-bm25"].ranked)
    assert "NEW-1" in LiveCatalog.open(out / "index")

    # A run that names trained weights (model.weights) generates with them and trains nothing.
    reuse = run(cfg.updated(model={"weights": str(out / "adapter")}), tmp_path / "reuse",
                baselines=False)
    assert not (tmp_path / "reuse" / "adapter").exists()
    assert np.array_equal(reuse["GLoSS-bm25"].ranked, res["GLoSS-bm25"].ranked)


def test_prepare_honours_generate_max_users_like_glossrec_generate(tmp_path: Path) -> None:
    from glossrec.pipeline import prepare, users_to_sample
    from glossrec.splits import make_splits, sample_users

    cfg = _cfg(**{"evaluate.users": 300, "generate.max_users": 5})
    ds = load_data(cfg)
    prep = prepare(cfg, ds)
    # The sample `glossrec generate` draws for this config: generate.max_users before
    # evaluate.users, with evaluate.user_seed.
    test_users = make_splits(ds, cfg.split).get("test")
    expected = sample_users(test_users, 5, cfg.evaluate.user_seed)
    assert [e.user_id for e in prep.examples] == [e.user_id for e in expected]
    assert users_to_sample(cfg) == 5 and users_to_sample(cfg, 2) == 2
    # Without it evaluate.users still decides, and neither: every user of the split.
    assert len(prepare(_cfg(**{"evaluate.users": 300}), ds).examples) == 300
    assert len(prepare(_cfg(), ds).examples) == len(test_users)
    # The LIS baseline of a run is scored on the same (capped) users.
    ev = run_lis(cfg, tmp_path, ds)
    assert ev.user_ids == [e.user_id for e in expected]
