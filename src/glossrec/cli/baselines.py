"""CLI commands: `baseline` (ID-based models on the same split) and `compare` (runs side by side)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from glossrec.cli.app import JsonOutOpt, app, print_json, show_progress_logs
from glossrec.cli.retrieval import EvalOptions, eval_options, print_result


@app.command()
@eval_options("data", "users", "exclude_history")
def baseline(
    kind: Annotated[str, typer.Argument(help="sasrec (SASRec-CE), itemknn or pop (popularity).")],
    opts: EvalOptions,
) -> None:
    """Train an ID-based baseline on the split's training sequences and score it like GLoSS.

    SASRec early-stops on the validation users ([sasrec] in the config). The model is saved in
    OUT/baseline; a rerun scores the saved model again. Other settings: --set (e.g.
    --set evaluate.split=valid --set sasrec.epochs=50).
    """
    from glossrec.baselines import KINDS
    from glossrec.errors import ConfigError
    from glossrec.pipeline import run_baseline

    if kind not in KINDS:
        raise ConfigError(f"unknown baseline {kind!r}; choose one of {', '.join(KINDS)}")
    show_progress_logs()
    print_result(kind, run_baseline(opts.run_config(), kind, opts.out), opts.out, opts.json_out)


@app.command()
def compare(
    runs: Annotated[list[Path], typer.Argument(help="Scored run directories (each with rankings.jsonl).")],
    baseline: Annotated[Optional[str], typer.Option("--baseline", help="The run (folder name) each other run is tested against; default: the first.")] = None,
    metric: Annotated[Optional[list[str]], typer.Option("--metric", help="Metric (repeatable), e.g. recall@5, ndcg@10.")] = None,
    test: Annotated[str, typer.Option("--test", help="student (paired t-test) or fisher (randomization test).")] = "student",
    alpha: Annotated[float, typer.Option("--alpha", help="Significance level after Holm correction.")] = 0.05,
    trec: Annotated[Optional[Path], typer.Option("--trec", help="Also write each run as a TREC run file, and the qrels, into this folder.")] = None,
    json_out: JsonOutOpt = False,
) -> None:
    """Compare runs on the users they share, with paired significance against a baseline."""
    from glossrec.compare import compare as compare_runs
    from glossrec.compare import read_run, write_trec
    from glossrec.errors import ConfigError

    if test not in ("student", "fisher"):
        raise ConfigError(f"--test must be student or fisher, got {test!r}")
    ranked = [read_run(r) for r in runs]
    res = compare_runs(ranked, baseline, metric or ["recall@5", "ndcg@5", "recall@10", "ndcg@10"],
                       test, alpha)  # type: ignore[arg-type]
    if trec is not None:
        write_trec(trec, ranked)
    if json_out:
        print_json(res.as_dict())
    else:
        typer.echo(res.table())
        if trec is not None:
            typer.echo(f"\nwrote {trec}/qrels.txt and {len(ranked)} run files")


@app.command()
@eval_options("data", "retriever", "users", "exclude_history")
def hybrid(
    opts: EvalOptions,
    model: Annotated[Optional[list[Path]], typer.Option("--model", help="A `glossrec baseline` run whose model is fused (repeatable).")] = None,
    gen_valid: Annotated[Optional[Path], typer.Option("--generations-valid", help="Generated texts of the validation users (for tuning the weights).")] = None,
    gen_test: Annotated[Optional[Path], typer.Option("--generations", help="Generated texts of the evaluated users (the LM's path).")] = None,
) -> None:
    """Fuse Last-Item Search, generated texts and ID-based models per user (weighted rrf, or
    interleaving with hybrid.fusion = "interleave"; tuned on validation users unless
    hybrid.weights / hybrid.slots fixes them)."""
    from glossrec.pipeline import run_hybrid

    show_progress_logs()
    cfg = opts.run_config()
    gens = {"valid": gen_valid} if gen_valid is not None else {}
    if gen_test is not None:  # the evaluated users' texts, whichever split they are
        split = cfg.evaluate.split
        if gens.get(split, gen_test) != gen_test:
            raise typer.BadParameter(f"--generations and --generations-valid name two files for "
                                     f"the {split} users", param_hint="--generations")
        gens[split] = gen_test
    ev = run_hybrid(cfg, model or [], opts.out, gens)
    print_result("hybrid", ev, opts.out, opts.json_out)
