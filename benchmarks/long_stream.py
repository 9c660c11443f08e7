"""The long stream (20 WordNet tasks in 4 families, `benchmarks.families`): how accuracy, cost,
bytes, placement and routing grow with the number of tasks N, and whether the tree's shape
follows the families.

    python -m benchmarks.long_stream run --seeds 0 --jobs 2 # the missing cells (resumable), two at a time
    python -m benchmarks.long_stream aggregate              # docs/benchmarks/long-stream.json + .png
    python -m benchmarks.long_stream signatures             # do block cosines separate the families?

A cell is one method learning the whole stream with one seed (`cells/long-quick/seed<k>/<m>.json`).
The same budget and stopping rule as the continual benchmark (`benchmarks.continual`). After each
task the new task is scored (the diagonal of R, what "forgetting" compares against); every old
task is scored again at the checkpoints N = 5, 10, 15, 20 (a method whose old paths are frozen
is not re-scored: its old answers cannot change). Routing accuracy over every task so far is
measured after each task on all their test prompts (only the frozen base model runs for it).
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from treelora_core.config import StreamConfig
from treelora_core.kdtree import GradientKDTree, LCBSearch, Signature, l1
from treelora_core.learner import ContinualLearner
from treelora_core.models import DEFAULT_MODEL, load_base
from treelora_core.signatures import Prober, depth_weights
from treelora_core.strategies.treelora import TreeConfig

from . import stats
from .cell_pool import run_cells, write_cell
from .continual import METHODS, Profile, _machine, auto_scores, method_config, task_seconds, warm_up
from .families import FamilyTask, family_stream

PROFILES = {
    "quick": Profile(20, 96, 60, 4, 64),
    "smoke": Profile(4, 16, 4, 1, 48),  # the first four tasks (one per family): checks the pipeline only
}
CHECKPOINTS = (5, 10, 15, 20)
# paired OP differences at the end of the stream (a minus b)
PAIRS = tuple(("treelora", b) for b in ("per_task_lora", "lora_top", "o_lora", "seq_lora"))
# the owned-block count (one change from the default) and what it does against the upper bound
PAIRS += (("treelora", "treelora[own_8]"), ("treelora[own_8]", "per_task_lora"))
# the placement ablations: compared with the task id (the paths each placement built), so that a
# cell routed by an older router (their seed 0 cells) compares like with like
ABLATION_PAIRS = tuple(
    ("treelora", b)
    for b in (
        "treelora[random_relative]",
        "treelora[always_share]",
        "treelora[decided]",
        "treelora[settled]",
        "treelora[first_below]",
        "treelora[own_8]",
    )
)
# the five methods, longest cells first so that `--jobs` workers finish together; the
# search ablations ("Does the search matter?": treelora[random_relative], treelora[always_share])
# run with `--methods`
DEFAULT_METHODS = ("per_task_lora", "o_lora", "seq_lora", "treelora", "lora_top")


def _row(
    learner: ContinualLearner, tasks: list[FamilyTask], t: int, routed: bool, diag: list[list[float]]
) -> tuple[list[list[float]], list[list[float]] | None]:
    """Scores of every task so far after task t: (with the task id, with routing)."""
    if learner.strategy.frozen_paths:
        with_id = [list(d) for d in diag[: t + 1]]  # frozen paths: the scores at learn time still hold
    else:
        with_id = [learner.evaluate_examples(ft.task, "task_id" if routed else "auto") for ft in tasks[: t + 1]]
    if not routed:
        return with_id, None
    return with_id, [auto_scores(learner, ft.task, with_id[i])[0] for i, ft in enumerate(tasks[: t + 1])]


def tree_shape(learner: ContinualLearner, tasks: list[FamilyTask]) -> dict[str, Any] | None:
    """The tree's grouping against the families: adjusted Rand index of "which subtree under the
    root" vs "which family", and mean shared depth (blocks on a common node) within and across."""
    nodes = learner.strategy.tree_nodes()
    if not nodes or not all("members" in n and "lo" in n for n in nodes):
        return None  # no tree of layer-wise adapters
    names = [ft.task.name for ft in tasks]
    top = [n for n in nodes if n["parent"] is None]
    group = {member: k for k, n in enumerate(top) for member in n["members"]}
    within: list[int] = []
    across: list[int] = []
    for a in range(len(tasks)):
        for b in range(a + 1, len(tasks)):
            depth = sum(n["hi"] - n["lo"] for n in nodes if names[a] in n["members"] and names[b] in n["members"])
            (within if tasks[a].family == tasks[b].family else across).append(depth)
    return {
        "ari": round(stats.adjusted_rand([group[n] for n in names], [ft.family for ft in tasks]), 3),
        "subtrees": len(top),
        "shared_depth_within": round(float(np.mean(within)), 2) if within else None,
        "shared_depth_across": round(float(np.mean(across)), 2) if across else None,
        "groups": {n: group[n] for n in names},
    }


