"""Run `glossrec ARGS` in this process and SIGKILL it right after training has written the
checkpoint of optimizer step N: a kill at a known point, for resume tests of whole commands.

Usage: python tests/kill_helper.py N ARGS...
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from typing import Any


def main() -> None:
    from glossrec.train import checkpoints
    from glossrec.cli import main as glossrec

    kill_at = int(sys.argv[1])
    save = checkpoints._Run.save_checkpoint

    def save_then_die(run: Any) -> Path:
        path = save(run)
        if run.state.step >= kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        return path

    checkpoints._Run.save_checkpoint = save_then_die  # type: ignore[method-assign]
    sys.argv = ["glossrec", *sys.argv[2:]]
    glossrec()


if __name__ == "__main__":
    main()
