"""The :class:`Generator` protocol and what every backend shares.

Both backends post-process with :func:`postprocess` and cut prompts with :func:`encode_prompts`,
so a text means the same thing whichever backend made it. The backends import this module; the
factory that picks one is :mod:`glossrec.generate.factory`, so nothing here imports a backend.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

__all__ = ["Generator", "Exclusions", "postprocess", "encode_prompts"]

_NEWLINE = re.compile(r"\r\n|\r|\n")

Exclusions = Sequence[Sequence[int]]
"""Per prompt, the catalog positions (trie keys) grounded generation must not write."""


@runtime_checkable
class Generator(Protocol):
    """Anything that turns prompts into `num_return` candidate texts each, in input order.

    `exclude` (one list per prompt, or None) only matters to grounded generation; a generator
    that cannot ground raises when it is given.
    """

    def generate(self, prompts: list[str],
                 exclude: Exclusions | None = None) -> list[list[str]]: ...


def postprocess(text: str) -> str:
    """The first item line of a continuation, stripped.

    The model continues after "### Next item:\\n"; a fine-tuned model writes one "Title: ..."
    line then EOS, an untrained one rambles on. Only the first non-empty line is an item, and
    retrieval must not see the rest. Leading blank lines are skipped; an empty continuation
    gives "".
    """
    return _NEWLINE.split(text.lstrip(), maxsplit=1)[0].strip()


def encode_prompts(tokenizer: Any, prompts: list[str], max_tokens: int) -> list[list[int]]:
    """Token ids per prompt, cut from the LEFT to `max_tokens` (special tokens such as BOS kept).

    The paper's safety net (its prompts are already fitted in whole items by glossrec.prompts):
    HF truncation keeps the special tokens, and its side is tokenizer state, restored after.
    """
    old = tokenizer.truncation_side
    tokenizer.truncation_side = "left"
    try:
        enc = tokenizer(prompts, truncation=True, max_length=max_tokens, padding=False)
    finally:
        tokenizer.truncation_side = old
    return [list(ids) for ids in enc["input_ids"]]
