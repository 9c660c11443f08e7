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
) -> None:
    """Run `cell(seed, method)` for each pair after `init(*initargs)` (once per worker process, or
    once here with one job); `init` and `cell` are module-level functions, so that spawned workers
    can import them. Prints the wall-clock minutes of the whole run."""
    t0 = time.time()
    if jobs > 1:
        ctx = multiprocessing.get_context("spawn")  # a fresh interpreter: no forked torch state
        with ProcessPoolExecutor(jobs, mp_context=ctx, initializer=init, initargs=initargs) as pool:
            futures = {pool.submit(cell, s, m): (s, m) for s, m in todo}
            for f in tqdm(as_completed(futures), total=len(futures), desc=desc, unit="cell"):
                seed, method = futures[f]
                tqdm.write(f"seed {seed} {method}: {f.result() / 60:.1f} min")
    else:
        init(*initargs)
        for seed, method in tqdm(todo, desc=desc, unit="cell"):
            cell(seed, method)
    print(f"{len(todo)} cells in {(time.time() - t0) / 60:.1f} min with {jobs} job(s)")
