"""Help texts render whole, the config reference matches the code, `config show` resolves."""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterator

from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from glossrec.cli import app
from glossrec.config import RunConfig, load_config, reference_markdown

from .conftest import ROOT, cli


def _commands() -> Iterator[tuple[list[str], Any]]:
    """Every command and group of the CLI, with the words that invoke it."""
    def walk(path: list[str], cmd: Any) -> Iterator[tuple[list[str], Any]]:
        yield path, cmd
        if hasattr(cmd, "commands"):  # a group (typer vendors its own copy of click)
            for name, sub in cmd.commands.items():
                yield from walk([*path, name], sub)
    yield from walk([], typer.main.get_command(app))


def _flat(text: str) -> str:
    """Whitespace-insensitive text; a word click wrapped at a hyphen is joined again."""
    return " ".join(re.sub(r"-\n\s+", "-", text).split())


COMMANDS = list(_commands())


@pytest.mark.parametrize("path,cmd", COMMANDS, ids=[" ".join(p) or "glossrec" for p, _ in COMMANDS])
def test_help_renders_whole_at_80_columns(path: list[str], cmd: Any) -> None:
    result = CliRunner().invoke(app, [*path, "--help"],
                                terminal_width=80, env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    out = _flat(result.output)
    # The docstring's words appear as written (no markup eaten, e.g. "[sasrec]").
    doc = (cmd.help or "").replace("\b", "")
    assert _flat(doc) in out, f"help of {path} lost text"
    for param in cmd.params:
        for name in param.opts + param.secondary_opts:
            if name.startswith("-"):
                assert name in result.output, f"{path}: option {name} cut or missing"
        if getattr(param, "help", None):
            assert _flat(param.help) in out, f"{path}: help of {param.name} lost text"
    assert max(len(line) for line in result.output.splitlines()) <= 80


def test_config_reference_file_matches_the_code() -> None:
    """docs/config.md is generated (`glossrec config reference > docs/config.md`)."""
    assert (ROOT / "docs" / "config.md").read_text(encoding="utf-8") == reference_markdown()


def test_every_config_key_has_a_meaning_and_is_in_the_reference() -> None:
    text = reference_markdown()
    for name, field in RunConfig.model_fields.items():
        section = field.annotation
        fields = getattr(section, "model_fields", {name: field})
        for key, f in fields.items():
            assert f.description, f"{name}.{key} has no docstring"
            assert f"| `{key}` |" in text


def test_config_show_prints_the_resolved_config(monkeypatch, capsys) -> None:
    code, out, err = cli(monkeypatch, capsys, "config", "show", str(ROOT / "configs" / "demo.toml"),
                         "--set", "train.max_steps=7", "--set", "retrieve.retriever=bm25")
    assert code == 0, err
    shown = tomllib.loads(out)
    assert shown["train"]["max_steps"] == 7
    assert shown["retrieve"]["retriever"] == "bm25"
    want = load_config(ROOT / "configs" / "demo.toml",
                       {"train.max_steps": 7, "retrieve.retriever": "bm25"})
    assert shown["prompt"] == want.prompt.model_dump(mode="json", exclude_none=True)


def test_config_show_names_a_bad_key(monkeypatch, capsys) -> None:
    code, _, err = cli(monkeypatch, capsys, "config", "show", "--set", "train.nope=1")
    assert code == 2 and "train.nope" in err
