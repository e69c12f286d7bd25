"""An epoch's micro-batches, their split by a token cap, their grouping into optimizer steps,
and the release of freed memory between micro-batches.

An epoch's order is a pure function of (seed, epoch): a resumed run recomputes it and skips the
micro-batches it has already consumed.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Sequence
from typing import Any

def _epoch_batches(lengths: Sequence[int], batch_size: int, seed: int, epoch: int,
                   group_by_length: bool = False) -> list[list[int]]:
    """The shuffled micro-batches of one epoch, a pure function of (seed, epoch).

    With `group_by_length`, each window of 64 micro-batches of the shuffled order is sorted by
    length before it is cut, and the micro-batches are shuffled again: every batch pads to a
    near-equal length, while an epoch still visits the examples in random order.
    """
    import torch

    gen = torch.Generator().manual_seed(seed + epoch)
    order = torch.randperm(len(lengths), generator=gen).tolist()
    if not group_by_length:
        return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    window = batch_size * 64
    batches: list[list[int]] = []
    for w in range(0, len(order), window):
        chunk = sorted(order[w:w + window], key=lambda i: lengths[i])
        batches.extend(chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size))
    return [batches[i] for i in torch.randperm(len(batches), generator=gen).tolist()]


def _split_by_tokens(batch: list[int], lengths: Sequence[int], cap: int | None) -> list[list[int]]:
    """Cut a micro-batch so that each part pads to at most `cap` tokens (one text at least).

    The gradient is unchanged: a step's loss is the sum over its label tokens divided by their
    count, however its texts are grouped. Only the memory of the largest forward pass shrinks.
    """
    if cap is None:
        return [batch]
    parts: list[list[int]] = []
    for i in sorted(batch, key=lambda i: lengths[i]):
        if parts and (len(parts[-1]) + 1) * lengths[i] <= cap:
            parts[-1].append(i)
        else:
            parts.append([i])
    return parts


def _release_freed_memory() -> None:
    """Return the allocator's freed pages to the OS (glibc's malloc_trim; a no-op elsewhere).

    Micro-batches of different lengths leave glibc's heap fragmented, and freed memory is kept,
    so peak RSS grows far beyond what the live tensors need (docs/results.md, "Training speed").
    Trimming after each micro-batch costs milliseconds.
    """
    trim = _libc_malloc_trim()
    if trim is not None:
        trim(0)


@functools.cache
def _libc_malloc_trim() -> Any:
    """glibc's malloc_trim, looked up once; None where there is no glibc."""
    try:
        import ctypes

        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None


def _groups(batches: list[list[int]], start: int, accum: int) -> Iterator[tuple[int, list[list[int]]]]:
    for g in range(start, len(batches), accum):
        yield g, batches[g:g + accum]
