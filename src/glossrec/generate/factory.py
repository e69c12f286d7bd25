"""The backend factory: a run's config and trained weights in, a ready :class:`Generator` out.

It sits above the backends (:mod:`~glossrec.generate.hf`, :mod:`~glossrec.generate.vllm`),
which import only :mod:`~glossrec.generate.base`, and imports a backend (and with it torch or
vllm) only when called. What a weights folder means (a LoRA adapter on the base model, or full
weights in its place) is :func:`glossrec.weights.base_and_adapter`'s to say.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from glossrec.errors import ConfigError
from glossrec.fingerprint import prior_table_inputs
from glossrec.generate.base import Generator
from glossrec.weights import base_and_adapter

if TYPE_CHECKING:
    from glossrec.config import RunConfig
    from glossrec.generate.constrain import CatalogTrie

__all__ = ["make_generator"]

log = logging.getLogger(__name__)


def make_generator(cfg: RunConfig, adapter_dir: Path | None,
                   catalog: Sequence[str] | None = None,
                   prior_table_file: Path | None = None) -> Generator:
    """The configured backend with the model loaded: the base model, with `adapter_dir`'s
    trained weights when given (a LoRA adapter on top, or full weights in its place).

    Grounded (generate.constrain = "catalog"): `catalog` is the item texts, keyed by position
    in the trie (a Catalog's texts(); the live service passes none of its own and fills
    ``generator.trie`` itself, so [] is fine there). `prior_table_file`: where the prior table
    (generate.prior_table) is kept between runs (a run directory's ``prior_table``).
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

        model_cfg, lora = base_and_adapter(cfg.model, adapter_dir)
        return VLLMGenerator(str(resolve_model_path(model_cfg)), lora, cfg.generate,
                             max_prompt_tokens=max_prompt)
    from glossrec.generate.hf import HFGenerator
    from glossrec.models import load_model

    # Merging the adapter into the weights saves the LoRA matmuls at every step.
    model, tokenizer = load_model(cfg.model, adapter_dir=adapter_dir, trainable=False, merge=True)
    if cfg.generate.bf16:
        model = bf16_weights(model)
    trie = prior = None
    if grounded:
        assert catalog is not None
        trie = _build_trie(tokenizer, catalog, cfg.generate.max_new_tokens)
        prior = _empty_history_prompt(cfg)
    table_file = prior_table_file if cfg.generate.prior_table else None
    return HFGenerator(model, tokenizer, cfg.generate, max_prompt_tokens=max_prompt, trie=trie,
                       prior_prompt=prior, prior_table_file=table_file,
                       prior_table_meta=prior_table_inputs(cfg, adapter_dir) if table_file else None)


def bf16_weights(model: Any) -> Any:
    """`model` with its float32 weights (the adapter already merged) cast to bf16, once.

    Under bf16 autocast alone every matmul casts its float32 weight again, which at the
    search's shapes (about 100-160 rows; the LM head's 49,152 x 576) costs more than the bf16
    matmul saves. 4-bit weights are left as they are."""
    import torch

    if getattr(model, "is_loaded_in_4bit", False) or model.dtype != torch.float32:
        return model
    log.info("generate.bf16: float32 weights cast to bf16 for generation")
    return model.to(torch.bfloat16)


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
