"""glossrec: generative sequential recommendation with semantic search (GLoSS and beyond).

The public API, importable from the package itself::

    from glossrec import Recommender, load_config, run, run_lis

    cfg = load_config("configs/demo.toml", {"evaluate.users": 50})
    results = run(cfg, out="runs/demo")             # data -> train -> generate -> retrieve -> evaluate
    print(results["GLoSS-bm25"].metrics["overall"]["recall@5"])   # beside results["LIS-bm25"]

    rec = Recommender.from_run("runs/demo")         # serve the run: history -> texts -> items
    rec.recommend(["B004756YJA", {"title": "argan oil conditioner"}], k=10)

Names load on first use (PEP 562), so ``import glossrec`` stays light: torch, transformers and
the retrievers are imported only by what needs them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> the module that owns it
_EXPORTS: dict[str, str] = {
    # configuration
    "RunConfig": "glossrec.config",
    "load_config": "glossrec.config",
    # data
    "Dataset": "glossrec.data",
    "Catalog": "glossrec.data",
    "load_dataset": "glossrec.data",
    # the batch pipeline
    "run": "glossrec.pipeline",
    "run_lis": "glossrec.pipeline",
    "run_retrieve": "glossrec.pipeline",
    "run_baseline": "glossrec.pipeline",
    "run_hybrid": "glossrec.pipeline",
    "Evaluation": "glossrec.evaluate",
    # comparison of runs
    "compare": "glossrec.compare",
    "read_run": "glossrec.compare",
    # serving
    "Recommender": "glossrec.serve",
    "Recommendation": "glossrec.serve",
    "RecommendedItem": "glossrec.serve",
}

__all__ = ["__version__", *_EXPORTS]

if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs only
    from glossrec.compare import compare, read_run
    from glossrec.config import RunConfig, load_config
    from glossrec.data import Catalog, Dataset, load_dataset
    from glossrec.evaluate import Evaluation
    from glossrec.pipeline import run, run_baseline, run_hybrid, run_lis, run_retrieve
    from glossrec.serve import Recommendation, RecommendedItem, Recommender


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'glossrec' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
