"""Catalog-grounded beam search: the trie, the prefix function, HFGenerator and the pipeline."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest
import torch

from glossrec.config import PAPER_TEMPLATE, GenerateConfig
from glossrec.errors import ConfigError
from glossrec.generate.constrain import CatalogTrie
from glossrec.generate.hf import HFGenerator, grounded_score, rank_by

WORDS = ("shampoo lotion cream serum mask polish lipstick gloss mascara brush comb spray gel oil "
         "soap toner sunscreen SPF 30 oz pack set kit travel organic vegan fragrance").split()


def catalog_texts(n: int, seed: int = 1) -> list[str]:
    """`n` distinct item texts of 1..8 words."""
    rng = random.Random(seed)
    out: dict[str, None] = {}
    while len(out) < n:
        out["Title: " + " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 8)))] = None
    return list(out)


def prompt_of(history: list[str]) -> str:
    return PAPER_TEMPLATE.format(history="\n".join(history), target="")


def grounded(model: Any, tok: Any, trie: CatalogTrie, **cfg: Any) -> HFGenerator:
    share = cfg.pop("share_prefill", True)
    shared = cfg.pop("shared_prompts", True)
    return HFGenerator(model, tok, GenerateConfig(constrain="catalog", **cfg), trie=trie,
                       share_prefill=share, shared_prompts=shared)


def random_users(texts: list[str], n: int, seed: int = 0) -> tuple[list[str], list[list[int]]]:
    rng = random.Random(seed)
    hist = [rng.sample(range(len(texts)), rng.randint(1, 6)) for _ in range(n)]
    return [prompt_of([texts[i] for i in h]) for h in hist], hist


@pytest.fixture(scope="module")
def texts() -> list[str]:
    return catalog_texts(40)


# ---- the trie ----------------------------------------------------------------------------------


def test_trie_counts_duplicates_exclusion_and_live_edits(peaky_lm: tuple[Any, Any]) -> None:
    _, tok = peaky_lm
    eos = tok.eos_token_id
    trie = CatalogTrie.from_texts(tok, ["Title: red gel", "Title: red gel", "Title: red gel pack"])
    a = trie.tokens(0)
    assert a == tuple(tok("Title: red gel", add_special_tokens=False)["input_ids"]) + (eos,)
    # Prompt tokens + item tokens = the tokens of prompt + item (what training sees).
    prompt = prompt_of(["Title: comb"])
    assert tok(prompt + "Title: red gel")["input_ids"] == tok(prompt)["input_ids"] + list(a[:-1])
    assert len(trie) == 3 and trie.max_tokens == len(trie.tokens(2))
    # Duplicates share a path; one excluded, the other keeps it open and is the one resolved.
    one = trie.exclusion([0])
    node = trie.walk(a[:-1], one)
    assert node is not None and eos in trie.allowed(node, one)
    assert trie.resolve(list(a) + [eos, eos], excluded={0}) == 1
    # Both excluded: only the longer item is left below the shared prefix.
    both = trie.exclusion([0, 1, 1])
    assert trie.allowed(trie.walk(a[:-1], both), both) == [trie.tokens(2)[len(a) - 1]]
    assert trie.walk(a, both) is None and trie.resolve(list(a), excluded={0, 1}) is None
    # Live edits: removed items leave the trie, re-added ones come back, lengths follow.
    trie.remove(2)
    assert trie.max_tokens == len(a) and 2 not in trie
    assert trie.allowed(trie.walk(a[:-1])) == [eos]
    trie.add(7, "Title: red gel pack")
    assert trie.resolve(trie.tokens(7)) == 7 and trie.text(7) == "Title: red gel pack"
    trie.add(7, "Title: comb")  # replacing a key replaces its text
    assert trie.text(7) == "Title: comb" and len(trie) == 3
    with pytest.raises(KeyError):
        trie.remove(99)


def test_prefix_fn_never_empty_and_dead_beams_get_eos(peaky_lm: tuple[Any, Any]) -> None:
    _, tok = peaky_lm
    eos = tok.eos_token_id
    trie = CatalogTrie.from_texts(tok, ["Title: gel", "Title: comb set"])
    width = 3
    fn = trie.prefix_fn(width, [trie.exclusion([]), trie.exclusion([0, 1])])
    prompt = [5, 6, 7]
    gel = list(trie.tokens(0))
    assert fn(0, torch.tensor(prompt)) == [gel[0]]                       # the first item token
    assert fn(0, torch.tensor(prompt + gel[:-1])) == [eos]               # the item is complete
    assert fn(0, torch.tensor(prompt + gel)) == [eos]                    # past its EOS
    assert fn(0, torch.tensor(prompt + [gel[0], 9999])) == [eos]         # a dead (-inf) beam
    assert fn(1, torch.tensor(prompt)) == [eos]                          # every item excluded


def test_every_text_is_a_catalog_item_never_from_the_history(peaky_lm: tuple[Any, Any],
                                                              texts: list[str]) -> None:
    model, tok = peaky_lm
    trie = CatalogTrie.from_texts(tok, texts)
    # transformers' loop: the one that calls the prefix function
    gen = grounded(model, tok, trie, batch_size=8, grounded_search="transformers")
    assert gen.generation_kwargs()["max_new_tokens"] >= trie.max_tokens
    calls: list[list[int]] = []
    dead: list[list[int]] = []
    real = trie.prefix_fn

    def spy(width: int, exclusions: Any = None) -> Any:
        fn = real(width, exclusions)

        def wrapped(batch_id: int, ids: torch.Tensor) -> list[int]:
            out = fn(batch_id, ids)
            calls.append(out)
            if trie.walk(ids[width:].tolist()) is None:   # a prefix outside the catalog
                dead.append(out)
            return out
        return wrapped

    trie.prefix_fn = spy  # type: ignore[method-assign]
    prompts, hist = random_users(texts, 24)
    out = gen.generate(prompts, exclude=hist)
    assert len(out) == 24
    for got, h in zip(out, hist):
        assert len(got) == 5 and len(set(got)) == 5
        assert set(got) <= set(texts)
        assert not set(got) & {texts[i] for i in h}
    assert calls and all(calls)                      # never an empty list
    assert dead and all(c == [tok.eos_token_id] for c in dead)
    # History exclusion off: the same users may get their history items back.
    off = grounded(model, tok, trie, batch_size=8, constrain_exclude_history=False)
    again = off.generate(prompts, exclude=hist)
    assert all(set(g) <= set(texts) for g in again)


def test_batches_shared_prefill_and_single_prompts_agree(peaky_lm: tuple[Any, Any],
                                                         texts: list[str]) -> None:
    model, tok = peaky_lm
    trie = CatalogTrie.from_texts(tok, texts)
    prompts, hist = random_users(texts, 6, seed=3)
    for score in ("beam", "pmi"):
        shared = grounded(model, tok, trie, batch_size=6, grounded_score=score)
        plain = grounded(model, tok, trie, batch_size=6, grounded_score=score, share_prefill=False)
        single = grounded(model, tok, trie, batch_size=1, grounded_score=score)
        a = shared.generate(prompts, exclude=hist)
        assert a == plain.generate(prompts, exclude=hist)
        assert a == single.generate(prompts, exclude=hist)   # exclusions follow their prompts


def _direct_logprob(model: Any, prompt_ids: list[int], item: list[int]) -> float:
    """log p(item | prompt) by one plain forward pass over prompt + item."""
    ids = torch.tensor([prompt_ids + item])
    with torch.no_grad():
        logp = model(input_ids=ids).logits[0].float().log_softmax(-1)
    n = len(prompt_ids)
    return float(sum(logp[n - 1 + j, t] for j, t in enumerate(item)))


def test_teacher_forced_scores_match_a_direct_computation(peaky_lm: tuple[Any, Any],
                                                          texts: list[str]) -> None:
    model, tok = peaky_lm
    trie = CatalogTrie.from_texts(tok, texts)
    gen = grounded(model, tok, trie, grounded_score="length")
    prompts = [prompt_of(texts[:2]), prompt_of(texts[5:10])]
    enc = gen.encode(prompts)
    width = max(map(len, enc))
    ids = torch.full((2, width), gen.pad_id)
    mask = torch.zeros((2, width), dtype=torch.long)
    for r, e in enumerate(enc):
        ids[r, width - len(e):] = torch.tensor(e)
        mask[r, width - len(e):] = 1
    pairs = [(r, list(trie.tokens(k))) for r in (0, 1) for k in (3, 7, 11)] * 3  # > one chunk
    want = [_direct_logprob(model, enc[r], t) for r, t in pairs]
    with torch.inference_mode():
        plain = gen.item_logprobs(ids, mask, pairs)
        cached = gen.item_logprobs(ids, mask, pairs, gen.prefill(ids, mask))
    for (lp, n), (lp2, _), w, (_, t) in zip(plain, cached, want, pairs):
        assert n == len(t)
        assert lp == pytest.approx(w, abs=1e-3) and lp2 == pytest.approx(w, abs=1e-3)


def test_grounded_score_definitions() -> None:
    # Hand-computable: item a = 2 tokens, log p -2 (prior -1.5); b = 8 tokens, -4 (prior -0.5).
    assert grounded_score("length", -2.0, 2) == -1.0 and grounded_score("length", -4.0, 8) == -0.5
    assert grounded_score("pmi", -2.0, 2, -1.5) == -0.5 and grounded_score("pmi", -4.0, 8, -0.5) == -3.5
    assert grounded_score("pmi", -2.0, 2, -1.5, 0.5) == -1.25 and grounded_score("pmi", -2.0, 2, -1.5, 0.0) == -2.0
    assert rank_by([10, 20], [-1.0, -0.5]) == [20, 10]       # length prefers b
    assert rank_by([10, 20], [-0.5, -3.5]) == [10, 20]       # pmi prefers a
    assert rank_by([1, 2, 3], [0.0, 1.0, 0.0]) == [2, 1, 3]  # ties keep beam order
    with pytest.raises(ValueError):
        grounded_score("beam", 0.0, 1)


def test_length_and_pmi_reorder_the_beams_as_defined(peaky_lm: tuple[Any, Any],
                                                     texts: list[str]) -> None:
    model, tok = peaky_lm
    trie = CatalogTrie.from_texts(tok, texts)
    by_text = {t: i for i, t in enumerate(texts)}
    prompts, hist = random_users(texts, 4, seed=5)
    beam = grounded(model, tok, trie).generate(prompts, exclude=hist)
    pmi = grounded(model, tok, trie, grounded_score="pmi").generate(prompts, exclude=hist)
    length = grounded(model, tok, trie, grounded_score="length").generate(prompts, exclude=hist)
    empty = tok(PAPER_TEMPLATE.format(history="", target=""))["input_ids"]
    reordered = 0
    for p, b, got_pmi, got_len in zip(prompts, beam, pmi, length):
        ids = tok(p)["input_ids"]
        items = {t: list(trie.tokens(by_text[t])) for t in b}
        lp = {t: _direct_logprob(model, ids, items[t]) for t in b}
        prior = {t: _direct_logprob(model, empty, items[t]) for t in b}
        assert sorted(got_pmi) == sorted(b) == sorted(got_len)   # the same items, re-ranked
        want_pmi = sorted(b, key=lambda t: -(lp[t] - prior[t]))
        want_len = sorted(b, key=lambda t: -lp[t] / len(items[t]))
        assert got_pmi == want_pmi and got_len == want_len
        # Beam search with length_penalty 1.0 already ranks by log-prob per token.
        assert got_len == b
        reordered += got_pmi != b
    assert reordered > 0   # the prior really changes some order


def test_wide_search_then_weighted_rerank(peaky_lm: tuple[Any, Any], texts: list[str]) -> None:
    """More beams than texts kept, PMI-guided: the search's items re-ranked by log p(item |
    prompt) - w log p(item | empty history), the prior teacher-forced or from the prior table."""
    model, tok = peaky_lm
    trie = CatalogTrie.from_texts(tok, texts)
    by_text = {t: i for i, t in enumerate(texts)}
    prompts, hist = random_users(texts, 4, seed=7)
    wide = {"num_beams": 8, "num_return": 8, "prior_weight": 1.0}
    beam = grounded(model, tok, trie, **wide).generate(prompts, exclude=hist)
    empty = tok(PAPER_TEMPLATE.format(history="", target=""))["input_ids"]
    lists = {}
    for w in (0.0, 0.5):
        lists[w] = got = grounded(model, tok, trie, grounded_score="pmi",
                                  rescore_prior_weight=w, **wide).generate(prompts, exclude=hist)
        table = grounded(model, tok, trie, grounded_score="pmi", rescore_prior_weight=w,
                         prior_table=True, **wide).generate(prompts, exclude=hist)
        for p, b, g, t in zip(prompts, beam, got, table):
            ids = tok(p)["input_ids"]
            score = {x: _direct_logprob(model, ids, list(trie.tokens(by_text[x])))
                     - w * _direct_logprob(model, empty, list(trie.tokens(by_text[x]))) for x in b}
            assert len(b) > 5 and g == sorted(b, key=lambda x: -score[x]) == t
    assert lists[0.0] != lists[0.5]  # the weight really changes some order


def _pmi_order(model: Any, tok: Any, trie: CatalogTrie, prompt: str, w: float) -> list[str]:
    """Every item of `trie` sorted by [log p(item | prompt) - w log p(item | empty history)] /
    tokens, each term by a plain forward pass."""
    empty = tok(PAPER_TEMPLATE.format(history="", target=""))["input_ids"]
    ids = tok(prompt)["input_ids"]
    score = {trie.text(k): (_direct_logprob(model, ids, list(trie.tokens(k)))
                            - w * _direct_logprob(model, empty, list(trie.tokens(k))))
             / len(trie.tokens(k)) for k in trie.keys()}
    return sorted(score, key=lambda t: -score[t])


@pytest.mark.parametrize("share_prefill", [True, False])
def test_prior_weight_search_ranks_the_catalog_by_its_pmi_score(peaky_lm: tuple[Any, Any],
                                                                 texts: list[str],
                                                                 share_prefill: bool) -> None:
    """With as many beams as items the search is exhaustive: its order must be the catalog
    sorted by the PMI score, whether the prior runs one token per step from its cache
    (share_prefill) or each prefix in full."""
    model, tok = peaky_lm
    small = texts[:6]
    trie = CatalogTrie.from_texts(tok, small)
    prompts, _ = random_users(texts, 4, seed=7)
    w = 1.0
    gen = grounded(model, tok, trie, num_beams=7, num_return=7, prior_weight=w,
                   share_prefill=share_prefill)
    full: list[int] = []
    real = gen._prior_next
    gen._prior_next = lambda prefixes: full.append(len(prefixes)) or real(prefixes)  # type: ignore[method-assign]
    got = gen.generate(prompts)
    plain = grounded(model, tok, trie, num_beams=7, num_return=7).generate(prompts)
    for p, g in zip(prompts, got):
        assert g == _pmi_order(model, tok, trie, p, w)
    assert got != plain   # the prior changes the search
    # From the cache, every prefix extends its parent's row: no prefix is run in full.
    assert (not full) if share_prefill else full

    # A live add gives an existing prefix a new branch: the next search ranks it too.
    trie.add(99, small[0] + " gel")
    out = gen.generate(prompts)
    assert any(small[0] + " gel" in row for row in out)
    for p, g in zip(prompts, out):
        assert g == _pmi_order(model, tok, trie, p, w)


def test_prior_weight_needs_grounding() -> None:
    with pytest.raises(ValueError, match="prior_weight"):
        GenerateConfig(prior_weight=1.0)
    assert GenerateConfig(constrain="catalog", prior_weight=0.5).prior_weight == 0.5


def test_config_errors_and_vllm_refuses(peaky_lm: tuple[Any, Any], tiny_lm_dir: Path) -> None:
    from glossrec.config import ModelConfig, RunConfig
    from glossrec.generate import make_generator
    from glossrec.generate.vllm import VLLMGenerator

    model, tok = peaky_lm
    with pytest.raises(ConfigError, match="trie"):
        HFGenerator(model, tok, GenerateConfig(constrain="catalog"))
    with pytest.raises(ConfigError, match="trie"):
        HFGenerator(model, tok, GenerateConfig(), trie=CatalogTrie(tok))
    with pytest.raises(ValueError, match="grounded"):
        HFGenerator(model, tok, GenerateConfig()).generate(["x"], exclude=[[1]])
    with pytest.raises(ConfigError, match="vllm backend"):
        VLLMGenerator("any", None, GenerateConfig(constrain="catalog"))
    cfg = RunConfig(model=ModelConfig(name=str(tiny_lm_dir), load_in_4bit=False),
                    generate=GenerateConfig(constrain="catalog", backend="vllm"))
    with pytest.raises(ConfigError, match='backend = "hf"'):
        make_generator(cfg, None, ["Title: x"])
    cfg.generate.backend = "hf"
    with pytest.raises(ConfigError, match="catalog texts"):
        make_generator(cfg, None)
    gen = make_generator(cfg, None, ["Title: gel", "Title: comb"])
    assert isinstance(gen, HFGenerator) and gen.trie is not None and len(gen.trie) == 2
    assert gen.prior_prompt == PAPER_TEMPLATE.format(history="", target="")


def test_bf16_generation_casts_the_weights_once_and_still_grounds(tiny_lm_dir: Path) -> None:
    """generate.bf16: the loaded weights become bf16 (autocast alone would cast every float32
    weight at every matmul); the grounded search with the prior still returns catalog items.
    float32 otherwise."""
    from glossrec.config import ModelConfig, RunConfig
    from glossrec.generate import make_generator

    texts = ["Title: gel", "Title: comb", "Title: hair gel"]
    dtypes, lists = {}, {}
    for bf16 in (False, True):
        cfg = RunConfig(model=ModelConfig(name=str(tiny_lm_dir), load_in_4bit=False),
                        generate=GenerateConfig(constrain="catalog", prior_weight=1.0,
                                                num_beams=3, num_return=3, bf16=bf16))
        gen = make_generator(cfg, None, texts)
        dtypes[bf16] = {p.dtype for p in gen.model.parameters()}
        lists[bf16] = gen.generate(["Title: gel\nTitle: comb\n"], exclude=[[0]])[0]
    assert dtypes == {False: {torch.float32}, True: {torch.bfloat16}}
    for found in lists.values():
        assert found and set(found) <= set(texts[1:])   # catalog items, the history's excluded


# ---- the pipeline stage: workers, exclusions, fingerprint --------------------------------------


def _dataset(root: Path, n_items: int = 12, n_users: int = 16) -> Path:
    d = root / "data"
    d.mkdir()
    titles = [t.removeprefix("Title: ") for t in catalog_texts(n_items, seed=7)]
    with open(d / "items.jsonl", "w") as f:
        for i, t in enumerate(titles):
            f.write(json.dumps({"item_id": f"i{i}", "title": t}) + "\n")
    with open(d / "sequences.jsonl", "w") as f:
        for u in range(n_users):
            items = [f"i{(u * 5 + 3 * j) % n_items}" for j in range(3 + u % 4)]
            f.write(json.dumps({"user_id": f"user{u}", "items": items}) + "\n")
    return d


def test_pipeline_workers_give_the_same_grounded_texts(tmp_path: Path, tiny_lm_dir: Path) -> None:
    """PMI-guided search and PMI re-ranking, in one process and in two workers."""
    from glossrec.config import DataConfig, EvalConfig, ModelConfig, RunConfig
    from glossrec.data import load_dataset
    from glossrec.generate import generate_examples, generation_fingerprint, read_generations
    from glossrec.splits import make_splits, sample_users

    cfg = RunConfig(data=DataConfig(path=_dataset(tmp_path)),
                    model=ModelConfig(name=str(tiny_lm_dir), load_in_4bit=False),
                    generate=GenerateConfig(max_new_tokens=4, batch_size=2, constrain="catalog",
                                            grounded_score="pmi", prior_weight=1.0),
                    evaluate=EvalConfig(users=6))
    ds = load_dataset(cfg.data.path)
    examples = sample_users(make_splits(ds, cfg.split).get("test"), 6, 0)
    one = generate_examples(cfg, examples, ds.catalog, None, tmp_path / "one.jsonl",
                            show_progress=False)
    cfg2 = cfg.model_copy(update={"generate": cfg.generate.model_copy(update={"workers": 2})})
    two = generate_examples(cfg2, examples, ds.catalog, None, tmp_path / "two.jsonl",
                            show_progress=False)
    assert one.read_text() == two.read_text()
    got = read_generations(one)
    catalog = set(ds.catalog.texts())
    for ex in examples:
        texts = got[ex.user_id]
        assert texts and set(texts) <= catalog
        assert not set(texts) & {ds.catalog.text(i) for i in ex.history}
    meta = json.loads((tmp_path / "one.meta.json").read_text())
    assert meta["generate"]["constrain"] == "catalog" and meta["generate"]["grounded_score"] == "pmi"
    assert meta["generate"]["prior_weight"] == 1.0
    # Free-text fingerprints are as before (their files made earlier still resume).
    assert "constrain" not in generation_fingerprint(RunConfig(), None)["generate"]
    # Free text into the grounded file would mix two kinds of output: refused.
    free = cfg.model_copy(update={"generate": cfg.generate.model_copy(update={"constrain": "none"})})
    with pytest.raises(ConfigError, match="overwrite"):
        generate_examples(free, examples, ds.catalog, None, one, show_progress=False)


def test_the_insertion_log_stays_short_under_churn_and_answers_the_same(
        peaky_lm: tuple[Any, Any]) -> None:
    """A live catalog replacing and removing the same items: the log behind added_since is
    compacted, and added_since(v) still names every held key inserted after v, in the order of
    its latest insert."""
    _, tok = peaky_lm
    texts = catalog_texts(12, seed=3)
    trie = CatalogTrie.from_texts(tok, texts[:6])
    rng = random.Random(0)
    inserted = [(k, k + 1) for k in range(6)]  # (key, the version its insert made)
    for _ in range(400):
        key = rng.randrange(10)
        if key in trie and rng.random() < 0.3:
            trie.remove(key)
        else:
            trie.add(key, texts[rng.randrange(12)])
            inserted.append((key, trie.version))
    assert len(trie._inserted) <= 2 * len(trie) + 65
    for since in range(0, trie.version + 1, 7):
        latest = {k: v for k, v in inserted if v > since}  # each key's latest insert after it
        want = [k for k, _ in sorted(latest.items(), key=lambda kv: kv[1]) if k in trie]
        assert trie.added_since(since) == want
