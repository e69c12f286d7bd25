"""DenseRetriever: exact cosine top-k, e5 prefixes, live edits (with a fake encoder), real MiniLM."""

from __future__ import annotations

import sys
import types

import numpy as np
import pytest

from glossrec.errors import ConfigError
from glossrec.retrieve.base import topk
from glossrec.retrieve.dense import DenseRetriever


def test_search_is_exact_cosine_topk(catalog, fake_encoder) -> None:
    ids, texts = catalog
    r = DenseRetriever(encoder="fake")
    r.index(ids, texts)
    emb = r.embeddings
    assert emb.dtype == np.float32 and np.allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-6)
    queries = ["red lipstick", "nail polish", "dry hair shampoo"]
    idx, sc = r.search(queries, 4)
    q = fake_encoder.encode(queries)
    ref_idx, ref_sc = topk(q @ emb.T, 4)
    assert np.array_equal(idx, ref_idx)
    assert np.allclose(sc, ref_sc, atol=1e-6)
    assert idx[0, :2].tolist() == [0, 5]  # identical texts tie: lower position first


def test_encode_and_search_embeddings_separately(catalog, fake_encoder) -> None:
    ids, texts = catalog
    r = DenseRetriever(encoder="fake")
    r.index(ids, texts)
    q = r.encode(["sunscreen"], is_query=True)
    assert q.shape == (1, 64)
    assert np.array_equal(r.search_embeddings(q, 3)[0], r.search(["sunscreen"], 3)[0])
    with pytest.raises(ValueError, match="dim"):
        r.search_embeddings(np.zeros((1, 5), np.float32), 3)


def test_e5_prefixes(catalog, fake_encoder) -> None:
    ids, texts = catalog
    r = DenseRetriever(encoder="fake", e5_prefixes=True)
    r.index(ids[:2], texts[:2])
    r.search(["lipstick"], 1)
    assert fake_encoder.calls[0] == ["passage: " + t for t in texts[:2]]
    assert fake_encoder.calls[1] == ["query: lipstick"]
    plain = DenseRetriever(encoder="fake")
    plain.index(ids[:1], texts[:1])
    assert fake_encoder.calls[2] == texts[:1]  # the reference code: no prefixes


def test_exclude_and_padding(catalog, fake_encoder) -> None:
    ids, texts = catalog
    r = DenseRetriever(encoder="fake")
    r.index(ids, texts)
    idx, sc = r.search(["red matte lipstick", "x"], 12, exclude=[np.array([0, 5]), np.array([], np.int64)])
    assert not {0, 5} & set(idx[0].tolist()[:8])
    assert idx[0, 8:].tolist() == [-1] * 4 and np.isneginf(sc[0, 8:]).all()
    assert idx[1, 10:].tolist() == [-1, -1]
    assert r.search([], 3)[0].shape == (0, 3)


def test_add_encodes_only_new_texts_and_is_searchable(catalog, fake_encoder) -> None:
    ids, texts = catalog
    r = DenseRetriever(encoder="fake")
    r.index(ids, texts)
    before = r.embeddings.copy()
    fake_encoder.calls.clear()
    r.add(["new", "item2"], ["Title: Bamboo toothbrush charcoal", "Title: Lavender bath salts"])
    assert fake_encoder.calls == [["Title: Bamboo toothbrush charcoal", "Title: Lavender bath salts"]]
    assert len(r) == 11 and r.ids[-1] == "new" and r.ids[2] == "item2"
    assert np.array_equal(r.embeddings[[0, 1, 3]], before[[0, 1, 3]])
    assert r.ids[r.search(["bamboo toothbrush"], 1)[0][0, 0]] == "new"
    assert r.ids[r.search(["lavender bath salts"], 1)[0][0, 0]] == "item2"


def test_remove_then_never_returned(catalog, fake_encoder) -> None:
    ids, texts = catalog
    r = DenseRetriever(encoder="fake")
    r.index(ids, texts)
    kept = r.embeddings[[i for i in range(10) if i not in (0, 5)]].copy()
    r.remove(["item0", "item5"])
    assert np.array_equal(r.embeddings, kept)
    idx, _ = r.search(["red matte lipstick"], 8)
    assert {r.ids[i] for i in idx[0].tolist()}.isdisjoint({"item0", "item5"})
    with pytest.raises(KeyError, match="'gone'"):
        r.remove(["gone"])