def run_cell(method: str, cfg: StreamConfig, base: Any, tok: Any, tasks: list[FamilyTask]) -> dict[str, Any]:
    learner = ContinualLearner(copy.deepcopy(base), tok, cfg)
    routed = learner.strategy.needs_task_id
    t0 = time.time()
    diag: list[list[float]] = []
    rows: dict[int, dict[str, Any]] = {}
    test_emb: list[torch.Tensor] = []
    per_task = []
    for t, ft in enumerate(tqdm(tasks, desc=method, unit="task", leave=False)):
        rep = learner.learn(ft.task)
        diag.append(learner.evaluate_examples(ft.task, "task_id" if routed else "auto"))
        if t + 1 in CHECKPOINTS or t + 1 == len(tasks):
            with_id, with_routing = _row(learner, tasks, t, routed, diag)
            rows[t + 1] = {"R": with_id, "R_auto": with_routing}
        routing = None
        if routed:
            test_emb.append(learner.embed([e.prompt for e in ft.task.test]))
            picks = learner.router.route(torch.cat(test_emb))
            truth = [x.task.name for x in tasks[: t + 1] for _ in x.task.test]
            routing = round(100.0 * np.mean([p == y for (p, _), y in zip(picks, truth, strict=True)]), 2)
        per_task.append(
            {
                "task": ft.task.name,
                "family": ft.family,
                "seconds": round(rep.seconds, 2),
                "thread_cpu_seconds": round(rep.thread_cpu_seconds, 2),
                "epochs": rep.epochs_run,
                "placement": rep.placement,
                "comparisons": int(rep.placement.get("comparisons", 0)),
                "stored_bytes": learner.stored_bytes(),
                "routing_accuracy": routing,
            }
        )
    return {
        "method": method,
        "strategy": cfg.strategy,
        "seed": cfg.train.seed,
        "routed": routed,
        "families": [ft.family for ft in tasks],
        "diag": diag,
        "rows": {str(k): v for k, v in rows.items()},
        "per_task": per_task,
        "tree": tree_shape(learner, tasks),
        "wall_seconds": round(time.time() - t0, 1),
    }


def cells_dir(out: Path, profile: str) -> Path:
    return out / "cells" / f"long-{profile}"


_WORKER: dict[str, Any] = {}  # this process's model, tokenizer and tasks (one per `--jobs` worker)


def _worker_init(model: str, device: str, profile: str, threads: int | None, folder: Path) -> None:
    if threads:
        torch.set_num_threads(threads)
    prof = PROFILES[profile]
    tasks = family_stream(prof.n_train, prof.n_test)[: prof.n_tasks]
    base, tok = load_base(model, device=device)
    warm_up(base, tok, [ft.task for ft in tasks], prof)
    _WORKER.update(base=base, tok=tok, tasks=tasks, profile=profile, model=model, folder=folder)


def _worker_cell(seed: int, method: str) -> float:
    prof = PROFILES[_WORKER["profile"]]
    t0 = time.time()
    cell = run_cell(method, method_config(method, prof, seed), _WORKER["base"], _WORKER["tok"], _WORKER["tasks"])
    cell.update(profile=_WORKER["profile"], model=_WORKER["model"], machine=_machine())
    write_cell(_WORKER["folder"] / f"seed{seed}" / f"{method}.json", cell)
    return time.time() - t0


def cmd_run(args: argparse.Namespace) -> None:
    """Run the missing cells; with `--jobs N`, N worker processes (one torch thread each unless
    `--threads`) take the cells as they free up, each with its own model copy."""
    folder = cells_dir(args.out, args.profile)
    todo = [
        (s, m)
        for s in args.seeds
        for m in args.methods[s % len(args.methods) :] + args.methods[: s % len(args.methods)]
        if not (folder / f"seed{s}" / f"{m}.json").exists()
    ]
    if todo:
        threads = args.threads or (1 if args.jobs > 1 else None)
        init = (args.model, args.device, args.profile, threads, folder)
        run_cells(todo, args.jobs, _worker_init, init, _worker_cell, "cells long", folder / "runs.jsonl")


