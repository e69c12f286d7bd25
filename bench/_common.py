"""What every benchmark shares: the code version, the machine and its load, peak RSS, the
matmul rate behind FLOP bounds, and one way to write results.

A figure is only comparable with the machine and load it was measured on, so every results file
records the commit (and uncommitted changes under src/), the CPU, its cores and the load average
before and after, and the date.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import resource
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"


def code_version() -> dict[str, Any]:
    """The commit, and which source files differed from it when the benchmark ran."""
    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True,
                                  timeout=30).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    return {"commit": git("rev-parse", "--short", "HEAD"),
            "uncommitted_changes": git("status", "--short", "--", "src").splitlines()}


def machine() -> dict[str, Any]:
    """CPU model, usable cores, native bf16, and the 1-minute load average now."""
    cpu, flags = platform.processor(), set[str]()
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="ignore").splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    return {"cpu": cpu, "cores": cores, "avx512": "avx512f" in flags,
            "native_bf16": bool({"avx512_bf16", "amx_bf16"} & flags),
            "load_avg_1m": round(os.getloadavg()[0], 2)}


def rss_mb(key: str = "VmRSS") -> float:
    """Resident memory of this process now (VmRSS) or at its peak (VmHWM), from /proc; the
    peak from ru_maxrss where /proc is missing."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def peak_rss_mb() -> float:
    """Peak resident memory of this process."""
    return rss_mb("VmHWM")


def reset_peak_rss() -> None:
    """Linux: writing 5 to clear_refs resets this process's peak RSS."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def matmul_flops(threads: int, bf16: bool = False, shape: tuple[int, int, int] = (1024, 576, 1536),
                 seconds: float = 3.0, clock: Callable[[], float] = time.perf_counter) -> float:
    """FLOP/s of F.linear at one of SmolLM2's own shapes (rows x hidden -> MLP width), in fp32
    or in bf16 (inputs and weights already bf16: the matmul's own rate; autocast over fp32
    weights pays a cast of the weight at every call on top): the rate a FLOP bound divides by.
    `clock`: time.process_time gives FLOPs per CPU second, the rate a bound on CPU time divides
    by on a busy machine."""
    import torch

    torch.set_num_threads(threads)
    rows, k, n = shape
    dtype = torch.bfloat16 if bf16 else torch.float32
    x, w = torch.randn(rows, k, dtype=dtype), torch.randn(n, k, dtype=dtype)

    def step() -> None:
        torch.nn.functional.linear(x, w)

    for _ in range(3):
        step()
    best = 0.0
    for _ in range(5):  # the best window: a rate, not an average over interruptions
        reps, t0 = 0, clock()
        while reps == 0 or clock() - t0 < seconds / 5:
            step()
            reps += 1
        best = max(best, 2 * rows * k * n * reps / (clock() - t0))
    return best


def write_results(path: Path, payload: dict[str, Any], machine_before: dict[str, Any]) -> Path:
    """results JSON with code version, machine (load before and after) and date, atomically."""
    after = machine()
    record = {"date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
              "code": code_version(),
              "machine": {**machine_before, "load_avg_1m_after": after["load_avg_1m"]},
              **payload}
    return save_json(path, record)


def save_json(path: Path, record: dict[str, Any]) -> Path:
    """Write a results JSON atomically (a killed bench never leaves half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(record, indent=1, ensure_ascii=False) + "\n")
    tmp.replace(path)
    return path


def print_columns(rows: list[dict[str, Any]], cols: list[tuple[str, str, str]]) -> None:
    """A right-aligned text table: cols are (header, key in each row, format); None prints "-"."""
    table = [[h for h, _, _ in cols]] + [["-" if r[k] is None else f.format(r[k])
                                          for _, k, f in cols] for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(cols))]
    for j, row in enumerate(table):
        print("  ".join(c.rjust(w) for c, w in zip(row, widths)))
        if j == 0:
            print("  ".join("-" * w for w in widths))


def print_markdown(header: list[str], rows: list[list[str]], align: str = "") -> None:
    """A markdown table, ready for the README: `align` has one letter per column, "l" for a
    left-aligned one (the rest are right-aligned numbers)."""
    align = align.ljust(len(header), "r")
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join("---" if a == "l" else "---:" for a in align) + "|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
