"""The generation stage: a split's examples in, a resumable generations file out.

:func:`generate_examples` builds the paper's test prompts, loads the model only if some user is
still missing, and writes with :func:`~glossrec.generate.store.generate_to_file` (or, with
``generate.workers`` > 1, over Ray: :mod:`glossrec.generate.distributed`). Next to the file,
``*.meta.json`` holds its :func:`generation_fingerprint`: a file made under other settings is
never resumed.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from glossrec.errors import ConfigError
from glossrec.fingerprint import differences, stage_inputs
from glossrec.generate.base import Exclusions, Generator
from glossrec.generate.factory import make_generator
from glossrec.generate.store import _absorb_parts, _part_files, generate_to_file
from glossrec.io import read_json, write_json

if TYPE_CHECKING:
    from glossrec.config import RunConfig
    from glossrec.data import Catalog
    from glossrec.splits import Example

__all__ = ["generate_examples", "generation_fingerprint", "meta_path"]


def generation_fingerprint(cfg: RunConfig, adapter_dir: Path | None) -> dict[str, Any]:
    """Everything that changes the texts (glossrec.fingerprint): a generations file made under
    another fingerprint must not be resumed (it would mix two models' outputs)."""
    return stage_inputs(cfg, "generate", adapter=adapter_dir)


def meta_path(out_path: Path) -> Path:
    """generations.jsonl -> generations.meta.json (what the file was made with)."""
    return Path(out_path).with_suffix(".meta.json")


def _check_meta(out_path: Path, meta: dict[str, Any], overwrite: bool) -> None:
    mp = meta_path(out_path)
    if overwrite:
        for p in (out_path, mp):
            Path(p).unlink(missing_ok=True)
    elif out_path.exists() and out_path.stat().st_size > 0:
        old = read_json(mp) if mp.exists() else None
        if old != meta:
            what = "an unknown setup (no " + mp.name + ")" if old is None else "other settings"
            diff = differences(old, meta)
            raise ConfigError(f"{out_path}: made with {what} (differs in: {', '.join(diff)}); "
                              "resuming would mix outputs: pass --overwrite to start over")
    write_json(mp, meta)


def generate_examples(cfg: RunConfig, examples: Sequence[Example], catalog: Catalog,
                      adapter_dir: Path | None, out_path: Path, *, generator: Generator | None = None,
                      tokenizer: Any = None, overwrite: bool = False, extra_meta: dict[str, Any] | None = None,
                      show_progress: bool = True, prior_table_file: Path | None = None) -> Path:
    """Generate texts for `examples` into `out_path` (resumable), the model loaded only if some
    user is still missing. Prompts are the paper's test prompts, fitted in whole items to
    prompt.max_length - generate.max_new_tokens tokens. `prior_table_file`: where the prior
    table (generate.prior_table) is kept between runs (one process; Ray workers make their
    own).
    """
    from glossrec.prompts import test_prompts

    out_path = Path(out_path)
    meta = {**generation_fingerprint(cfg, adapter_dir), **(extra_meta or {})}
    _check_meta(out_path, meta, overwrite)
    if overwrite:
        for part in _part_files(out_path):
            part.unlink()
    done = _absorb_parts(out_path)  # with the blocks a killed distributed run had finished
    if all(ex.user_id in done for ex in examples):
        generate_to_file(_Nothing(), [(ex.user_id, "") for ex in examples], out_path, 1,
                         show_progress=False)  # only puts the file in order
        return out_path
    distributed = generator is None and cfg.generate.workers > 1
    grounded = cfg.generate.constrain == "catalog"
    texts = catalog.texts() if grounded and generator is None else None
    if generator is None and not distributed:
        generator = make_generator(cfg, adapter_dir, texts, prior_table_file)
    tok = tokenizer if tokenizer is not None else getattr(generator, "tokenizer", None)
    if tok is None:
        from glossrec.models import load_tokenizer

        tok = load_tokenizer(cfg.model)
    pending = [ex for ex in examples if ex.user_id not in done]
    prompts = dict(test_prompts(pending, catalog, tok, cfg.prompt, reserve=cfg.generate.max_new_tokens))
    # Users already done keep their place in the order; their prompt is never used.
    items = [(ex.user_id, prompts.get(ex.user_id, "")) for ex in examples]
    # Grounded: each user's history positions (the generator applies constrain_exclude_history).
    exclude = {ex.user_id: list(ex.history) for ex in pending} if grounded else None
    if distributed:
        from glossrec.generate.distributed import generate_on_ray

        generate_on_ray(cfg, adapter_dir, [it for it in items if it[0] not in done], out_path,
                        show_progress, texts, exclude)
        generator = _Nothing()  # every user is in the file now; the call below only orders it
    assert generator is not None
    return generate_to_file(generator, items, out_path, cfg.generate.batch_size, show_progress,
                            exclude=exclude)


class _Nothing:
    def generate(self, prompts: list[str], exclude: Exclusions | None = None) -> list[list[str]]:
        raise AssertionError("every user is already generated")