def summarise_cell(cell: dict[str, Any]) -> dict[str, Any]:
    """OP (with routing where the method needs an id), forgetting (the largest drop of an old task's
    score from any earlier measurement to the end, all with the task id, so routing errors count
    in OP and not here) and the per-N curves of one cell."""
    T = len(cell["diag"])
    final = cell["rows"][str(T)]
    key = "R_auto" if cell["routed"] else "R"
    final_scores = [float(np.mean(x)) for x in final[key]]
    seen = {i: [float(np.mean(cell["diag"][i]))] for i in range(T)}  # every score observed before the end
    for n, row in cell["rows"].items():
        if int(n) < T:
            for i, x in enumerate(row["R"]):
                seen[i].append(float(np.mean(x)))
    final_with_id = [float(np.mean(x)) for x in final["R"]]  # forgetting compares like with like: task id
    forgetting = float(np.mean([max(seen[i]) - final_with_id[i] for i in range(T - 1)]))
    op_by_n = {n: round(float(np.mean([np.mean(x) for x in row[key]])), 2) for n, row in cell["rows"].items()}
    return {
        "op": round(float(np.mean(final_scores)), 2),
        "op_task_id": round(float(np.mean([np.mean(x) for x in final["R"]])), 2),
        "forgetting": round(forgetting, 2),
        "op_by_n": op_by_n,
        "seconds": [round(task_seconds(cell, p), 1) for p in cell["per_task"]],
        "stored_bytes": [p["stored_bytes"] for p in cell["per_task"]],
        "comparisons": [p["comparisons"] for p in cell["per_task"]],
        "routing_accuracy": [p["routing_accuracy"] for p in cell["per_task"]],
        "final_routing_accuracy": cell["per_task"][-1]["routing_accuracy"],
        "tree": cell["tree"],
    }


def final_scores(cell: dict[str, Any], task_id: bool = False) -> np.ndarray:
    """(1, T, n) per-example final scores (with routing where the method needs an id, unless
    `task_id`), NaN-padded."""
    final = cell["rows"][str(len(cell["diag"]))]["R_auto" if cell["routed"] and not task_id else "R"]
    x = np.full((1, len(final), max(len(ex) for ex in final)), np.nan)
    for i, ex in enumerate(final):
        x[0, i, : len(ex)] = ex
    return x


def final_op_diff(a: dict[int, dict[str, Any]], b: dict[int, dict[str, Any]], task_id: bool = False) -> dict[str, Any]:
    """OP of a minus OP of b after the last task (with the task id if `task_id`), with a paired
    bootstrap interval over the seeds both have and the test examples (the stream's end only: the
    checkpoints in between are not paired resamples of the same rows)."""
    common = sorted(set(a) & set(b))
    xa = np.stack([final_scores(a[s], task_id) for s in common])  # (S, 1, T, n): one "row", the last
    xb = np.stack([final_scores(b[s], task_id) for s in common])
    n = [int((~np.isnan(ex)).sum()) for ex in xa[0, 0]]
    d, ci = stats.bootstrap_diff(stats.op_stat, xa, xb, stats.resamples(len(common), xa.shape[2], n))
    return {"op_diff": round(d, 2), "op_diff_ci": ci, "verdict": stats.verdict(ci), "seeds": common}


def long_json(summary: dict[str, Any]) -> dict[str, Any]:
    """The summary in the stream's published shape (`long.json`): per method the mean over its
    seeds, per task position the mean cost and routing so far; `tree_ari` is `treelora`'s."""

    def mean(values: list[Any]) -> Any:
        return None if any(v is None for v in values) else round(float(np.mean(values)), 2)

    methods = {}
    for m, by_seed in summary["methods"].items():
        runs = list(by_seed.values())
        methods[m] = {
            "seeds": [int(s) for s in by_seed],
            "op": mean([r["op"] for r in runs]),
            "forgetting": mean([r["forgetting"] for r in runs]),
            "routing_accuracy": mean([r["final_routing_accuracy"] for r in runs]),
            "per_task": [
                {
                    "position": k + 1,
                    "seconds": mean([r["seconds"][k] for r in runs]),
                    "stored_bytes": mean([r["stored_bytes"][k] for r in runs]),
                    "comparisons": mean([r["comparisons"][k] for r in runs]),
                    "routing_accuracy": mean([r["routing_accuracy"][k] for r in runs]),
                }
                for k in range(len(summary["tasks"]))
            ],
        }
    tree_runs: list[dict[str, Any]] = list(summary["methods"].get("treelora", {}).values())
    tree = tree_runs[0]["tree"] if tree_runs else None
    return {
        "stream": "wordnet-families",
        "profile": summary["profile"],
        "model": summary["model"],
        "tasks": [{"name": n, "family": f} for n, f in zip(summary["tasks"], summary["families"], strict=True)],
        "tree_ari": None if tree is None else tree["ari"],
        "methods": methods,
    }


