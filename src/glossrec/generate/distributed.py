"""Generation fanned out over Ray Data: blocks of users to actors that load the model once.

With ``generate.workers = N > 1``, the users still missing from a generations file become a Ray
dataset, cut into blocks of ``generate.block_users``; ``map_batches`` hands the blocks to a pool
of N :class:`_Replica` actors, each holding one model (the hf backend on CPU, or vLLM on a
GPU, whichever ``generate.backend`` names), and the texts stream back to this process. Each
finished block is written at once to its own part file (:func:`~glossrec.generate.store.write_part`,
all or nothing), so a killed job loses at most the blocks in flight; the parts merge into the
run's one generations file (:func:`~glossrec.generate.store._absorb_parts`), also after a
failure and at the start of the next run. Only this process writes files: the actors need no
shared filesystem, only the model (and adapter) at the same path.

The same command runs on a laptop and on a cluster: ``ray.init()`` starts a local Ray for the
job, or joins the cluster that ``RAY_ADDRESS`` names (``ray start --head`` on one machine,
``ray start --address=HEAD:6379`` on the others, glossrec installed on each). Ray's own
messages follow the CLI's verbosity (-v shows them).
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from glossrec.errors import import_optional
from glossrec.generate.factory import make_generator
from glossrec.generate.store import _absorb_parts, generate_batches, write_part
from glossrec.io import fault_point
from glossrec.progress import bars_on

if TYPE_CHECKING:
    from glossrec.config import RunConfig

__all__ = ["generate_on_ray", "replica_resources"]

log = logging.getLogger(__name__)


class _Replica:
    """One Ray actor: the model (and, grounded, the catalog trie) loaded once, then block after
    block of users through :func:`~glossrec.generate.store.generate_batches`."""

    def __init__(self, cfg_json: str, adapter_dir: str | None, catalog: list[str] | None,
                 threads: int) -> None:
        import torch

        from glossrec.config import RunConfig

        torch.set_num_threads(threads)
        self.cfg = RunConfig.model_validate_json(cfg_json)
        self.generator = make_generator(self.cfg, Path(adapter_dir) if adapter_dir else None, catalog)

    def __call__(self, block: dict[str, Any]) -> dict[str, list[str]]:
        items = list(zip((str(u) for u in block["user_id"]), (str(p) for p in block["prompt"])))
        exclude = None
        if self.cfg.generate.constrain == "catalog":
            exclude = {uid: [int(i) for i in e] for (uid, _), e in zip(items, block["exclude"])}
        uids: list[str] = []
        texts: list[str] = []
        for rows in generate_batches(self.generator, items, self.cfg.generate.batch_size, exclude):
            uids += [uid for uid, _ in rows]
            texts += [json.dumps(t, ensure_ascii=False) for _, t in rows]  # ragged lists: JSON
        return {"user_id": uids, "texts": texts}


def _ray() -> Any:
    """Ray, initialised once per process: local, or the cluster RAY_ADDRESS names."""
    # Before ray is imported (its import sets the "ray" logger to INFO): the CLI sets
    # third-party loggers, "ray" among them, to ERROR unless -v. A library user raises the
    # "ray" logger to INFO to see Ray's own messages.
    quiet = not logging.getLogger("ray").isEnabledFor(logging.INFO)
    ray = import_optional("ray", "ray", "generate.workers > 1", package="ray[data]")
    import_optional("ray.data", "ray", "generate.workers > 1", package="ray[data]")
    if quiet:
        logging.getLogger("ray").setLevel(logging.ERROR)
        logging.getLogger("ray.data").setLevel(logging.ERROR)
    if not ray.is_initialized():
        ray.init(include_dashboard=False, log_to_driver=not quiet,
                 logging_level=logging.ERROR if quiet else logging.INFO)
    from ray.data import DataContext

    DataContext.get_current().enable_progress_bars = not quiet and bars_on()
    return ray


def replica_resources(cfg: RunConfig, cluster: Mapping[str, float], node_cpus: int,
                      cuda_here: bool) -> tuple[int, int, float]:
    """(replicas, CPUs each, GPUs each) for `cluster` (ray.cluster_resources()).

    GPUs: generate.worker_gpus, else 1 for vLLM or when this machine sees CUDA; replicas are
    capped at the GPUs there are (a pool waiting for GPUs that do not exist never starts).
    CPUs: generate.worker_cpus, else the cluster's CPUs shared out, at most one node's.
    """
    g = cfg.generate
    gpus = g.worker_gpus if g.worker_gpus is not None else (
        1.0 if g.backend == "vllm" or cuda_here else 0.0)
    replicas = g.workers
    if gpus > 0:
        fit = int(cluster.get("GPU", 0) // gpus)
        if fit < 1:
            from glossrec.errors import ConfigError

            raise ConfigError(f"generate.workers = {g.workers} with {gpus:g} GPU each, but the Ray "
                              "cluster has no GPU: set generate.worker_gpus = 0 for the hf "
                              "backend on CPUs")
        if fit < replicas:
            log.warning("generate.workers = %d, but the Ray cluster holds %d replicas of %g GPU: "
                        "running %d", replicas, fit, gpus, fit)
            replicas = fit
    cpus = g.worker_cpus or max(1, min(node_cpus, int(cluster.get("CPU", 1)) // replicas))
    return replicas, cpus, gpus


def _map(ray: Any, dataset: Any, cfg: RunConfig, adapter_dir: Path | None,
         catalog: list[str] | None, block: int, replicas: int, cpus: int, gpus: float) -> Any:
    """The dataset of (user_id, texts as JSON) that a pool of `replicas` actors makes."""
    return dataset.map_batches(
        _Replica, batch_size=block, batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=replicas),
        fn_constructor_kwargs={"cfg_json": cfg.model_dump_json(),
                               "adapter_dir": str(adapter_dir) if adapter_dir else None,
                               "catalog": catalog, "threads": cpus},
        num_cpus=cpus, num_gpus=gpus,
        # A failed replica fails the job (the rerun resumes from the parts): Ray's restart
        # of an actor whose arguments sit in the object store is not guaranteed, and says so.
        max_restarts=0,
    )


def generate_on_ray(cfg: RunConfig, adapter_dir: Path | None, pending: Sequence[tuple[str, str]],
                    out_path: Path, show_progress: bool, catalog: list[str] | None = None,
                    exclude: Mapping[str, Sequence[int]] | None = None) -> None:
    """Generate the `pending` (user_id, prompt) pairs over Ray into part files, then merge them.

    Blocks hold users of similar prompt length (sorted first), so their batches pad little.
    """
    ray = _ray()
    import torch
    from tqdm.auto import tqdm

    pending = sorted(pending, key=lambda it: len(it[1]))
    rows = [{"user_id": uid, "prompt": prompt, "exclude": list(exclude.get(uid, ())) if exclude else []}
            for uid, prompt in pending]
    node_cpus = max((int(n["Resources"].get("CPU", 0)) for n in ray.nodes() if n.get("Alive")),
                    default=os.cpu_count() or 1)
    replicas, cpus, gpus = replica_resources(cfg, ray.cluster_resources(), node_cpus,
                                             torch.cuda.is_available())
    # At least two blocks per replica: none sits idle, and one that drew short prompts takes
    # another block while the others finish theirs.
    block = max(1, min(cfg.generate.block_users, math.ceil(len(rows) / (2 * replicas))))
    dataset = ray.data.from_items(rows, override_num_blocks=max(1, math.ceil(len(rows) / block)))
    with warnings.catch_warnings():
        # max_restarts travels in **ray_remote_args, which Ray 2.60 marks deprecated (removal
        # announced for 2.64, hence glossrec[ray]'s bound) while naming no replacement.
        warnings.simplefilter("ignore", DeprecationWarning)
        texts = _map(ray, dataset, cfg, adapter_dir, catalog, block, replicas, cpus, gpus)
    log.info("generating for %d users on Ray: %d replicas x %d CPUs, %g GPUs, blocks of %d",
             len(rows), replicas, cpus, gpus, block)
    bar = tqdm(total=len(rows), unit="user", desc=f"generate ({replicas} replicas)",
               disable=not bars_on(show_progress), file=sys.stderr, dynamic_ncols=True)
    try:
        for out in texts.iter_batches(batch_size=None, batch_format="numpy"):
            done = [(str(u), json.loads(t)) for u, t in zip(out["user_id"], out["texts"])]
            write_part(out_path, done)
            bar.update(len(done))
            fault_point("generate-part")  # the kill-and-resume test stops the job here
    finally:
        bar.close()
        _absorb_parts(out_path)  # keep whatever finished, even when the job failed
