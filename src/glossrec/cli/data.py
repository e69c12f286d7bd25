"""CLI commands: data (fetch, import amazon|csv, export, stats, sample).

Heavy imports stay inside the commands so `glossrec --help` stays fast.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from glossrec.cli.app import app

data_app = typer.Typer(help="Get, import, export, inspect and sample datasets.", no_args_is_help=True)
import_app = typer.Typer(help="Import raw files into the dataset folder format.",
                         no_args_is_help=True)
data_app.add_typer(import_app, name="import")
app.add_typer(data_app, name="data")

_MinItems = Annotated[int, typer.Option("--min-items", min=1,
                                        help="Drop users with fewer titled items (paper: 3).")]
_TitleWords = Annotated[int, typer.Option("--title-words", min=0,
                                          help="Keep the first N words of a title; 0 = all.")]


def _echo_report(lines: list[str]) -> None:
    for line in lines:
        typer.echo(line)


def _written(report: Any, out: Path) -> None:
    """An importer's report, then where the dataset went."""
    _echo_report(report.lines())
    typer.echo(f"dataset written to {out}")


@import_app.command("amazon")
def import_amazon_cmd(
    reviews: Annotated[Path, typer.Option("--reviews", help="reviews_<Category>_5.json.gz")],
    meta: Annotated[Path, typer.Option("--meta", help="meta_<Category>.json.gz")],
    out: Annotated[Path, typer.Option("--out", help="Dataset folder to write.")],
    min_items: _MinItems = 3,
    title_words: _TitleWords = 25,
    attr: Annotated[Optional[list[str]], typer.Option(
        "--attr", help="Metadata key to keep beside the title (repeatable; default brand, "
                       "categories, price).")] = None,
) -> None:
    """Raw Amazon 2014 review + metadata files -> dataset folder (paper preprocessing)."""
    from glossrec.data.amazon import DEFAULT_ATTRIBUTES, import_amazon

    report = import_amazon(reviews, meta, out, min_items=min_items,
                           title_words=title_words or None,
                           attributes=tuple(attr) if attr else DEFAULT_ATTRIBUTES)
    _written(report, out)


@import_app.command("csv")
def import_csv_cmd(
    interactions: Annotated[Path, typer.Option("--interactions", help="user, item, timestamp rows.")],
    items: Annotated[Path, typer.Option("--items", help="item_id, title, other attribute columns.")],
    out: Annotated[Path, typer.Option("--out", help="Dataset folder to write.")],
    user_col: Annotated[str, typer.Option("--user-col")] = "user_id",
    item_col: Annotated[str, typer.Option("--item-col", help="Item id column (both files).")] = "item_id",
    time_col: Annotated[str, typer.Option("--time-col", help="Number or ISO-8601 date.")] = "timestamp",
    title_col: Annotated[str, typer.Option("--title-col")] = "title",
    delimiter: Annotated[Optional[str], typer.Option(
        "--delimiter", help="Default: tab for .tsv, else comma.")] = None,
    min_items: _MinItems = 3,
    title_words: _TitleWords = 25,
) -> None:
    """Your own interactions CSV + items CSV -> dataset folder."""
    from glossrec.data.csv_import import CsvColumns, import_csv

    cols = CsvColumns(user=user_col, item=item_col, time=time_col, title=title_col)
    report = import_csv(interactions, items, out, columns=cols, delimiter=delimiter,
                        min_items=min_items, title_words=title_words or None)
    _written(report, out)


@data_app.command("export")
def export_cmd(
    data: Annotated[Path, typer.Option("--data", help="Dataset folder to export.")],
    out: Annotated[Path, typer.Option("--out", help="Folder for interactions.csv and items.csv.")],
) -> None:
    """Dataset folder -> interactions.csv + items.csv, the files `data import csv` reads.

    The timestamp column is each item's position in its user's sequence.
    """
    from glossrec.data.csv_import import export_csv

    for path in export_csv(data, out):
        typer.echo(str(path))


@data_app.command("fetch")
def fetch_cmd(
    category: Annotated[str, typer.Argument(help="beauty, toys, sports or an Amazon 2014 "
                                                 "category name (e.g. Toys_and_Games).")],
    out: Annotated[Path, typer.Option("--out", help="Dataset folder to write.")],
    raw_dir: Annotated[Optional[Path], typer.Option(
        "--raw-dir", help="Where the raw downloads go (default OUT/raw).")] = None,
    base_url: Annotated[Optional[str], typer.Option(
        "--base-url", help="Where the raw files are served (http://, https:// or file://).")] = None,
    force: Annotated[bool, typer.Option("--force", help="Download again even if present.")] = False,
    min_items: _MinItems = 3,
    title_words: _TitleWords = 25,
) -> None:
    """Download a category's raw Amazon 2014 files (resumable), then import them."""
    from glossrec.data.amazon import import_amazon
    from glossrec.data.fetch import DEFAULT_BASE_URL, fetch_category

    reviews, meta = fetch_category(category, raw_dir or out / "raw",
                                   base_url=base_url or DEFAULT_BASE_URL, force=force)
    report = import_amazon(reviews, meta, out, min_items=min_items, title_words=title_words or None)
    _written(report, out)


@data_app.command("stats")
def stats_cmd(
    data: Annotated[Path, typer.Option("--data", help="Dataset folder.")],
    min_length: Annotated[int, typer.Option("--min-length", min=1,
                                            help="Users counted need this many items.")] = 3,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Users / items / interactions / mean length after the GLoSS rule, and what was skipped."""
    from glossrec.data import load_dataset

    ds = load_dataset(data)
    stats = ds.stats(min_length)
    short = sum(1 for s in ds.sequences if len(s) < min_length)
    skipped = {"untitled_items": len(ds.report.untitled_items),
               "untitled_interactions": ds.report.dropped_interactions,
               "users_without_titled_items": len(ds.report.dropped_users),
               f"users_under_{min_length}_items": short}
    if as_json:
        typer.echo(json.dumps({**stats, "skipped": skipped}))
        return
    typer.echo(f"{ds.name}: {stats['users']} users, {stats['items']} items, "
               f"{stats['interactions']} interactions, mean length {stats['mean_length']:.2f} "
               f"(untitled items dropped, users with >= {min_length} items)")
    _echo_report(ds.report.lines())
    if short:
        typer.echo(f"not counted: {short} users with fewer than {min_length} items")


@data_app.command("sample")
def sample_cmd(
    data: Annotated[Path, typer.Option("--data", help="Dataset folder to sample from.")],
    users: Annotated[int, typer.Option("--users", min=1, help="How many users.")],
    out: Annotated[Path, typer.Option("--out", help="Folder for the sample.")],
    seed: Annotated[int, typer.Option("--seed")] = 0,
) -> None:
    """A reproducible random sample of users with exactly the items they touch."""
    from glossrec.data.sample import sample_dataset

    r = sample_dataset(data, users, seed, out)
    typer.echo(f"sampled {r.users} of {r.source_users} users and {r.items} of {r.source_items} "
               f"items (seed {r.seed}) into {out}")