def cmd_aggregate(args: argparse.Namespace) -> None:
    folder = cells_dir(args.out, args.profile)
    cells: dict[str, dict[int, dict[str, Any]]] = {}
    for path in sorted(folder.glob("seed*/*.json")):
        c = json.loads(path.read_text())
        cells.setdefault(c["method"], {})[c["seed"]] = c
    if not cells:
        raise SystemExit(f"no finished cell under {folder}")
    methods = {m: {str(s): summarise_cell(c) for s, c in sorted(by.items())} for m, by in cells.items()}
    any_cell = next(iter(next(iter(cells.values())).values()))
    pairs = {
        f"{a}{suffix} vs {b}{suffix}": final_op_diff(cells[a], cells[b], task_id=bool(suffix))
        for suffix, pairs_of in (("", PAIRS), ("@task_id", ABLATION_PAIRS))
        for a, b in pairs_of
        if a in cells and b in cells and set(cells[a]) & set(cells[b])
    }
    summary = {
        "profile": args.profile,
        "setup": PROFILES[args.profile].__dict__,
        "model": any_cell["model"],
        "machine": any_cell["machine"],
        "tasks": [p["task"] for p in any_cell["per_task"]],
        "families": any_cell["families"],
        "checkpoints": sorted(int(n) for n in any_cell["rows"]),
        "methods": methods,
        "pairs": pairs,
    }
    name = "long-stream" if args.profile == "quick" else f"long-stream-{args.profile}"
    (args.out / f"{name}.json").write_text(json.dumps(summary, indent=1) + "\n")
    short = "long" if args.profile == "quick" else f"long-{args.profile}"
    (args.out / f"{short}.json").write_text(json.dumps(long_json(summary), indent=1) + "\n")
    plot(summary, args.out / f"{name}.png")


def plot(summary: dict[str, Any], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(18, 4))
    panels = (
        ("seconds", "training seconds per task"),
        ("stored_bytes", "stored MB (cumulative)"),
        ("comparisons", "placement signature comparisons"),
        ("routing_accuracy", "routing accuracy so far (%)"),
    )
    for ax, (key, title) in zip(axes, panels, strict=True):
        for m, by_seed in summary["methods"].items():
            series = [s[key] for s in by_seed.values()]
            if any(v is None for v in series[0]):
                continue  # routing accuracy of a method that needs no task id
            y = np.mean(np.array(series, dtype=float), axis=0)
            if key == "stored_bytes":
                y = y / 1e6
            ax.plot(range(1, len(y) + 1), y, marker=".", label=m)
        ax.set_title(title)
        ax.set_xlabel("tasks learned (N)")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def placement_at_scale(sigs: torch.Tensor, fam: list[str], deep_weight: float) -> list[dict[str, Any]]:
    """Place task N (N = 2..) among the N-1 before it, on the real signatures (N, blocks, dim):
    flat search (every earlier signature, `treelora`'s weighted block cosine) against the paper's
    LCB best-first search on its layer-wise K-D tree (L1 per block). Per N: comparisons and
    microseconds per placement, and whether each found a task of the new one's family."""
    weights = depth_weights(sigs.shape[1], deep_weight)
    unit = F.normalize(sigs.float(), dim=-1)  # (N, blocks, dim)
    tree = GradientKDTree(sigs.shape[1])
    tree.insert(list(sigs[0].float()))
    rows = []
    for n in range(1, len(sigs)):
        q = sigs[n].float()
        t0 = time.perf_counter()
        flat = int((((unit[:n] * unit[n]).sum(-1) * weights).sum(-1)).argmax())  # vectorised flat search
        flat_us = 1e6 * (time.perf_counter() - t0)
        parts = list(q)

        def dist(sig: Signature, parts: list[torch.Tensor] = parts) -> float:
            return sum(l1(a, b) for a, b in zip(parts, sig, strict=True))

        t0 = time.perf_counter()
        search = LCBSearch(tree)
        found = search.search(dist)
        tree_us = 1e6 * (time.perf_counter() - t0)
        rows.append(
            {
                "n": n + 1,
                "flat_comparisons": n,
                "tree_comparisons": search.comparisons,
                "flat_us": round(flat_us, 1),
                "tree_us": round(tree_us, 1),
                "flat_same_family": fam[flat] == fam[n] if any(f == fam[n] for f in fam[:n]) else None,
                "tree_same_family": fam[found] == fam[n] if any(f == fam[n] for f in fam[:n]) else None,
            }
        )
        tree.insert(parts)
    return rows


