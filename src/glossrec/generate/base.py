"""The :class:`Generator` protocol, what every backend shares, and the factory that picks one.

Both backends post-process with :func:`postprocess` and cut prompts with :func:`encode_prompts`,
so a text means the same thing whichever backend made it. :func:`make_generator` imports a
backend (and with it torch or vllm) only when called.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from glossrec.errors import ConfigError

if TYPE_CHECKING:
    from glossrec.config import RunConfig
    from glossrec.generate.constrain import CatalogTrie

__all__ = ["Generator", "Exclusions", "postprocess", "encode_prompts", "make_generator"]

_NEWLINE = re.compile(r"\r\n|\r|\n")

log = logging.getLogger(__name__)

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


def make_generator(cfg: RunConfig, adapter_dir: Path | None,
                   catalog: Sequence[str] | None = None) -> Generator:
    """The configured backend, with the base model and (optionally) a LoRA adapter loaded.

    Grounded (generate.constrain = "catalog"): `catalog` is the item texts, keyed by position
    in the trie (a Catalog's texts(); the live service passes none of its own and fills
    ``generator.trie`` itself, so [] is fine there).
    """
    max_prompt = max(1, cfg.prompt.max_length - cfg.generate.max_new_tokens)
    grounded = cfg.generate.constrain == "catalog"
    if grounded and cfg.generate.backend != "hf":
        raise ConfigError('generate.constrain = "catalog" needs backend = "hf" (vLLM beam search '
                          'takes no token constraint); use backend = "hf" or constrain = "none"')
    if grounded and catalog is None:
        raise ConfigError('generate.constrain = "catalog" needs the catalog texts to build '
                          'its trie')
    if cfg.generate.backend == "vllm":
        from glossrec.generate.vllm import VLLMGenerator
        from glossrec.models import resolve_model_path

        return VLLMGenerator(str(resolve_model_path(cfg.model)), adapter_dir, cfg.generate,
                             max_prompt_tokens=max_prompt)
    from glossrec.generate.hf import HFGenerator
    from glossrec.models import load_model

    # Merging the adapter into the weights saves the LoRA matmuls at every step.
    model, tokenizer = load_model(cfg.model, adapter_dir=adapter_dir, trainable=False, merge=True)
    trie = prior = None
    if grounded:
        assert catalog is not None
        trie = _build_trie(tokenizer, catalog, cfg.generate.max_new_tokens)
        prior = _empty_history_prompt(cfg)
    return HFGenerator(model, tokenizer, cfg.generate, max_prompt_tokens=max_prompt, trie=trie,
                       prior_prompt=prior)


def _build_trie(tokenizer: Any, texts: Sequence[str], max_new_tokens: int) -> CatalogTrie:
    from glossrec.generate.constrain import CatalogTrie

    trie = CatalogTrie.from_texts(tokenizer, texts)
    if trie.max_tokens > max_new_tokens:
        log.info("grounded generation: the longest item is %d tokens with EOS, so beams run to %d "
                 "new tokens (generate.max_new_tokens = %d)", trie.max_tokens, trie.max_tokens,
                 max_new_tokens)
    return trie


def _empty_history_prompt(cfg: RunConfig) -> str:
    """The test prompt of an empty history (the item prior of grounded_score = "pmi")."""
    from glossrec.prompts import render, resolve_template

    return render([], None, resolve_template(cfg.prompt.template, cfg.data.item_format))
