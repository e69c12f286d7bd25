"""Generation over Ray Data (glossrec.generate.distributed): on a local Ray of this machine's
cores, the texts equal the in-process ones, and a killed job resumes with no user lost or
generated twice. One local Ray serves the whole test session (it starts in ~20 s)."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from glossrec.config import GenerateConfig, RunConfig
from glossrec.errors import ConfigError
from glossrec.generate.distributed import replica_resources
from glossrec.io import FAULT_ENV


def _rows(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _cfg(**generate: Any) -> RunConfig:
    return RunConfig(generate=GenerateConfig(**generate))


def test_replica_resources() -> None:
    # CPUs shared out, at most one node's worth; no GPU for the hf backend on a CPU machine.
    assert replica_resources(_cfg(workers=2), {"CPU": 8.0}, 8, cuda_here=False) == (2, 4, 0.0)
    assert replica_resources(_cfg(workers=2), {"CPU": 64.0}, 16, cuda_here=False) == (2, 16, 0.0)
    assert replica_resources(_cfg(workers=3, worker_cpus=1), {"CPU": 2.0}, 2, False) == (3, 1, 0.0)
    # vLLM: a GPU per replica, and no more replicas than GPUs.
    vllm = _cfg(workers=4, backend="vllm")
    assert replica_resources(vllm, {"CPU": 32.0, "GPU": 2.0}, 16, cuda_here=False) == (2, 16, 1.0)
    with pytest.raises(ConfigError, match="no GPU"):
        replica_resources(vllm, {"CPU": 32.0}, 16, cuda_here=False)
    # CUDA here: the hf backend takes a GPU too, unless told otherwise.
    assert replica_resources(_cfg(workers=2), {"CPU": 8.0, "GPU": 1.0}, 8, True) == (1, 8, 1.0)
    assert replica_resources(_cfg(workers=2, worker_gpus=0), {"CPU": 8.0, "GPU": 1.0}, 8, True) == (2, 4, 0.0)


def test_ray_gives_the_texts_of_one_process(run_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    from glossrec.cli.generate import generate_run

    one = _rows(generate_run(run_dir, users=12, batch_size=2, show_progress=False))
    _set(run_dir, block_users=3)
    with caplog.at_level(logging.INFO, logger="glossrec.generate.distributed"):
        out = generate_run(run_dir, users=12, batch_size=2, workers=2, overwrite=True,
                           show_progress=False)
    assert "2 replicas" in caplog.text  # it ran on Ray, with both replicas
    assert _rows(out) == one  # same texts, same order, one file
    assert not list(run_dir.glob("generations.jsonl.part*"))


def _set(run_dir: Path, **generate: Any) -> None:
    from glossrec.config import config_to_toml, load_config

    cfg = load_config(run_dir / "config.toml")
    (run_dir / "config.toml").write_text(config_to_toml(cfg.updated(generate=generate)))


def test_killed_job_resumes_with_no_user_lost_or_duplicated(
        run_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    from glossrec.cli.generate import generate_run

    users = 16
    _set(run_dir, block_users=2)
    reference = _rows(generate_run(run_dir, users=users, batch_size=2, show_progress=False))
    (run_dir / "generations.jsonl").unlink()
    # The job stops after its first block is written (a fault point sleeps there); the whole
    # process group (driver, Ray's processes, its actors) is then killed with SIGKILL.
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # a local Ray of its own
    env[FAULT_ENV] = "generate-part:120"
    job = subprocess.Popen(
        [sys.executable, "-m", "glossrec.cli", "generate", "--run", str(run_dir), "--users", str(users),
         "--batch-size", "2", "--workers", "2"],
        env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 480
        while not list(run_dir.glob("generations.jsonl.part-*")):
            assert job.poll() is None, job.stderr.read().decode() if job.stderr else ""
            assert time.monotonic() < deadline, "no block was finished in 480 s (Ray starts slowly on a loaded machine)"
            time.sleep(0.1)
    finally:
        os.killpg(job.pid, signal.SIGKILL)
        job.wait()
    parts = list(run_dir.glob("generations.jsonl.part-*"))
    main = run_dir / "generations.jsonl"
    kept = [r for p in parts + ([main] if main.exists() else []) for r in _rows(p)]
    assert 0 < len(kept) < users

    with caplog.at_level(logging.INFO, logger="glossrec.generate.distributed"):
        rows = _rows(generate_run(run_dir, users=users, batch_size=2, workers=2, show_progress=False))
    assert f"generating for {users - len(kept)} users" in caplog.text  # only the missing ones
    assert rows == reference  # every user once, in order, with the texts of one process
    assert not list(run_dir.glob("generations.jsonl.part*"))
