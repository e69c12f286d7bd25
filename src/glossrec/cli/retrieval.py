"""CLI commands: `lis` (Last-Item Search baseline) and `retrieve` (given query texts)."""

from __future__ import annotations

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


def eval_config(config: Path | None, sets: list[str] | None, data: Path | None = None,
                retriever: str | None = None, encoder: str | None = None, split: str | None = None,
                users: int | None = None, exclude: bool | None = None, **extra: Any) -> Any:
    """The config of an evaluating command: file < its options < --set."""
    from glossrec.config import load_config

    return load_config(config, with_sets(
        common_overrides(data, retriever, encoder, split, users, exclude, **extra), sets))


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
def lis(
    out: OutOpt,
    data: DataOpt = None,
    retriever: RetrieverOpt = None,
    encoder: EncoderOpt = None,
    exclude_history: ExclOpt = None,
    split: SplitOpt = None,
    users: UsersOpt = None,
    e5_prefixes: Annotated[Optional[bool], typer.Option("--e5-prefixes/--no-e5-prefixes")] = None,
    faiss: Annotated[Optional[bool], typer.Option("--faiss/--no-faiss", help="FAISS index for dense search.")] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    json_out: JsonOutOpt = False,
) -> None:
    """Last-Item Search: query the catalog with the text of the user's last item."""
    from glossrec.pipeline import run_lis

    cfg = eval_config(config, set_, data, retriever, encoder, split, users, exclude_history,
                      **{"retrieve.e5_prefixes": e5_prefixes, "retrieve.faiss": faiss})
    ev = run_lis(cfg, out)
    print_result(f"LIS-{cfg.retrieve.retriever}", ev, out, json_out)


@app.command()
def retrieve(
    queries: Annotated[Path, typer.Option("--queries", help="JSONL {user_id, texts} or the reference JSON array {reviewer_id, generated_sequences}.")],
    out: OutOpt,
    data: DataOpt = None,
    retriever: RetrieverOpt = None,
    encoder: EncoderOpt = None,
    exclude_history: ExclOpt = None,
    split: SplitOpt = None,
    ranking: Annotated[Optional[str], typer.Option("--ranking", help="paper (top-1 per text), max or rrf (top-k per text fused).")] = None,
    per_text_k: Annotated[Optional[int], typer.Option("--per-text-k", help="Hits per text for max/rrf.")] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    json_out: JsonOutOpt = False,
) -> None:
    """Match each user's given texts to the catalog and evaluate exactly those users."""
    from glossrec.pipeline import run_retrieve
    from glossrec.retrieve.queries import load_queries

    cfg = eval_config(config, set_, data, retriever, encoder, split, None, exclude_history,
                      **{"retrieve.ranking": ranking, "retrieve.per_text_k": per_text_k})
    q = load_queries(queries)
    ev = run_retrieve(cfg, q, out, source=str(queries))
    print_result(f"texts-{cfg.retrieve.retriever}-{cfg.retrieve.ranking}", ev, out, json_out)
