"""Generation: prompts in, several candidate next-item texts per prompt out.

Two backends sit behind one :class:`Generator` protocol: :class:`~glossrec.generate.hf.HFGenerator`
(transformers beam search; CPU or GPU) and :class:`~glossrec.generate.vllm.VLLMGenerator` (vLLM
beam search; GPU). Both post-process with :func:`postprocess`, so a text means the same thing
whichever backend made it. :func:`generate_to_file` writes results as it goes and resumes after a
kill. Importing this package does not import torch: the CLI starts fast and the backends load
only when asked for.

Grounded generation (``generate.constrain = "catalog"``, hf backend only) limits beam search to
catalog item texts (:mod:`glossrec.generate.constrain`); each user's history positions are
passed along as ``exclude`` so they are not generated again.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from glossrec.errors import ConfigError, DataError
from glossrec.io import atomic_write, read_json, write_json

if TYPE_CHECKING:
    from glossrec.config import RunConfig
    from glossrec.data import Catalog
    from glossrec.generate.constrain import CatalogTrie
    from glossrec.splits import Example

__all__ = [
    "Generator", "postprocess", "encode_prompts", "make_generator", "generate_to_file",
    "read_generations", "generate_examples", "generation_fingerprint",
    "HFGenerator", "VLLMGenerator",
]

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


def __getattr__(name: str) -> Any:
    # The backends import torch (or vllm): load them on first use only.
    if name == "HFGenerator":
        from glossrec.generate.hf import HFGenerator

        return HFGenerator
    if name == "VLLMGenerator":
        from glossrec.generate.vllm import VLLMGenerator

        return VLLMGenerator
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# --- resumable output file ------------------------------------------------------------------


@dataclass
class _Existing:
    done: dict[str, list[str]]
    good_bytes: int
    """Length of the file's prefix made of complete lines; anything after it is a torn write."""


def _scan(path: Path) -> _Existing:
    """Read the complete lines of a generations file; a torn last line is reported, not parsed."""
    done: dict[str, list[str]] = {}
    good = 0
    if not path.exists():
        return _Existing(done, 0)
    data = path.read_bytes()
    lines = data.split(b"\n")
    # Everything before the last "\n" is complete; what follows it (if anything) is torn.
    complete, _tail = lines[:-1], lines[-1]
    for lineno, raw in enumerate(complete, start=1):
        if not raw.strip():
            good += len(raw) + 1
            continue
        try:
            obj = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError):
            if lineno == len(complete):
                break  # a broken final line is a torn write too: cut it off with the tail
            raise DataError("not valid JSON (a corrupt generations file; delete it to start over)",
                            path, lineno) from None
        uid = obj.get("user_id") if isinstance(obj, dict) else None
        texts = obj.get("texts") if isinstance(obj, dict) else None
        if not isinstance(uid, str) or not isinstance(texts, list):
            raise DataError("expected {\"user_id\": str, \"texts\": [str, ...]}", path, lineno)
        if uid in done:
            raise DataError(f"user {uid!r} appears twice", path, lineno, "user_id")
        done[uid] = [str(t) for t in texts]
        good += len(raw) + 1
    return _Existing(done, good)


def _repair(path: Path) -> dict[str, list[str]]:
    """The users of a generations file, after cutting off a torn last line (durably)."""
    existing = _scan(path)
    if path.exists() and path.stat().st_size != existing.good_bytes:
        with open(path, "r+b") as f:
            f.truncate(existing.good_bytes)
            f.flush()
            os.fsync(f.fileno())
    return existing.done


def _batches(items: Sequence[tuple[str, str]], size: int) -> Iterator[list[tuple[str, str]]]:
    for start in range(0, len(items), size):
        yield list(items[start:start + size])


def _line(user_id: str, texts: list[str]) -> str:
    return json.dumps({"user_id": user_id, "texts": texts}, ensure_ascii=False) + "\n"


