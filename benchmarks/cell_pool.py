"""Running benchmark cells: in this process, or in N worker processes that each load their own
model once and take the next cell as they free up (`--jobs N`). A cell is written whole or not at
all, so a stopped run resumes with the cells it is missing."""

from __future__ import annotations

import json
import multiprocessing
import os
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

from tqdm import tqdm


def write_cell(path: Path, cell: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(cell) + "\n")
    os.replace(tmp, path)


def run_cells(
    todo: list[tuple[int, str]],
    jobs: int,
    init: Callable[..., None],
    initargs: tuple[Any, ...],
    cell: Callable[[int, str], float],
    desc: str,
    log: Path | None = None,
) -> None:
    """Run `cell(seed, method)` for each pair after `init(*initargs)` (once per worker process, or
    once here with one job); `init` and `cell` are module-level functions, so that spawned workers
    can import them. Prints the wall-clock minutes of the whole run and, with `log`, appends a
    line to that JSON-lines file: when it started, the cells, the jobs, each cell's minutes and
    the run's wall-clock seconds (model loading and warm-up included), so a per-seed runtime is a
    recorded measurement."""
    t0 = time.time()
    minutes: dict[str, float] = {}
    if jobs > 1:
        ctx = multiprocessing.get_context("spawn")  # a fresh interpreter: no forked torch state
        with ProcessPoolExecutor(jobs, mp_context=ctx, initializer=init, initargs=initargs) as pool:
            futures = {pool.submit(cell, s, m): (s, m) for s, m in todo}
            for f in tqdm(as_completed(futures), total=len(futures), desc=desc, unit="cell"):
                seed, method = futures[f]
                minutes[f"seed{seed}/{method}"] = round(f.result() / 60, 2)
                tqdm.write(f"seed {seed} {method}: {minutes[f'seed{seed}/{method}']:.1f} min")
    else:
        init(*initargs)
        for seed, method in tqdm(todo, desc=desc, unit="cell"):
            minutes[f"seed{seed}/{method}"] = round(cell(seed, method) / 60, 2)
    wall = time.time() - t0
    print(f"{len(todo)} cells in {wall / 60:.1f} min with {jobs} job(s)")
    if log is not None:
        started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t0))
        line = {"started": started, "jobs": jobs, "cell_minutes": minutes, "wall_seconds": round(wall, 1)}
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("a") as fh:
            fh.write(json.dumps(line) + "\n")