def test_unknown_embedded_encoder_is_config_error() -> None:
    with pytest.raises(ConfigError, match="embedded:all-minilm-l6-v2"):
        DenseRetriever(encoder="embedded:nope")


def test_unloadable_encoder_is_config_error(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A stand-in sentence_transformers that fails like the real one does for a missing path
    # (importing the real one costs ~10 s of CPU).
    def fail(path: str, device: object = None) -> None:
        raise FileNotFoundError(f"Path {path} not found")

    monkeypatch.setitem(sys.modules, "sentence_transformers",
                        types.SimpleNamespace(SentenceTransformer=fail))
    r = DenseRetriever(encoder=str(tmp_path / "no-such-model"))
    with pytest.raises(ConfigError, match="no-such-model"):
        r.encode(["x"], is_query=True)


@pytest.mark.slow
def test_real_minilm_paraphrase_finds_item() -> None:
    """The embedded all-MiniLM-L6-v2 (from its PyPI package, no download) retrieves by meaning."""
    titles = ["Title: Waterproof black eyeliner pencil", "Title: Moisturizing shampoo for curly hair",
              "Title: Kids wooden puzzle with animals", "Title: Stainless steel camping water bottle",
              "Title: Matte red lipstick"]
    r = DenseRetriever(device="cpu")
    r.index([str(i) for i in range(len(titles))], titles)
    assert r.embeddings.shape == (5, 384)
    assert np.allclose(np.linalg.norm(r.embeddings, axis=1), 1, atol=1e-5)
    idx, sc = r.search(["hydrating hair wash for curls", "metal bottle for hiking",
                        "jigsaw toy for children"], 1)
    assert idx[:, 0].tolist() == [1, 3, 2]
    assert (sc[:, 0] > 0.4).all()


def test_local_encoder_path_is_stored_absolute(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "my-encoder").mkdir()
    monkeypatch.chdir(tmp_path)
    assert DenseRetriever(encoder="my-encoder").settings()["encoder"] == str(tmp_path / "my-encoder")
    assert DenseRetriever(encoder="intfloat/e5-small-v2").encoder == "intfloat/e5-small-v2"


@pytest.mark.parametrize("cls_name", ["DenseRetriever", "FaissRetriever"])
def test_frozen_copy_writes_the_state_it_was_taken_at(tmp_path, catalog, fake_encoder,
                                                      cls_name: str) -> None:
    from glossrec.retrieve import load_retriever
    from glossrec.retrieve import faiss_index

    ids, texts = catalog
    cls = DenseRetriever if cls_name == "DenseRetriever" else faiss_index.FaissRetriever
    r = cls(encoder="fake")
    r.index(ids, texts)
    r.add(["grow"], ["Title: buffer grows"])  # embeddings now live in the growing buffer
    frozen = r.frozen()
    want = r.embeddings.copy()
    # Writes after the freeze: appends into the same buffer, a replacement (copy-on-write),
    # another append, a removal.
    r.add(["new1"], ["Title: Bamboo toothbrush"])
    r.add(["item3", "new2"], ["Title: replaced text entirely", "Title: Rose water"])
    r.remove(["item0"])
    assert frozen.ids == [*ids, "grow"]
    (tmp_path / "f").mkdir()
    frozen.write(tmp_path / "f")
    back = load_retriever(tmp_path / "f")
    assert back.ids == [*ids, "grow"] and back.texts == [*texts, "Title: buffer grows"]
    assert np.array_equal(back.embeddings, want)
    # The live retriever has every write, and writes it all.
    assert r.ids[-2:] == ["new1", "new2"] and "item0" not in r.ids
    (tmp_path / "live").mkdir()
    r.write(tmp_path / "live")
    assert np.array_equal(load_retriever(tmp_path / "live").embeddings, r.embeddings)
