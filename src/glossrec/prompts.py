"""Prompts: a purchase history becomes the paper's text prompt, within a token budget.

The template (``config.PAPER_TEMPLATE``) ends with ``{target}``: a training text is the prompt
with the target item's text filled in, then the tokenizer's EOS token; a test prompt leaves the
target empty so generation continues right after ``"### Next item:\\n"``.

Budgets are enforced by cutting the history from the LEFT (oldest first) in whole items, so a
prompt never starts in the middle of a title (the paper cuts tokens from the left, which can leave
a title fragment at the top). A training text must fit ``PromptConfig.max_length`` tokens
including its target and EOS; a test prompt must fit ``max_length - reserve`` tokens (the paper:
1024 - 50 new tokens).

When even the newest history item alone does not fit (only with tiny budgets or long
``item_format`` attributes: titles are capped at 25 words), that item is kept but shortened from
its END, in whole tokens, so the prompt still starts with the item prefix ("Title: ...") and
keeps the item's most informative first words. If the template and target alone exceed the
budget, that is a configuration error.
"""

from __future__ import annotations

import re
import string
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from glossrec.config import PAPER_TEMPLATE, PromptConfig
from glossrec.data import Catalog
from glossrec.errors import ConfigError
from glossrec.splits import Example
from glossrec.progress import bars_on

__all__ = [
    "PAPER_TEMPLATE", "PAPER_ITEM_FORMAT", "PromptPair", "PromptBuilder", "render", "item_starts",
    "training_text",
    "make_template", "resolve_template", "example_texts", "make_pairs", "test_prompts",
]

PAPER_ITEM_FORMAT = "Title: {title}"
_PAPER_FORMAT_LINE = "Each item is represented by the following format: Title: <item title> \n"
_FIELD = re.compile(r"\{(\w+)\}")


@dataclass(frozen=True)
class PromptPair:
    """A rendered prompt (target left empty, history already fitted) and its target text."""

    prompt: str
    target: str
    user_id: str = ""
    item_starts: tuple[int, ...] = ()
    """Where each history item's text begins in `prompt` (characters); () when not recorded."""

    def text(self, eos: str) -> str:
        """The training text: prompt, target, EOS."""
        return self.prompt + self.target + eos


def render(history_texts: Sequence[str], target_text: str | None,
           template: str = PAPER_TEMPLATE) -> str:
    """Fill the template: history items one per line; target None -> "" (a test prompt)."""
    return template.replace("{history}", "\n".join(history_texts)).replace(
        "{target}", target_text or "")


def item_starts(history_texts: Sequence[str], template: str = PAPER_TEMPLATE) -> tuple[int, ...]:
    """Character offsets in ``render(history_texts, None, template)`` where each history item's
    text begins; () for a template without ``{history}``."""
    at = template.find("{history}")
    if at < 0:
        return ()
    start, out = len(template[:at].replace("{target}", "")), []
    for text in history_texts:
        out.append(start)
        start += len(text) + 1  # the newline that joins items
    return tuple(out)


def training_text(history_texts: Sequence[str], target_text: str, eos: str,
                  template: str = PAPER_TEMPLATE) -> str:
    """The paper's training text: the prompt with its target filled in, then EOS."""
    return render(history_texts, target_text, template) + eos


def make_template(item_format: str = PAPER_ITEM_FORMAT, source: str = "Amazon") -> str:
    """The paper's template for another catalog: its format line describes `item_format`.

    "Title: {title} | Brand: {brand}" is described as "Title: <item title> | Brand: <item brand>",
    so the instruction matches what the history lines look like. The defaults give the paper's
    template character for character.
    """
    fields = {name for _, name, _, _ in string.Formatter().parse(item_format) if name}
    described = _FIELD.sub(lambda m: f"<item {m.group(1)}>", item_format) if fields else item_format
    text = PAPER_TEMPLATE.replace(
        _PAPER_FORMAT_LINE,
        f"Each item is represented by the following format: {described} \n")
    return text.replace("purchase history on Amazon,", f"purchase history on {source},")


def resolve_template(template: str, item_format: str) -> str:
    """The template actually used: the paper's, with its format line adapted to a non-paper
    item format; any custom template is used verbatim."""
    if template == PAPER_TEMPLATE and item_format != PAPER_ITEM_FORMAT:
        return make_template(item_format)
    return template