def generate_to_file(generator: Generator, items: list[tuple[str, str]], out_path: Path,
                     batch_size: int, show_progress: bool = True,
                     on_batch: Callable[[int], None] | None = None,
                     exclude: Mapping[str, Sequence[int]] | None = None) -> Path:
    """Generate for (user_id, prompt) pairs, appending one JSON line per user as it goes.

    `exclude`: user_id -> catalog positions that user's grounded generation must not write.

    A killed run loses at most the batch in flight: each batch is flushed and fsynced, and on
    restart users already in the file are skipped and a torn last line is cut off. Pending
    users are processed shortest prompt first so that each batch pads little; when every user
    is done the file is rewritten (atomically) in the order of `items`, so the result does not
    depend on where a run was interrupted.
    """
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    out_path = Path(out_path)
    ids = [uid for uid, _ in items]
    if len(set(ids)) != len(ids):
        dup = next(u for i, u in enumerate(ids) if u in ids[:i])
        raise ValueError(f"user {dup!r} is listed twice")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    done = _repair(out_path)
    pending = [(uid, p) for uid, p in items if uid not in done]
    # Characters are a good enough proxy for tokens to group similar lengths.
    pending.sort(key=lambda it: len(it[1]))

    from tqdm.auto import tqdm

    bar = tqdm(total=len(items), initial=len(items) - len(pending), unit="user",
               desc="generate", disable=not show_progress, file=sys.stderr, dynamic_ncols=True)
    try:
        with open(out_path, "a", encoding="utf-8") as f:
            for batch in _batches(pending, batch_size):
                prompts = [p for _, p in batch]
                if exclude is None:
                    texts = generator.generate(prompts)
                else:
                    texts = generator.generate(prompts,
                                               [exclude.get(uid, ()) for uid, _ in batch])
                if len(texts) != len(batch):
                    raise RuntimeError(f"generator returned {len(texts)} results for {len(batch)} prompts")
                for (uid, _), t in zip(batch, texts):
                    f.write(_line(uid, t))
                    done[uid] = t
                f.flush()
                os.fsync(f.fileno())
                bar.update(len(batch))
                if on_batch is not None:
                    on_batch(len(batch))
    finally:
        bar.close()
    _reorder(out_path, ids, done)
    return out_path


def _reorder(path: Path, order: list[str], done: dict[str, list[str]]) -> None:
    """Rewrite the file in `order` (users not in `order` kept after, in file order)."""
    current = list(done)
    known = set(order)
    wanted = order + [u for u in current if u not in known]
    if current == wanted:
        return
    with atomic_write(path) as f:
        for uid in wanted:
            f.write(_line(uid, done[uid]))


def read_generations(path: Path) -> dict[str, list[str]]:
    """user_id -> texts of a generations file (complete lines only; a torn last line is ignored)."""
    path = Path(path)
    if not path.exists():
        raise DataError("file not found", path)
    return _scan(path).done


# --- a stage: examples of a split -> generations file ---------------------------------------


