"""The package front door: `from glossrec import ...` gives the public API, lazily."""

from __future__ import annotations

import subprocess
import sys

import pytest

import glossrec


@pytest.mark.parametrize("name", [n for n in glossrec.__all__ if n != "__version__"])
def test_every_public_name_resolves(name: str) -> None:
    assert getattr(glossrec, name) is not None


def test_front_door_names() -> None:
    from glossrec import Recommender, load_config, run, run_lis  # noqa: F401
    from glossrec.serve import Recommender as owner

    assert Recommender is owner
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        glossrec.nope  # noqa: B018


def test_import_glossrec_stays_light() -> None:
    """`import glossrec` (and reading a config) loads neither torch nor transformers."""
    code = ("import sys, glossrec; glossrec.load_config(None); "
            "print(sorted(m for m in ('torch', 'transformers', 'fastapi') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