def cmd_signatures(args: argparse.Namespace) -> None:
    """Every task's probe-gradient signature (as `treelora` takes it, but from `--pulls`
    minibatches), then per block the mean cosine between tasks of the same family and of
    different families, the same cosine after removing the mean signature of all tasks, and a
    task's agreement with itself (two halves of its pulls): can placement tell relatives from
    strangers, and at which depth?"""
    prof = PROFILES[args.profile]
    tasks = family_stream(prof.n_train, prof.n_test)[: prof.n_tasks]
    base, tok = load_base(args.model, device=args.device)
    learner = ContinualLearner(base, tok, method_config("seq_lora", prof, 0))
    tc = TreeConfig()  # treelora's probe: the same seeded point, projection and minibatch size
    prober = Prober(learner, seed=tc.probe_seed, dim=tc.projection_dim, batch_size=tc.probe_batch)
    pulls = torch.stack([prober.pulls(learner.encode(ft.task.train), args.pulls) for ft in tqdm(tasks)]).float()
    fam = [ft.family for ft in tasks]
    n = len(tasks)

    def block_cos(sig: torch.Tensor) -> torch.Tensor:  # (N, blocks, dim) -> (N, N, blocks)
        return F.cosine_similarity(sig[:, None], sig[None, :], dim=-1)

    mean = pulls.mean(1)
    same = torch.tensor([[fam[i] == fam[j] and i != j for j in range(n)] for i in range(n)])
    other = torch.tensor([[fam[i] != fam[j] for j in range(n)] for i in range(n)])
    raw, centred = block_cos(mean), block_cos(mean - mean.mean(0, keepdim=True))
    half = args.pulls // 2
    own = F.cosine_similarity(pulls[:, :half].mean(1), pulls[:, half:].mean(1), dim=-1)  # (N, blocks)
    weights = torch.linspace(1.0, 2.0, raw.shape[-1])

    def nearest_same_family(c: torch.Tensor) -> int:
        sim = (c * weights).sum(-1) / weights.sum()
        sim.fill_diagonal_(-9.0)
        return sum(fam[i] == fam[int(sim[i].argmax())] for i in range(n))

    out = {
        "tasks": [ft.task.name for ft in tasks],
        "families": fam,
        "pulls": args.pulls,
        "within_family": [round(float(v), 3) for v in raw[same].mean(0)],
        "across_family": [round(float(v), 3) for v in raw[other].mean(0)],
        "within_family_centred": [round(float(v), 3) for v in centred[same].mean(0)],
        "across_family_centred": [round(float(v), 3) for v in centred[other].mean(0)],
        "self_agreement": [round(float(v), 3) for v in own.mean(0)],
        "nearest_is_same_family": nearest_same_family(raw),
        "nearest_is_same_family_centred": nearest_same_family(centred),
        "rule": cmd_signatures.__doc__,
        "placement": placement_at_scale(mean, fam, tc.deep_weight),
        "placement_rule": placement_at_scale.__doc__,
    }
    (args.out / "long-stream-signatures.json").write_text(json.dumps(out, indent=1) + "\n")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    for cmd in ("run", "aggregate", "signatures"):
        p = sub.add_parser(cmd)
        p.add_argument("--profile", choices=tuple(PROFILES), default="quick")
        p.add_argument("--out", type=Path, default=Path("docs/benchmarks"))
        p.add_argument("--model", default=DEFAULT_MODEL)
        p.add_argument("--device", default="cpu")
        if cmd == "run":
            p.add_argument("--seeds", type=int, nargs="+", default=[0])
            p.add_argument("--threads", type=int, default=None)
            p.add_argument("--jobs", type=int, default=1, help="cells run at once, one process each")
            p.add_argument("--methods", nargs="+", default=list(DEFAULT_METHODS), choices=list(METHODS))
        if cmd == "signatures":
            p.add_argument("--pulls", type=int, default=4, help="probe minibatches per task")
    args = ap.parse_args(argv)
    {"run": cmd_run, "aggregate": cmd_aggregate, "signatures": cmd_signatures}[args.cmd](args)


if __name__ == "__main__":
    main()
