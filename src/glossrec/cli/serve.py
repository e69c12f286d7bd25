"""CLI commands: `index` (a servable run from a dataset), `recommend`, `items ...`, `serve`."""

from __future__ import annotations

import ipaddress
import json
import logging
import sys
import time
from pathlib import Path
from typing import Annotated, Any, Optional, get_args

import typer

from glossrec.cli.app import SetOpt, app, parse_sets
from glossrec.config import Ranking

log = logging.getLogger("glossrec.cli")

RunOpt = Annotated[Path, typer.Option("--run", help="Run directory (config.toml + index/).")]
ModeOpt = Annotated[str, typer.Option("--mode", help="auto (LM when the run has an adapter), lis or lm.")]
RankingOpt = Annotated[Optional[str], typer.Option("--ranking", help="LM mode fusion: paper (top-1 per text), max or rrf; default: the run's config.")]
RANKINGS: tuple[str, ...] = get_args(Ranking)
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]

items_app = typer.Typer(help="Show, add and remove catalog items of a run (the live catalog).",
                        no_args_is_help=True)
app.add_typer(items_app, name="items")


def _choice(value: str | None, allowed: tuple[str, ...], option: str) -> Any:
    from glossrec.errors import ConfigError

    if value is not None and value not in allowed:
        raise ConfigError(f"{option}: expected one of {', '.join(allowed)}, got {value!r}")
    return value


def _catalog(run: Path) -> Any:
    from glossrec.rundir import RunDir

    return RunDir(run).open_catalog()


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def format_recommendations(rows: list[dict[str, Any]]) -> str:
    """rank, item id, score, title, query: a table that fits a terminal."""
    if not rows:
        return "(no items)"
    idw = max(7, *(len(r["item_id"]) for r in rows))
    head = f"{'rank':>4}  {'item id':<{idw}}  {'score':>8}  {'title':<48}  query"
    lines = [head, "-" * len(head)]
    for r in rows:
        query = r["queries"][0] if r["queries"] else ""
        more = f" (+{len(r['queries']) - 1})" if len(r["queries"]) > 1 else ""
        lines.append(f"{r['rank']:>4}  {r['item_id']:<{idw}}  {r['score']:>8.4f}  "
                     f"{_cut(r['title'], 48):<48}  {_cut(query, 40)}{more}")
    return "\n".join(lines)


@app.command()
def index(
    data: Annotated[Path, typer.Option("--data", help="Dataset folder (items + sequences).")],
    out: Annotated[Path, typer.Option("--out", help="Run directory to create.")],
    retriever: Annotated[str, typer.Option("--retriever", help="bm25 or dense.")] = "bm25",
    encoder: Annotated[Optional[str], typer.Option("--encoder", help="Dense encoder (name or path); default: the embedded all-MiniLM-L6-v2.")] = None,
    config: Annotated[Optional[Path], typer.Option("--config", help="TOML config to start from.")] = None,
    model: Annotated[Optional[str], typer.Option("--model", help="Serve a trained model: a shipped one by name (smollm2-beauty) or a weights folder. Default: LIS, no model.")] = None,
    set_: SetOpt = None,
) -> None:
    """Make a servable run from a dataset alone (LIS mode, or LM mode with --model)."""
    from glossrec.rundir import RunDir, make_index_run

    _choice(retriever, ("bm25", "dense"), "--retriever")
    run = make_index_run(data, retriever, out, config, encoder, model,  # type: ignore[arg-type]
                         overrides=parse_sets(set_))
    cat = _catalog(run)
    typer.echo(f"indexed {len(cat)} items ({retriever}) into {RunDir(run).index}; "
               f"serve with: glossrec serve --run {run}")


