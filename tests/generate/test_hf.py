from __future__ import annotations

from typing import Any

import pytest
import torch

from glossrec.config import GenerateConfig
from glossrec.errors import ConfigError
from glossrec.generate import Generator, encode_prompts
from glossrec.generate.hf import HFGenerator, newline_token_ids


def test_paper_settings_give_five_texts_per_prompt(peaky_lm: tuple[Any, Any], prompts: list[str]) -> None:
    model, tok = peaky_lm
    gen = HFGenerator(model, tok, GenerateConfig(batch_size=4))
    assert isinstance(gen, Generator)
    kw = gen.generation_kwargs()
    assert (kw["num_beams"], kw["num_return_sequences"], kw["max_new_tokens"]) == (5, 5, 50)
    assert kw["do_sample"] is False and kw["eos_token_id"] == tok.eos_token_id
    out = gen.generate(prompts[:3])
    assert len(out) == 3
    assert all(len(texts) == 5 and all(isinstance(t, str) for t in texts) for texts in out)
    assert all("\n" not in t for texts in out for t in texts)
    # Different prompts lead to different continuations (the fixture is not degenerate).
    assert len({tuple(t) for t in out}) == 3


def test_results_in_input_order_despite_length_sorting(peaky_lm: tuple[Any, Any],
                                                        prompts: list[str]) -> None:
    model, tok = peaky_lm
    gen = HFGenerator(model, tok, GenerateConfig(batch_size=8, max_new_tokens=20))
    by_len = sorted(prompts[:4], key=len, reverse=True)   # longest first: sorting reorders them
    single = [gen.generate([p])[0] for p in by_len]
    assert gen.generate(by_len) == single
    assert gen.generate([]) == []


def test_batch_gives_same_texts_as_batch_one_fp32(peaky_lm: tuple[Any, Any],
                                                   prompts: list[str]) -> None:
    model, tok = peaky_lm
    lengths = {len(ids) for ids in encode_prompts(tok, prompts, 974)}
    assert len(lengths) > 3  # left padding really happens inside a batch
    cfg = dict(max_new_tokens=30)
    one = HFGenerator(model, tok, GenerateConfig(batch_size=1, **cfg)).generate(prompts)
    many = HFGenerator(model, tok, GenerateConfig(batch_size=8, **cfg)).generate(prompts)
    assert many == one


def test_prompt_cut_from_the_left(peaky_lm: tuple[Any, Any], prompts: list[str]) -> None:
    model, tok = peaky_lm
    gen = HFGenerator(model, tok, GenerateConfig(), max_prompt_tokens=20)
    full = tok(prompts[0])["input_ids"]
    assert len(full) > 20
    assert gen.encode([prompts[0]]) == [full[-20:]]       # the end ("### Next item:") survives
    assert tok.truncation_side == "right"                  # tokenizer state restored
    assert len(gen.generate([prompts[0]])[0]) == 5


class _StubModel(torch.nn.Module):
    """generate() appends fixed new tokens to every beam and records what it was given."""

    def __init__(self, new_ids: list[list[int]]) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.new_ids = new_ids
        self.calls: list[dict[str, Any]] = []

    def forward(self, **kw: Any) -> Any:
        # A model whose cache cannot be shared: the generator must fall back to plain generate.
        from types import SimpleNamespace

        return SimpleNamespace(cache=None)

    def generate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, **kw: Any) -> torch.Tensor:
        self.calls.append({"input_ids": input_ids, "attention_mask": attention_mask, **kw})
        k = kw["num_return_sequences"]
        width = max(len(x) for x in self.new_ids)
        new = torch.full((k, width), kw["pad_token_id"], dtype=torch.long)
        for i, ids in enumerate(self.new_ids[:k]):
            new[i, :len(ids)] = torch.tensor(ids)
        rows = [torch.cat([row.expand(k, -1), new], dim=1) for row in input_ids[:, None, :]]
        return torch.cat(rows, dim=0)


def test_only_new_tokens_decoded_and_left_padded(tiny_lm_dir: Any) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_lm_dir)
    news = ["Title: red lipstick\nTitle: more", "\nTitle: comb", "", "Title: gel", "x\ny"]
    new_ids = [tok(t, add_special_tokens=False)["input_ids"] + [tok.eos_token_id] for t in news]
    stub = _StubModel(new_ids)
    gen = HFGenerator(stub, tok, GenerateConfig(batch_size=2))
    out = gen.generate(["Title: short", "Title: a much longer prompt with many more words"])
    assert out == [["Title: red lipstick", "Title: comb", "", "Title: gel", "x"]] * 2
    call = stub.calls[0]
    mask = call["attention_mask"]
    assert mask.shape[0] == 2 and mask[0, 0] == 0 and mask[:, -1].all()   # LEFT padding
    assert (call["input_ids"][mask == 0] == tok.pad_token_id).all()
    assert "cache" not in call   # no shareable cache: plain generate


def test_stop_at_newline_adds_newline_tokens_as_stops(peaky_lm: tuple[Any, Any],
                                                      prompts: list[str]) -> None:
    model, tok = peaky_lm
    nl = newline_token_ids(tok)
    assert tok("\n", add_special_tokens=False)["input_ids"][0] in nl
    assert all("\n" in tok.decode([i]) for i in nl)
    gen = HFGenerator(model, tok, GenerateConfig(stop_at_newline=True))
    stops = gen.generation_kwargs()["eos_token_id"]
    assert stops[0] == tok.eos_token_id and set(nl) <= set(stops)
    out = gen.generate(prompts[:2])
    assert [len(t) for t in out] == [5, 5]


def test_bf16_option_runs(peaky_lm: tuple[Any, Any], prompts: list[str]) -> None:
    model, tok = peaky_lm
    out = HFGenerator(model, tok, GenerateConfig(bf16=True, max_new_tokens=8)).generate(prompts[:2])
    assert [len(t) for t in out] == [5, 5]
    assert next(model.parameters()).dtype == torch.float32   # autocast: weights untouched


def test_tokenizer_without_eos_is_a_config_error(peaky_lm: tuple[Any, Any]) -> None:
    model, _ = peaky_lm

    class NoEos:
        eos_token_id = None
        pad_token_id = None

    with pytest.raises(ConfigError, match="EOS"):
        HFGenerator(model, NoEos(), GenerateConfig())


def test_shared_prefill_matches_plain_generate_and_encodes_each_prompt_once(
        peaky_lm: tuple[Any, Any], prompts: list[str]) -> None:
    model, tok = peaky_lm
    cfg = GenerateConfig(batch_size=4, max_new_tokens=20)
    plain = HFGenerator(model, tok, cfg, share_prefill=False).generate(prompts[:4])
    seen: list[tuple[int, int]] = []
    hook = model.register_forward_pre_hook(
        lambda mod, args, kw: seen.append(tuple(kw["input_ids"].shape)), with_kwargs=True)
    try:
        shared = HFGenerator(model, tok, cfg).generate(prompts[:4])
    finally:
        hook.remove()
    assert shared == plain
    # First forward: the 4 prompts once (all but their last token), not 4 x 5 beams.
    rows, width = seen[0]
    assert rows == 4 and width == max(len(x) for x in encode_prompts(tok, prompts[:4], 974)) - 1
    assert all(r == 20 and w == 1 for r, w in seen[1:])   # then one token per beam per step
