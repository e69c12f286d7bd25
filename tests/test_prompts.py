"""Prompt rendering and whole-item left truncation."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from glossrec.config import PAPER_TEMPLATE, PromptConfig
from glossrec.data import Catalog
from glossrec.errors import ConfigError
from glossrec.prompts import (PromptBuilder, PromptPair, make_pairs, make_template, render,
                              resolve_template, test_prompts, training_text)
from glossrec.splits import Example

# A literal copy of the paper's template (note the trailing spaces after "latest)." and
# "<item title>").
LITERAL = (
    "Below is a customer's purchase history on Amazon, listed in chronological order (earliest to latest). \n"
    "Each item is represented by the following format: Title: <item title> \n"
    "Based on this history, predict **only one** item the customer is most likely to purchase next in the same format.\n"
    "\n"
    "### Purchase history:\n"
    "{history}\n"
    "\n"
    "### Next item:\n"
    "{target}"
)
METHOD_DOC = Path("/work/shared/docs/gloss-method.md")


def test_template_matches_literal_copy() -> None:
    assert PAPER_TEMPLATE == LITERAL


@pytest.mark.skipif(not METHOD_DOC.exists(), reason="method document not present")
def test_template_matches_method_document() -> None:
    doc = METHOD_DOC.read_text(encoding="utf-8")
    block = re.search(r"Exact template.*?```\n(.*?)```", doc, re.S)
    assert block is not None
    text = block.group(1)
    text = text.replace('{history, one "Title: ..." line per item, joined by "\\n"}', "{history}")
    text = text.replace('{target "Title: ..." or empty}\n', "{target}")
    assert text == PAPER_TEMPLATE


def test_render_training_and_test_prompts() -> None:
    hist = ["Title: a", "Title: b"]
    test = render(hist, None)
    assert test.endswith("### Purchase history:\nTitle: a\nTitle: b\n\n### Next item:\n")
    full = training_text(hist, "Title: c", "<|im_end|>")
    assert full == test + "Title: c<|im_end|>"
    assert PromptPair(test, "Title: c").text("<|im_end|>") == full


def test_make_template_defaults_are_the_paper_and_describe_other_formats() -> None:
    assert make_template() == PAPER_TEMPLATE
    t = make_template("Title: {title} | Brand: {brand}")
    assert "format: Title: <item title> | Brand: <item brand> \n" in t
    assert resolve_template(PAPER_TEMPLATE, "Title: {title} | Brand: {brand}") == t
    custom = "History:\n{history}\nNext:\n{target}"
    assert resolve_template(custom, "Title: {title} | Brand: {brand}") == custom


@pytest.fixture(scope="module")
def tok(tiny_lm_dir: Path):
    return AutoTokenizer.from_pretrained(tiny_lm_dir)


def _items(n: int) -> list[str]:
    return [f"Title: item{i} shampoo lotion cream serum mask number {i}" for i in range(n)]


def test_truncation_drops_whole_items_oldest_first(tok) -> None:
    hist = _items(40)
    full = PromptBuilder(tok, max_length=10_000)
    assert full.fit(hist) == hist  # fits: untouched
    budget = full.count(render(hist[-7:], None)) + 2  # room for 7 items, not 8
    b = PromptBuilder(tok, max_length=budget)
    kept = b.fit(hist)
    assert kept == hist[-7:]
    prompt = b.test_prompt(hist, reserve=0)
    assert b.count(prompt) <= budget
    assert prompt.split("### Purchase history:\n")[1].startswith("Title: item33 ")


def test_max_history_items_keeps_the_newest(tok) -> None:
    hist = _items(12)
    b = PromptBuilder.from_config(tok, PromptConfig(max_history_items=3))
    assert b.fit(hist) == hist[-3:]
    assert b.test_prompt(hist).count("Title: item") == 3
    tight = PromptBuilder(tok, max_length=b.count(render(hist[-2:], None)) + 2, max_items=3)
    assert tight.fit(hist) == hist[-2:]  # the token budget still applies under the cap


def test_train_pair_budget_counts_target_and_eos(tok) -> None:
    hist = _items(30)
    b0 = PromptBuilder(tok, max_length=100_000)
    for budget in (120, 150, 200, 333):
        b = PromptBuilder(tok, max_length=budget)
        pair = b.train_pair(hist, "Title: the target item", "u1")
        n = b.count(pair.text(tok.eos_token))
        assert n <= budget
        lines = pair.prompt.split("### Purchase history:\n")[1].split("\n\n### Next item:\n")[0]
        kept = lines.split("\n")
        assert kept == hist[-len(kept):]  # a suffix of whole items
        # One more (older) item would not have fitted.
        if len(kept) < len(hist):
            more = render(hist[-len(kept) - 1:], "Title: the target item") + tok.eos_token
            assert b0.count(more) > budget


def test_test_prompt_reserves_new_tokens(tok) -> None:
    hist = _items(30)
    b = PromptBuilder(tok, max_length=300)
    p = b.test_prompt(hist, reserve=50)
    assert b.count(p) <= 250
    assert p.endswith("### Next item:\n")


def test_newest_item_alone_over_budget_is_shortened_from_its_end(tok) -> None:
    long_item = "Title: " + " ".join(f"word{i}" for i in range(200))
    b = PromptBuilder(tok, max_length=10_000)
    fixed = b.count(render([], None))
    b = PromptBuilder(tok, max_length=fixed + 20)
    kept = b.fit(["Title: old", long_item])
    assert len(kept) == 1 and kept[0].startswith("Title: word0 word1")
    assert long_item.startswith(kept[0])
    assert b.count(render(kept, None)) <= fixed + 20


def test_budget_smaller_than_template_is_a_config_error(tok) -> None:
    b = PromptBuilder(tok, max_length=40)
    with pytest.raises(ConfigError, match="prompt.max_length"):
        b.fit(_items(3))


def test_pairs_from_examples(tok) -> None:
    cat = Catalog(ids=["a", "b", "c"], titles=["Red lipstick", "Blue  nail   polish", "Comb"])
    exs = [Example("u1", (0, 1), 2, 4), Example("u2", (2,), 0, 3)]
    b = PromptBuilder(tok, max_length=1024)
    pairs = make_pairs(exs, cat, b)
    assert pairs[0].user_id == "u1" and pairs[0].target == "Title: Comb"
    assert "Title: Red lipstick\nTitle: Blue nail polish\n\n### Next item:\n" in pairs[0].prompt
    prompts = test_prompts(exs, cat, tok, PromptConfig())
    assert prompts[1] == ("u2", render(["Title: Comb"], None))


def test_pairs_use_item_format_in_template(tok) -> None:
    cat = Catalog(ids=["a", "b"], titles=["Comb", "Brush"], attrs=[{"brand": "X"}, {"brand": "Y"}],
                  item_format="Title: {title} | Brand: {brand}")
    prompts = test_prompts([Example("u", (0,), 1, 3)], cat, tok, PromptConfig())
    assert "format: Title: <item title> | Brand: <item brand> \n" in prompts[0][1]
    assert "Title: Comb | Brand: X\n" in prompts[0][1]


COMPACT = "### Purchase history:\n{history}\n\n### Next item:\n{target}"


def test_compact_template_with_a_history_cap(tok) -> None:
    """A template without the instruction paragraph, and the newest N items: the prompt is the
    history lines and the next-item line only, and costs fewer tokens than the paper's."""
    hist = _items(12)
    compact = PromptBuilder.from_config(tok, PromptConfig(template=COMPACT, max_history_items=5))
    paper = PromptBuilder.from_config(tok, PromptConfig(max_history_items=5))
    prompt = compact.test_prompt(hist)
    assert prompt.startswith("### Purchase history:\n") and prompt.endswith("### Next item:\n")
    assert prompt.count("Title: item") == 5 and "Below is a customer" not in prompt
    assert compact.count(prompt) < paper.count(paper.test_prompt(hist))
    pair = compact.train_pair(hist, "Title: the next one", "u1")
    assert pair.prompt == prompt and pair.target == "Title: the next one"


def test_item_starts_point_at_each_history_item() -> None:
    from glossrec.prompts import item_starts, render

    history = ["Title: a comb", "Title: shampoo 500ml", "Title: x"]
    for template in (PAPER_TEMPLATE, "{target}? ### History\n{history}\n### Next:\n{target}",
                     "no history here {target}"):
        text = render(history, None, template)
        starts = item_starts(history, template)
        assert len(starts) == (len(history) if "{history}" in template else 0)
        for at, item in zip(starts, history):
            assert text[at:at + len(item)] == item