@app.command()
def recommend(
    run: RunOpt,
    history: Annotated[Optional[list[str]], typer.Option("--history", "-H", help="History item ids, oldest first: --history A B C (or repeat the option).")] = None,
    more: Annotated[Optional[list[str]], typer.Argument(help="More history item ids (after --history).", show_default=False)] = None,
    title: Annotated[Optional[list[str]], typer.Option("--title", help="A free item title (an item the catalog does not know); repeatable; comes after the ids.")] = None,
    k: Annotated[int, typer.Option("--k", min=1, help="How many items.")] = 10,
    exclude_history: Annotated[bool, typer.Option("--exclude-history/--keep-history", help="Never recommend items already in the history.")] = True,
    mode: ModeOpt = "auto",
    ranking: RankingOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Recommend items for a purchase history."""
    from glossrec.errors import DataError
    from glossrec.serve import Recommender

    entries: list[Any] = list(history or []) + list(more or [])
    entries += [{"title": t} for t in title or []]
    if not entries:
        raise DataError("no history: give item ids (--history A B C) and/or --title T")
    t0 = time.perf_counter()
    rec = Recommender.from_run(run, _choice(mode, ("auto", "lis", "lm"), "--mode"),
                               ranking=_choice(ranking, RANKINGS, "--ranking"))
    log.info("%s: %s mode, %d items (%s), loaded in %.1fs", run, rec.mode.upper(), len(rec.catalog),
             getattr(rec.catalog.retriever, "kind", "?"), time.perf_counter() - t0)
    t0 = time.perf_counter()
    out = rec.recommend(entries, k=k, exclude_history=exclude_history).to_json()
    log.info("%d items for a history of %d in %.2fs", len(out["items"]), len(entries),
             time.perf_counter() - t0)
    if json_out:
        typer.echo(json.dumps(out, ensure_ascii=False, indent=1))
        return
    typer.echo(format_recommendations(out["items"]))
    typer.echo(f"\n{out['mode'].upper()} mode, catalog {out['catalog_version']}; queries: "
               + " | ".join(out["queries"]))


@items_app.command("add")
def items_add(
    run: RunOpt,
    item_id: Annotated[Optional[str], typer.Option("--id", help="Item id.")] = None,
    title: Annotated[Optional[str], typer.Option("--title", help="Item title.")] = None,
    attr: Annotated[Optional[list[str]], typer.Option("--attr", help="Extra attribute key=value (repeatable).")] = None,
    file: Annotated[Optional[Path], typer.Option("--file", help="JSON lines of {item_id, title, ...} to add.")] = None,
) -> None:
    """Add (or replace) items; a running service sees them at its next request."""
    from glossrec.errors import DataError
    from glossrec.retrieve.live import ItemRecord, read_items_file

    records: list[ItemRecord] = read_items_file(file) if file is not None else []
    if item_id is not None or title is not None:
        if item_id is None or title is None:
            raise DataError("give both --id and --title (or --file)")
        attrs: dict[str, str] = {}
        for a in attr or []:
            key, sep, value = a.partition("=")
            if not sep or not key:
                raise DataError(f"--attr {a!r}: expected key=value")
            attrs[key] = value
        records.append(ItemRecord(item_id, title, attrs))
    if not records:
        raise DataError("nothing to add: give --id and --title, or --file")
    cat = _catalog(run)
    res = cat.add(records)
    cat.close(wait=True)  # a compaction this write started finishes before the process ends
    typer.echo(f"added {len(res.added)}, replaced {len(res.replaced)}; catalog {res.version}")


@items_app.command("remove")
def items_remove(run: RunOpt, item_ids: Annotated[list[str], typer.Argument(help="Item ids to remove.")]) -> None:
    """Remove items (all or none: an unknown id fails the command)."""
    cat = _catalog(run)
    res = cat.remove(item_ids)
    cat.close(wait=True)
    typer.echo(f"removed {len(res.removed)}; catalog {res.version}")


@items_app.command("show")
def items_show(run: RunOpt, item_id: Annotated[str, typer.Argument(help="Item id.")],
               json_out: JsonOpt = False) -> None:
    """Show one item and the text that is indexed for it."""
    from glossrec.retrieve.live import UnknownItemsError

    cat = _catalog(run)
    rec = cat.get(item_id)
    if rec is None:
        raise UnknownItemsError([item_id], "unknown item id")
    obj = {**rec.to_json(), "text": cat.text_of(rec)}
    if json_out:
        typer.echo(json.dumps(obj, ensure_ascii=False, indent=1))
        return
    for key, value in obj.items():
        typer.echo(f"{key}: {value}")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@app.command()
def serve(
    run: RunOpt,
    host: Annotated[str, typer.Option("--host", help="Bind address; loopback by default (put a reverse proxy in front for remote clients).")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=0, max=65535, help="TCP port.")] = 8000,
    mode: ModeOpt = "auto",
    ranking: RankingOpt = None,
    api_key_file: Annotated[Optional[Path], typer.Option("--api-key-file", help="File holding the API key for write endpoints (else $GLOSSREC_API_KEY).")] = None,
    root_path: Annotated[str, typer.Option("--root-path", help="URL prefix the proxy serves this under, e.g. /glossrec.")] = "",
    proxy_headers: Annotated[bool, typer.Option("--proxy-headers/--no-proxy-headers", help="Trust X-Forwarded-For/-Proto from --forwarded-allow-ips.")] = False,
    forwarded_allow_ips: Annotated[str, typer.Option("--forwarded-allow-ips", help="Proxy addresses whose forwarded headers are trusted.")] = "127.0.0.1",
    batch_window_ms: Annotated[Optional[float], typer.Option("--batch-window-ms", min=0, help="Batching window (fixed); default 0 in LIS mode, and in LM mode 15 ms or a tenth of a recent batch's time, whichever is longer, up to 500 ms.")] = None,
    max_batch: Annotated[Optional[int], typer.Option("--max-batch", min=1, help="Largest batch; 1 = no batching. Default generate.batch_size (LM) / 64 (LIS).")] = None,
    max_history: Annotated[int, typer.Option("--max-history", min=1, help="Longest accepted history.")] = 200,
    max_k: Annotated[int, typer.Option("--max-k", min=1, help="Largest accepted k.")] = 100,
    max_body_bytes: Annotated[int, typer.Option("--max-body-bytes", min=256, help="Larger request bodies get 413.")] = 1 << 20,
    log_level: Annotated[str, typer.Option("--log-level", help="uvicorn log level.")] = "info",
) -> None:
    """Serve recommendations over HTTP (POST /recommend, /items; GET /health, /docs)."""
    import uvicorn

    from glossrec.serve import Recommender
    from glossrec.serve.app import API_KEY_ENV, ServeSettings, create_app, resolve_api_key

    key = resolve_api_key(api_key_file)
    rec = Recommender.from_run(run, _choice(mode, ("auto", "lis", "lm"), "--mode"),
                               ranking=_choice(ranking, RANKINGS, "--ranking"))
    settings = ServeSettings(max_history=max_history, max_k=max_k, max_body_bytes=max_body_bytes,
                             batch_window_ms=batch_window_ms, max_batch=max_batch, api_key=key)
    if key is None and not _is_loopback(host):
        print(f"warning: serving on {host} with no API key: anyone who can reach it can change "
              f"the catalog (set {API_KEY_ENV} or --api-key-file)", file=sys.stderr)
    print(f"glossrec: {rec.mode.upper()} mode, {len(rec.catalog)} items "
          f"({getattr(rec.catalog.retriever, 'kind', '?')}), writes "
          f"{'need the API key' if key else 'are open'}; docs at http://{host}:{port}{root_path}/docs",
          file=sys.stderr, flush=True)
    try:
        uvicorn.run(create_app(rec, settings), host=host, port=port, root_path=root_path,
                    proxy_headers=proxy_headers, forwarded_allow_ips=forwarded_allow_ips,
                    log_level=log_level, workers=1)
    finally:
        rec.close()  # abandons a catalog compaction under way (the journal holds its writes)
