"""Progress: when glossrec draws a bar (on long work, on a terminal, unless -q), and its
progress lines on stderr (:func:`say`).

A bar written to a file or a pipe is noise (every redraw becomes a line of a log), so every
bar glossrec draws, its own (tqdm) or a library's (sentence-transformers' "Batches"), asks
:func:`bars_on` first.
"""

from __future__ import annotations

import logging
import sys


def bars_on(requested: bool = True) -> bool:
    """True when a caller asked for a bar (long work), stderr is a terminal, and glossrec's
    logger is not silenced (the CLI's -q)."""
    if not requested:
        return False
    try:
        tty = sys.stderr.isatty()
    except (AttributeError, ValueError):  # replaced or closed stderr
        return False
    return tty and logging.getLogger("glossrec").getEffectiveLevel() <= logging.WARNING


def say(msg: str) -> None:
    """A progress line on stderr; silenced only when the "glossrec" logger is set above WARNING
    (the CLI's -q), so a library user sees it without configuring logging."""
    if logging.getLogger("glossrec").getEffectiveLevel() > logging.WARNING:
        return
    print(msg, file=sys.stderr, flush=True)
