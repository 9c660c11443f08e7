"""Microbenchmark: LCB search on the layer-wise K-D tree against flat (brute-force) search.

    python -m benchmarks.tree_search

N synthetic tasks (4 layers x 64 dims, in 8 clusters, like tasks that come in families); each
query is a noisy copy of a random task. Reports signature comparisons and time per query and
whether the search found the true nearest task. Writes docs/benchmarks/tree_search.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from treelora_core.kdtree import GradientKDTree, LCBSearch, Signature, l1

LAYERS, DIM, CLUSTERS = 4, 64, 8


def synthetic(n: int, g: torch.Generator) -> tuple[GradientKDTree, list[torch.Tensor]]:
    centers = torch.randn(CLUSTERS, LAYERS * DIM, generator=g) * 4
    tree = GradientKDTree(LAYERS)
    flat = []
    for i in range(n):
        v = centers[i % CLUSTERS] + torch.randn(LAYERS * DIM, generator=g)
        flat.append(v)
        tree.insert(list(v.split(DIM)))
    return tree, flat


def run(sizes: list[int], queries: int, seed: int) -> list[dict[str, float]]:
    rows = []
    for n in sizes:
        g = torch.Generator().manual_seed(seed + n)
        tree, flat = synthetic(n, g)
        stacked = torch.stack(flat)
        tree_cmp = tree_time = flat_time = 0.0
        hits = 0
        for _ in range(queries):
            q = flat[int(torch.randint(n, (1,), generator=g))] + 0.3 * torch.randn(LAYERS * DIM, generator=g)
            parts = q.split(DIM)

            def dist(sig: Signature, parts: tuple[torch.Tensor, ...] = parts) -> float:
                return sum(l1(a, b) for a, b in zip(parts, sig, strict=True))

            t0 = time.perf_counter()
            search = LCBSearch(tree)
            found = search.search(dist)
            tree_time += time.perf_counter() - t0
            tree_cmp += search.comparisons
            t0 = time.perf_counter()
            truth = int((stacked - q).abs().sum(1).argmin())  # flat search, vectorised
            flat_time += time.perf_counter() - t0
            hits += int(found == truth)
        rows.append(
            {
                "n_tasks": n,
                "tree_depth": tree.depth(),
                "tree_comparisons": round(tree_cmp / queries, 1),
                "flat_comparisons": n,
                "comparison_ratio": round(n / (tree_cmp / queries), 2),
                "tree_ms": round(1000 * tree_time / queries, 3),
                "flat_ms": round(1000 * flat_time / queries, 3),
                "exact_nearest_pct": round(100 * hits / queries, 1),
            }
        )
        print(rows[-1], flush=True)
    return rows


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="*", default=[8, 16, 32, 64, 128, 256, 512, 1024])
    ap.add_argument("--queries", type=int, default=50)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path("docs/benchmarks/tree_search.json"))
    args = ap.parse_args(argv)
    rows = run(args.sizes, args.queries, args.seed)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {"layers": LAYERS, "dim": DIM, "clusters": CLUSTERS, "queries": args.queries, "rows": rows}, indent=2
        )
        + "\n"
    )


if __name__ == "__main__":
    main()
