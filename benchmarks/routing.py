"""Routing without a task id on the benchmark streams: flat nearest prototype vs tree descent.

    python -m benchmarks.routing --trace-root ../shared/data/trace-500   # -> docs/benchmarks/routing.json

For each stream of the continual benchmark (quick profile: same tasks, same splits), the tree is
the one `treelora` built in that benchmark's run (its placements in `<stream>.details.json`);
prototypes come from each task's training prompts, as the learner makes them, and every test
prompt is routed both ways. Only the frozen base model runs: no training.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from benchmarks.continual import PROFILES, load_stream
from treelora_core.adapter_tree import AdapterTree
from treelora_core.config import StreamConfig
from treelora_core.learner import ContinualLearner
from treelora_core.models import load_base
from treelora_core.router import PrototypeRouter

STREAMS = {"wordnet": "continual", "mixed": "continual-mixed"}


def tree_nodes(placements: list[dict[str, Any]], names: list[str], n_blocks: int) -> list[dict[str, Any]]:
    """Replay a run's placements into an AdapterTree; its nodes as `views.tree_view` lists them."""
    return AdapterTree.replay(placements, names, n_blocks).view_nodes()


def run(stream: str, learner: ContinualLearner, folder: Path, trace_root: Path) -> dict[str, Any]:
    tasks = load_stream(stream, PROFILES[(stream, "quick")], trace_root)
    details = json.loads((folder / f"{STREAMS[stream]}.details.json").read_text())
    seed_runs = details["runs"]["treelora"]
    placements = [r["placement"] for r in seed_runs[min(seed_runs, key=int)]["per_task"]]
    nodes = tree_nodes(placements, [t.name for t in tasks], learner.bank.n_blocks)
    router = PrototypeRouter()
    for t in tqdm(tasks, desc=f"{stream}: prototypes", unit="task"):
        router.add(t.name, learner.embed([e.prompt for e in t.train]))
    flat = tree = total = 0
    for i, t in enumerate(tqdm(tasks, desc=f"{stream}: routing", unit="task")):
        scores = router.scores(learner.embed([e.prompt for e in t.test]))
        flat += int((scores.argmax(1) == i).sum())
        tree += sum(router.descend(row, nodes) == i for row in scores)
        total += len(t.test)
    return {
        "tasks": len(tasks),
        "test_prompts": total,
        "flat": round(100 * flat / total, 1),
        "tree": round(100 * tree / total, 1),
        "tree_nodes": len(nodes),
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trace-root", type=Path, default=Path("../shared/data/trace-500"))
    ap.add_argument("--folder", type=Path, default=Path("docs/benchmarks"))
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    model, tok = load_base()
    learner = ContinualLearner(model, tok, StreamConfig())
    out = {}
    for stream in STREAMS:
        learner.fmt.max_length = PROFILES[(stream, "quick")].max_length
        out[stream] = run(stream, learner, args.folder, args.trace_root)
        tqdm.write(f"{stream}: {out[stream]}")
    (args.folder / "routing.json").write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