def _adapter_fingerprint(adapter_dir: Path | None) -> dict[str, Any] | None:
    if adapter_dir is None:
        return None
    import hashlib

    h = hashlib.sha256()
    for name in ("adapter_config.json", "adapter_model.safetensors", "adapter_model.bin"):
        f = Path(adapter_dir) / name
        if f.is_file():
            with open(f, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    h.update(chunk)
    return {"path": str(adapter_dir), "sha256": h.hexdigest()}


def generation_fingerprint(cfg: RunConfig, adapter_dir: Path | None) -> dict[str, Any]:
    """Everything that changes the texts: a generations file made under another fingerprint
    must not be resumed (it would mix two models' outputs)."""
    g = cfg.generate
    gen: dict[str, Any] = {"backend": g.backend, "num_beams": g.num_beams,
                           "num_return": g.num_return, "max_new_tokens": g.max_new_tokens,
                           "bf16": g.bf16, "stop_at_newline": g.stop_at_newline}
    if g.constrain != "none":  # only then: free-text files made before these settings still resume
        gen.update(constrain=g.constrain, constrain_exclude_history=g.constrain_exclude_history,
                   grounded_score=g.grounded_score)
    return {
        "model": cfg.model.name,
        "adapter": _adapter_fingerprint(adapter_dir),
        "generate": gen,
        "prompt": {"template": cfg.prompt.template, "max_length": cfg.prompt.max_length,
                   "item_format": cfg.data.item_format, "title_words": cfg.data.title_words},
    }


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
            diff = sorted(k for k in meta if old is None or old.get(k) != meta[k])
            raise ConfigError(f"{out_path}: made with {what} (differs in: {', '.join(diff)}); "
                              "resuming would mix outputs: pass --overwrite to start over")
    write_json(mp, meta)


def generate_examples(cfg: RunConfig, examples: Sequence[Example], catalog: Catalog,
                      adapter_dir: Path | None, out_path: Path, *, generator: Generator | None = None,
                      tokenizer: Any = None, overwrite: bool = False, extra_meta: dict[str, Any] | None = None,
                      show_progress: bool = True) -> Path:
    """Generate texts for `examples` into `out_path` (resumable), the model loaded only if some
    user is still missing. Prompts are the paper's test prompts, fitted in whole items to
    prompt.max_length - generate.max_new_tokens tokens.
    """
    from glossrec.prompts import test_prompts

    out_path = Path(out_path)
    meta = {**generation_fingerprint(cfg, adapter_dir), **(extra_meta or {})}
    _check_meta(out_path, meta, overwrite)
    if overwrite:
        for part in _part_files(out_path):
            part.unlink()
    done = _absorb_parts(out_path)  # with what workers of a killed parallel run had finished
    if all(ex.user_id in done for ex in examples):
        generate_to_file(_Nothing(), [(ex.user_id, "") for ex in examples], out_path, 1,
                         show_progress=False)  # only puts the file in order
        return out_path
    workers = _effective_workers(cfg) if generator is None else 1
    grounded = cfg.generate.constrain == "catalog"
    texts = catalog.texts() if grounded and generator is None else None
    if generator is None and workers == 1:
        generator = make_generator(cfg, adapter_dir, texts)
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
    if workers > 1:
        _generate_parallel(cfg, adapter_dir, [it for it in items if it[0] not in done], out_path,
                           workers, show_progress, texts, exclude)
        generator = _Nothing()  # every user is in the file now; the call below only orders it
    assert generator is not None
    return generate_to_file(generator, items, out_path, cfg.generate.batch_size, show_progress,
                            exclude=exclude)


class _Nothing:
    def generate(self, prompts: list[str], exclude: Exclusions | None = None) -> list[list[str]]:
        raise AssertionError("every user is already generated")


# --- CPU data parallelism: N worker processes, one part file each ---------------------------


def _part_files(out_path: Path) -> list[Path]:
    return sorted(Path(out_path).parent.glob(Path(out_path).name + ".part*"))


def _absorb_parts(out_path: Path) -> dict[str, list[str]]:
    """Append the complete lines of worker part files to `out_path` (durably), then delete them;
    returns every user now in `out_path`.

    A part's torn last line is dropped (that user is generated again); a user already in the
    main file is not duplicated. Main file first, parts deleted after: a kill in between only
    leaves parts whose users are skipped next time.
    """
    parts = _part_files(out_path)
    if not parts:
        return _scan(out_path).done
    done = _repair(out_path)
    with open(out_path, "a", encoding="utf-8") as f:
        for part in parts:
            for uid, texts in _scan(part).done.items():
                if uid not in done:
                    f.write(_line(uid, texts))
                    done[uid] = texts
        f.flush()
        os.fsync(f.fileno())
    for part in parts:
        part.unlink()
    return done


def _effective_workers(cfg: RunConfig) -> int:
    n = cfg.generate.workers
    if n == 1:
        return 1
    if cfg.generate.backend != "hf":
        raise ConfigError(f"generate.workers = {n} is for the hf backend on a CPU; "
                          f"the {cfg.generate.backend} backend batches on the GPU by itself")
    import torch

    if torch.cuda.is_available():
        import logging

        logging.getLogger(__name__).warning(
            "generate.workers = %d ignored: a GPU is present (one process batches on it)", n)
        return 1
    return n


def _threads_per_worker(workers: int) -> int:
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    return max(1, cores // workers)


def _worker(cfg_json: str, adapter_dir: str | None, items: list[tuple[str, str]], part: str,
            threads: int, progress: Any, parent: int, catalog: list[str] | None = None,
            exclude: dict[str, list[int]] | None = None) -> None:
    """One worker process: its own model (and, grounded, the same trie from `catalog`)."""
    import torch

    from glossrec.config import RunConfig

    _die_with_parent()
    torch.set_num_threads(threads)
    cfg = RunConfig.model_validate_json(cfg_json)
    generator = make_generator(cfg, Path(adapter_dir) if adapter_dir else None, catalog)

    def report(n: int) -> None:
        # An orphan (parent killed with SIGKILL) must stop: a rerun absorbs and reuses its file.
        if os.getppid() != parent:
            raise SystemExit(1)
        progress.put(n)

    generate_to_file(generator, items, Path(part), cfg.generate.batch_size, show_progress=False,
                     on_batch=report, exclude=exclude)


def _die_with_parent() -> None:
    """Linux: have the kernel send SIGTERM to this worker when its parent dies."""
    try:
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass  # elsewhere the getppid() check after each batch does it


def _share_exclusions(exclude: Mapping[str, Sequence[int]] | None,
                      share: list[tuple[str, str]]) -> dict[str, list[int]] | None:
    if exclude is None:
        return None
    return {uid: list(exclude.get(uid, ())) for uid, _ in share}


def _generate_parallel(cfg: RunConfig, adapter_dir: Path | None, pending: list[tuple[str, str]],
                       out_path: Path, workers: int, show_progress: bool,
                       catalog: list[str] | None = None,
                       exclude: Mapping[str, Sequence[int]] | None = None) -> None:
    """Split `pending` over `workers` spawned processes and merge their part files.

    Users are dealt round-robin in prompt-length order, so every worker gets the same mix of
    short and long prompts (and its batches still group similar lengths). Grounded: every
    worker builds the trie from `catalog` and gets its users' exclusions.
    """
    import multiprocessing as mp
    import queue as queue_mod

    from tqdm.auto import tqdm

    pending = sorted(pending, key=lambda it: len(it[1]))
    shares = [pending[i::workers] for i in range(workers)]
    shares = [s for s in shares if s]
    ctx = mp.get_context("spawn")  # a forked torch process can deadlock in its thread pools
    progress = ctx.Queue()
    threads = _threads_per_worker(len(shares))
    procs = [ctx.Process(target=_worker, daemon=True,
                         args=(cfg.model_dump_json(), str(adapter_dir) if adapter_dir else None,
                               share, f"{out_path}.part{i}", threads, progress, os.getpid(),
                               catalog, _share_exclusions(exclude, share)))
             for i, share in enumerate(shares)]
    for p in procs:
        p.start()
    bar = tqdm(total=len(pending), unit="user", desc=f"generate ({len(procs)} workers)",
               disable=not show_progress, file=sys.stderr, dynamic_ncols=True)
    try:
        while any(p.is_alive() for p in procs):
            try:
                bar.update(progress.get(timeout=0.5))
            except queue_mod.Empty:
                pass
    finally:
        for p in procs:
            if p.is_alive():
                p.terminate()
            p.join()
        bar.close()
        _absorb_parts(out_path)  # keep whatever finished, even when a worker failed
    failed = [i for i, p in enumerate(procs) if p.exitcode != 0]
    if failed:
        raise RuntimeError(f"generation worker(s) {failed} failed (exit codes "
                           f"{[procs[i].exitcode for i in failed]}); finished users are kept in "
                           f"{out_path}, run again to resume")
