"""import_optional: a missing optional package is a ConfigError naming the extra that brings it."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from glossrec.errors import ConfigError, import_optional


def test_missing_package_names_its_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "Stemmer", None)  # import Stemmer -> ModuleNotFoundError
    with pytest.raises(ConfigError) as e:
        import_optional("Stemmer", "stemmer", "retrieve.bm25_stemmer", package="PyStemmer")
    assert str(e.value) == ('retrieve.bm25_stemmer needs PyStemmer, which is not installed: '
                            'pip install "glossrec[stemmer]" (or pip install PyStemmer)')
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)  # imported earlier in this process
    with pytest.raises(ConfigError, match=r'pip install "glossrec\[report\]"'):
        import_optional("matplotlib.pyplot", "report", "report.png")


def test_installed_package_with_a_broken_dependency_is_not_disguised(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "halfinstalled.py").write_text("import no_such_dependency_xyz\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ModuleNotFoundError) as e:
        import_optional("halfinstalled", "x", "a feature")
    assert e.value.name == "no_such_dependency_xyz"


def test_present_package_is_returned() -> None:
    assert import_optional("json", "x", "a feature") is sys.modules["json"]