@dataclass
class PromptBuilder:
    """Renders prompts whose token count (special tokens included) respects a budget.

    Token counts of item lines are cached per text, and the final render is always re-counted,
    so the budget holds even where BPE merges across line breaks differ from the estimate.
    """

    tokenizer: Any
    template: str = PAPER_TEMPLATE
    max_length: int = 1024
    max_items: int | None = None
    """Only the newest `max_items` history items are ever rendered (None: all that fit)."""
    _cache: dict[str, int] = field(default_factory=dict, repr=False)

    @classmethod
    def from_config(cls, tokenizer: Any, cfg: PromptConfig,
                    item_format: str = PAPER_ITEM_FORMAT) -> PromptBuilder:
        return cls(tokenizer, resolve_template(cfg.template, item_format), cfg.max_length,
                   cfg.max_history_items)

    def count(self, text: str) -> int:
        """Tokens of a whole prompt, with the special tokens the tokenizer adds (e.g. BOS)."""
        return len(self.tokenizer(text)["input_ids"])

    def _line_costs(self, texts: Sequence[str]) -> list[int]:
        missing = [t for t in dict.fromkeys(texts) if t not in self._cache]
        if missing:
            enc = self.tokenizer([t + "\n" for t in missing], add_special_tokens=False)["input_ids"]
            for t, ids in zip(missing, enc):
                self._cache[t] = len(ids)
        return [self._cache[t] for t in texts]

    def fit(self, history_texts: Sequence[str], target_text: str | None = None,
            budget: int | None = None, extra: int = 0) -> list[str]:
        """The newest items of the history whose prompt (+ target + `extra` tokens) fits.

        At most `max_items` items are kept. Whole items are dropped oldest first; a newest item
        too long on its own is shortened from its end (see the module docstring).
        """
        budget = self.max_length if budget is None else budget
        history = list(history_texts)
        if self.max_items is not None:
            history = history[-self.max_items:]
        if self.count(render(history, target_text, self.template)) + extra <= budget:
            return history
        fixed = self.count(render([], target_text, self.template)) + extra
        if fixed > budget:
            raise ConfigError(
                f"prompt.max_length: a budget of {budget} tokens cannot hold the template and "
                f"target alone ({fixed} tokens); raise prompt.max_length")
        # Estimate from per-line costs, newest first, then correct against the real count.
        costs = self._line_costs(history)
        keep, total = 0, fixed
        for cost in reversed(costs):
            if total + cost > budget:
                break
            total += cost
            keep += 1
        def fits(k: int) -> bool:
            return self.count(render(history[len(history) - k:], target_text, self.template)) \
                + extra <= budget

        # Line costs are only estimates (BPE may merge across line breaks): correct both ways.
        while keep < len(history) and fits(keep + 1):
            keep += 1
        while keep > 0 and not fits(keep):
            keep -= 1
        if keep > 0:
            return history[len(history) - keep:]
        if not history:
            return []
        return [self._shorten(history[-1], target_text, budget, extra)]

    def _shorten(self, item: str, target_text: str | None, budget: int, extra: int) -> str:
        """The longest token prefix of `item` whose one-item prompt fits (binary search)."""
        ids = self.tokenizer(item, add_special_tokens=False)["input_ids"]
        lo, hi = 0, len(ids)
        best = ""
        while lo <= hi:
            mid = (lo + hi) // 2
            cut = self.tokenizer.decode(ids[:mid]).rstrip()
            if self.count(render([cut], target_text, self.template)) + extra <= budget:
                best, lo = cut, mid + 1
            else:
                hi = mid - 1
        return best

    def train_pair(self, history_texts: Sequence[str], target_text: str,
                   user_id: str = "") -> PromptPair:
        """A training pair whose full text (prompt + target + EOS) fits max_length."""
        kept = self.fit(history_texts, target_text, self.max_length, extra=1)
        return PromptPair(render(kept, None, self.template), target_text, user_id,
                          item_starts(kept, self.template))

    def test_prompt(self, history_texts: Sequence[str], reserve: int = 50) -> str:
        """A generation prompt leaving `reserve` tokens of max_length for new tokens."""
        kept = self.fit(history_texts, None, self.max_length - reserve)
        return render(kept, None, self.template)


def example_texts(example: Example, catalog: Catalog) -> tuple[list[str], str]:
    """(history item texts oldest first, target item text) of one example."""
    return [catalog.text(i) for i in example.history], catalog.text(example.target)


def make_pairs(examples: Sequence[Example], catalog: Catalog, builder: PromptBuilder,
               mode: Literal["train", "test"] = "train", reserve: int = 50) -> list[PromptPair]:
    """(prompt, target) pairs for examples: training budgets include target + EOS, test
    budgets leave `reserve` tokens for generation."""
    from tqdm.auto import tqdm

    out = []
    for ex in tqdm(examples, desc=f"prompts ({mode})", unit="ex", disable=not bars_on(len(examples) >= 2000)):
        history, target = example_texts(ex, catalog)
        if mode == "train":
            out.append(builder.train_pair(history, target, ex.user_id))
        else:
            out.append(PromptPair(builder.test_prompt(history, reserve), target, ex.user_id))
    return out


def test_prompts(examples: Sequence[Example], catalog: Catalog, tokenizer: Any,
                 cfg: PromptConfig, reserve: int = 50) -> list[tuple[str, str]]:
    """(user_id, prompt) for generation, fitted to max_length - reserve in whole items."""
    builder = PromptBuilder.from_config(tokenizer, cfg, catalog.item_format)
    return [(p.user_id, p.prompt) for p in make_pairs(examples, catalog, builder, "test", reserve)]


test_prompts.__test__ = False  # type: ignore[attr-defined]  # not a pytest test
