"""CLI commands: `lis` (Last-Item Search baseline) and `retrieve` (given query texts)."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from glossrec.cli.app import JsonOutOpt, SetOpt, app, print_json, with_sets

DataOpt = Annotated[Optional[Path], typer.Option("--data", help="Dataset folder (items + sequences).")]
ConfigOpt = Annotated[Optional[Path], typer.Option("--config", help="TOML config file.")]
RetrieverOpt = Annotated[Optional[str], typer.Option("--retriever", help="bm25 or dense.")]
EncoderOpt = Annotated[Optional[str], typer.Option("--encoder", help="Sentence-transformers model (name or path); default: the embedded all-MiniLM-L6-v2.")]
SplitOpt = Annotated[Optional[str], typer.Option("--split", help="test (last item) or valid (second to last).")]
UsersOpt = Annotated[Optional[int], typer.Option("--users", help="Evaluate a reproducible random sample of N users.")]
ExclOpt = Annotated[Optional[bool], typer.Option("--exclude-history/--keep-history", help="Remove items already in the history from the ranking (paper: keep).")]
OutOpt = Annotated[Path, typer.Option("--out", help="Run directory to write.")]


def common_overrides(data: Path | None, retriever: str | None, encoder: str | None,
                     split: str | None, users: int | None, exclude: bool | None,
                     **extra: Any) -> dict[str, Any]:
    """CLI options -> config overrides (None = keep the config file's value)."""
    ov: dict[str, Any] = {
        # Absolute: the run's config.toml is read again from the run folder (recommend, serve).
        "data.path": str(data.expanduser().resolve()) if data else None,
        "retrieve.retriever": retriever,
        "retrieve.encoder": encoder,
        "retrieve.exclude_history": exclude,
        "evaluate.split": split,
        "evaluate.users": users,
    }
    ov.update(extra)
    return {k: v for k, v in ov.items() if v is not None}


@dataclass
class EvalOptions:
    """The options every evaluating command shares (lis, retrieve, baseline, hybrid), declared
    once here and added to a command by :func:`eval_options`."""

    out: Path
    data: Path | None = None
    retriever: str | None = None
    encoder: str | None = None
    split: str | None = None
    users: int | None = None
    exclude_history: bool | None = None
    config: Path | None = None
    set_: list[str] | None = None
    json_out: bool = False

    def run_config(self, **extra: Any) -> Any:
        """The command's config: file < these options (and `extra`) < --set."""
        from glossrec.config import load_config

        return load_config(self.config, with_sets(common_overrides(
            self.data, self.retriever, self.encoder, self.split, self.users,
            self.exclude_history, **extra), self.set_))


_EVAL_OPTIONS: dict[str, tuple[Any, Any]] = {
    "out": (OutOpt, inspect.Parameter.empty), "data": (DataOpt, None),
    "retriever": (RetrieverOpt, None), "encoder": (EncoderOpt, None), "split": (SplitOpt, None),
    "users": (UsersOpt, None), "exclude_history": (ExclOpt, None), "config": (ConfigOpt, None),
    "set_": (SetOpt, None), "json_out": (JsonOutOpt, False),
}


def eval_options(*names: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Give a command these shared options (and always --out, --config, --set, --json); the
    command receives them as one ``opts: EvalOptions`` argument."""
    chosen = ["out", *names, "config", "set_", "json_out"]

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        own = [p for p in inspect.signature(fn, eval_str=True).parameters.values() if p.name != "opts"]
        required = [p for p in own if p.default is inspect.Parameter.empty]
        shared = [inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY, default=_EVAL_OPTIONS[n][1],
                                    annotation=_EVAL_OPTIONS[n][0]) for n in chosen]
        optional = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in own if p not in required]
        params = [p.replace(kind=inspect.Parameter.POSITIONAL_OR_KEYWORD) for p in required] + \
            [shared[0].replace(kind=inspect.Parameter.KEYWORD_ONLY)] + optional + shared[1:]

        @functools.wraps(fn)
        def command(**kwargs: Any) -> Any:
            opts = EvalOptions(**{n: kwargs.pop(n) for n in chosen})
            return fn(opts=opts, **kwargs)

        command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
        command.__annotations__ = {p.name: p.annotation for p in params}
        return command

    return decorate


def print_result(name: str, ev: Any, out: Path | None, json_out: bool = False) -> None:
    """The metrics as a table (+ per segment), or with `json_out` as JSON {name: metrics}."""
    from glossrec.evaluate import format_segments, format_table

    if json_out:
        print_json({name: ev.metrics})
        return
    typer.echo(format_table({name: ev.metrics}))
    typer.echo("\nper segment (n = full sequence length; "
               f"cold n<={ev.metrics['segments']['cold_max']}, power n>{ev.metrics['segments']['power_min']}):")
    typer.echo(format_segments(ev.metrics))
    if out is not None:
        typer.echo(f"\nwrote {out}/metrics.json, rankings.jsonl, config.toml")


@app.command()
@eval_options("data", "retriever", "encoder", "exclude_history", "split", "users")
def lis(
    opts: EvalOptions,
    e5_prefixes: Annotated[Optional[bool], typer.Option("--e5-prefixes/--no-e5-prefixes")] = None,
    faiss: Annotated[Optional[bool], typer.Option("--faiss/--no-faiss", help="FAISS index for dense search.")] = None,
) -> None:
    """Last-Item Search: query the catalog with the text of the user's last item."""
    from glossrec.pipeline import run_lis

    cfg = opts.run_config(**{"retrieve.e5_prefixes": e5_prefixes, "retrieve.faiss": faiss})
    print_result(f"LIS-{cfg.retrieve.retriever}", run_lis(cfg, opts.out), opts.out, opts.json_out)


@app.command()
@eval_options("data", "retriever", "encoder", "exclude_history", "split")
def retrieve(
    queries: Annotated[Path, typer.Option("--queries", help="JSONL {user_id, texts} or the reference JSON array {reviewer_id, generated_sequences}.")],
    opts: EvalOptions,
    ranking: Annotated[Optional[str], typer.Option("--ranking", help="paper (top-1 per text), max or rrf (top-k per text fused).")] = None,
    per_text_k: Annotated[Optional[int], typer.Option("--per-text-k", help="Hits per text for max/rrf.")] = None,
) -> None:
    """Match each user's given texts to the catalog and evaluate exactly those users."""
    from glossrec.pipeline import run_retrieve
    from glossrec.retrieve.queries import load_queries

    cfg = opts.run_config(**{"retrieve.ranking": ranking, "retrieve.per_text_k": per_text_k})
    ev = run_retrieve(cfg, load_queries(queries), opts.out, source=str(queries))
    print_result(f"texts-{cfg.retrieve.retriever}-{cfg.retrieve.ranking}", ev, opts.out, opts.json_out)
