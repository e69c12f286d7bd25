"""An epoch's micro-batches, their split by a token cap, their grouping into optimizer steps,
and what the allocator does with the memory they free.

An epoch's order is a pure function of (seed, epoch): a resumed run recomputes it and skips the
micro-batches it has already consumed.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator, Sequence
from typing import Any

# glibc's mallopt parameters (malloc.h) and their defaults.
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4
_DEFAULT_TRIM_THRESHOLD, _DEFAULT_MMAP_MAX = 128 * 1024, 65536

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

    With ``train.trim_memory``, after each micro-batch: micro-batches of different lengths
    leave glibc's heap fragmented and freed memory is kept, so without it peak RSS can grow
    past what the live tensors need. The price is page faults when the next micro-batch
    allocates again (docs/results.md, "Training speed").
    """
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)


@contextlib.contextmanager
def kept_freed_memory() -> Iterator[None]:
    """Within: glibc serves every allocation from its heap (no mmap) and keeps what is freed.

    By default glibc maps each large tensor (the LM head's logits: ~850 x 49,152 floats per
    micro-batch) fresh from the kernel and unmaps it when freed, so every micro-batch faults
    in and zeroes the same hundreds of megabytes again: on 2 cores a quarter of a step's CPU
    time was the kernel's. Kept, the pages are reused, for a higher peak RSS (docs/results.md,
    "Training speed"). After: glibc's default limits, and the kept memory returned.
    """
    libc = _glibc()
    if libc is None:
        yield
        return
    libc.mallopt(_M_MMAP_MAX, 0)
    libc.mallopt(_M_TRIM_THRESHOLD, 2**31 - 1)
    try:
        yield
    finally:
        libc.mallopt(_M_MMAP_MAX, _DEFAULT_MMAP_MAX)
        libc.mallopt(_M_TRIM_THRESHOLD, _DEFAULT_TRIM_THRESHOLD)
        libc.malloc_trim(0)


@functools.cache
def _glibc() -> Any:
    """glibc (for malloc_trim and mallopt), loaded once; None where there is no glibc."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        libc.malloc_trim, libc.mallopt  # noqa: B018 - both must exist
        return libc
    except (OSError, AttributeError):
        return None


def _groups(batches: list[list[int]], start: int, accum: int) -> Iterator[tuple[int, list[list[int]]]]:
    for g in range(start, len(batches), accum):
        yield g, batches[g:g + accum]
