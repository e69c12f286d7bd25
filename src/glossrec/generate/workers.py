"""CPU data parallelism for generation: N spawned worker processes, one part file each.

Each worker loads its own model and writes ``<file>.part<i>`` with
:func:`~glossrec.generate.store.generate_to_file`; the parent shows one progress bar and merges
the parts into the main file (:func:`~glossrec.generate.store._absorb_parts`), also after a
failure, so finished users are kept.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from glossrec.errors import ConfigError
from glossrec.generate.base import make_generator
from glossrec.generate.store import _absorb_parts, generate_to_file
from glossrec.progress import bars_on

if TYPE_CHECKING:
    from glossrec.config import RunConfig


def _effective_workers(cfg: RunConfig) -> int:
    n = cfg.generate.workers
    if n == 1:
        return 1
    if cfg.generate.backend != "hf":
        raise ConfigError(f"generate.workers = {n} is for the hf backend on a CPU; "
                          f"the {cfg.generate.backend} backend batches on the GPU by itself")
    import torch

    if torch.cuda.is_available():
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
               disable=not bars_on(show_progress), file=sys.stderr, dynamic_ncols=True)
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
