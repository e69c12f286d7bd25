"""The generations file: one JSON line per user, written as it goes and resumed after a kill.

Format: ``{"user_id": str, "texts": [str, ...]}`` per line. :func:`generate_to_file` flushes
and fsyncs each batch, so a killed run loses at most the batch in flight; on restart a torn last
line is cut off and users already in the file are skipped. Distributed generation
(:mod:`glossrec.generate.distributed`) writes each finished block of users to a part file
(``<file>.part-<digest>``) in the same format, merged into the main file by
:func:`_absorb_parts`.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from glossrec.errors import DataError
from glossrec.generate.base import Generator
from glossrec.io import atomic_write
from glossrec.progress import bars_on

__all__ = ["generate_batches", "generate_to_file", "read_generations", "write_generations",
           "write_part"]


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


def generate_batches(generator: Generator, items: Sequence[tuple[str, str]], batch_size: int,
                     exclude: Mapping[str, Sequence[int]] | None = None,
                     ) -> Iterator[list[tuple[str, list[str]]]]:
    """(user_id, texts) per batch of `batch_size` (user_id, prompt) pairs, in the given order.

    `exclude`: user_id -> catalog positions that user's grounded generation must not write.
    The one loop over a generator: the generations file and the Ray replicas both use it.
    """
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    for start in range(0, len(items), batch_size):
        batch = items[start:start + batch_size]
        prompts = [p for _, p in batch]
        if exclude is None:
            texts = generator.generate(prompts)
        else:
            texts = generator.generate(prompts, [exclude.get(uid, ()) for uid, _ in batch])
        if len(texts) != len(batch):
            raise RuntimeError(f"generator returned {len(texts)} results for {len(batch)} prompts")
        yield [(uid, t) for (uid, _), t in zip(batch, texts)]


def _line(user_id: str, texts: list[str]) -> str:
    return json.dumps({"user_id": user_id, "texts": texts}, ensure_ascii=False) + "\n"


def generate_to_file(generator: Generator, items: list[tuple[str, str]], out_path: Path,
                     batch_size: int, show_progress: bool = True,
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
        raise ValueError("batch_size must be >= 1")  # before the file is touched
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
               desc="generate", disable=not bars_on(show_progress), file=sys.stderr, dynamic_ncols=True)
    try:
        with open(out_path, "a", encoding="utf-8") as f:
            for rows in generate_batches(generator, pending, batch_size, exclude):
                for uid, t in rows:
                    f.write(_line(uid, t))
                    done[uid] = t
                f.flush()
                os.fsync(f.fileno())
                bar.update(len(rows))
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


def write_generations(path: Path, rows: Sequence[tuple[str, list[str]]]) -> Path:
    """A whole generations file (user_id -> texts, in `rows`' order), all or nothing."""
    with atomic_write(Path(path)) as f:
        for uid, texts in rows:
            f.write(_line(uid, texts))
    return Path(path)


# --- part files of distributed generation ---------------------------------------------------


def write_part(out_path: Path, rows: Sequence[tuple[str, list[str]]]) -> Path:
    """One finished block of users as a part file beside `out_path`, all or nothing.

    Named by a digest of its users, so a block generated twice (a retried task) writes the
    same file; a rerun absorbs every part before it decides who is missing.
    """
    import hashlib

    digest = hashlib.sha256("\n".join(uid for uid, _ in rows).encode()).hexdigest()[:16]
    part = Path(f"{out_path}.part-{digest}")
    with atomic_write(part) as f:
        for uid, texts in rows:
            f.write(_line(uid, texts))
    return part


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
