"""Continual-learning benchmark: every method, the same model, data, seeds, epoch budget and
early-stopping rule, run as resumable cells (stream x method x seed) and aggregated with intervals.

    python -m benchmarks.continual run --stream wordnet --seeds 0 1 2      # runs the missing cells
    python -m benchmarks.continual run --stream wordnet --seeds 3 --jobs 2 # one seed, two cells at a time
    python -m benchmarks.continual run --stream mixed --seeds 0 1 2 --trace-root ../shared/data/trace-500
    python -m benchmarks.continual tune-ewc --stream wordnet                # EWC's lambda on validation loss
    python -m benchmarks.continual aggregate --stream wordnet               # JSON, details, plot
    python -m benchmarks.report                                             # docs/benchmarks.md

A cell is one method learning the whole stream with one seed; it is written to
`docs/benchmarks/cells/<stream>-<profile>/seed<k>/<method>.json` when it finishes, so a stopped
run resumes where it was and a stream can be extended seed by seed. The task data are the same
for every seed (so methods are compared on the same test examples); the seed sets the data
order, the adapters' init and the held-out validation split. Within a process the model is warmed
up before the first timed cell, and the order of methods rotates from seed to seed (with `--jobs`,
the cells run longest first instead, by the wall time of the method's earlier cells; seconds per
task are then the training thread's CPU time, which a cell beside it inflates less than wall time).
Each run appends its wall-clock seconds and its cells' minutes to `runs.jsonl` beside the cells.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from treelora_core.batching import collate
from treelora_core.config import StreamConfig, config_from_dict
from treelora_core.data import MIXED_STREAM, Task, load_trace, load_wordnet
from treelora_core.learner import ContinualLearner
from treelora_core.metrics import example_scores
from treelora_core.models import DEFAULT_MODEL, load_base

from . import stats
from .cell_pool import run_cells, write_cell

# method name -> (strategy, config sections that differ from the strategy's defaults)
FIRST_BELOW = {"branch_rule": "first_below", "pull_stop": "separated"}  # the tree's former default
METHODS: dict[str, tuple[str, dict[str, Any]]] = {
    # the default: median-filtered first-below branch rule, "settled" probe pulls
    "treelora": ("treelora", {}),
    "per_task_lora": ("per_task_lora", {}),
    "lora_top": ("lora_top", {}),
    "seq_lora": ("seq_lora", {}),
    "o_lora": ("o_lora", {}),
    "ewc": ("ewc", {}),
    "treelora_paper": ("treelora_paper", {}),
    # the former default: the first raw cosine below the threshold ends sharing; pulls stop once
    # the best child is separated. The ablations below change one thing each from it.
    "treelora[first_below]": ("treelora", {"tree": FIRST_BELOW}),
    "treelora[no_warm]": ("treelora", {"tree": {**FIRST_BELOW, "warm_start": False}}),
    "treelora[no_share]": ("treelora", {"tree": {**FIRST_BELOW, "share": False}}),
    "treelora[random_relative]": ("treelora", {"tree": {**FIRST_BELOW, "placement": "random"}}),
    "treelora[always_share]": ("treelora", {"tree": {**FIRST_BELOW, "placement": "always_share"}}),
    "treelora[best_prefix]": ("treelora", {"tree": {**FIRST_BELOW, "branch_rule": "best_prefix"}}),
    # best_prefix, and the search stops pulling once more pulls cannot change the branch block
    "treelora[decided]": ("treelora", {"tree": {"branch_rule": "best_prefix", "pull_stop": "decided"}}),
    # first_below, and the search stops pulling early only on a decided share up to the cap
    "treelora[settled]": ("treelora", {"tree": {**FIRST_BELOW, "pull_stop": "settled"}}),
    # the default owning its last 5 or 8 blocks instead of 10: what the owned-block count costs and saves
    "treelora[own_5]": ("treelora", {"tree": {"min_own_blocks": 5}}),
    "treelora[own_8]": ("treelora", {"tree": {"min_own_blocks": 8}}),
    "treelora_paper[no_penalty]": ("treelora_paper", {"paper": {"search": "none"}}),
    "treelora_paper[random_search]": ("treelora_paper", {"paper": {"search": "random"}}),
}
# the paired comparisons the targets name (a, b): OP of a minus OP of b
TARGET_PAIRS = (
    ("treelora", "per_task_lora"),
    ("treelora", "lora_top"),
    ("treelora", "seq_lora"),
    ("treelora", "o_lora"),
    ("treelora", "ewc"),
    ("treelora", "treelora_paper"),
    ("treelora@task_id", "per_task_lora@task_id"),
    ("treelora@task_id", "lora_top@task_id"),
    ("treelora", "treelora[first_below]"),
    ("treelora[first_below]", "treelora[no_warm]"),
    ("treelora[first_below]", "treelora[no_share]"),
    ("treelora", "treelora[random_relative]"),
    ("treelora", "treelora[always_share]"),
    ("treelora", "treelora[best_prefix]"),
    ("treelora", "treelora[decided]"),
    ("treelora[best_prefix]", "treelora[decided]"),
    ("treelora", "treelora[settled]"),
    ("treelora[first_below]", "treelora[settled]"),
    ("treelora", "treelora[own_5]"),
    ("treelora", "treelora[own_8]"),
    ("treelora[own_5]", "per_task_lora"),
    ("treelora[own_8]", "per_task_lora"),
    ("per_task_lora", "lora_top"),
    ("treelora_paper", "seq_lora"),
    ("treelora_paper", "treelora_paper[no_penalty]"),
    ("treelora_paper", "treelora_paper[random_search]"),
    ("ewc", "seq_lora"),
)
# strategies whose first task is the same work (a full adapter on every block, nothing to share or
# penalise yet): their seconds per task in units of the cell's first task compare across machines
# and days, which raw seconds do not (`seconds_in_first_tasks` in the details)
SAME_FIRST_TASK = ("per_task_lora", "seq_lora", "treelora")
REF_TIME = "per_task_lora"  # the time targets' reference: an independent LoRA per task, all blocks
EWC_GRID = (1e2, 1e3, 1e4, 1e5, 1e6, 1e7)  # lambda candidates for `tune-ewc`


@dataclass(frozen=True)
class Profile:
    n_tasks: int
    n_train: int  # per task, of which TrainConfig.val_examples go to the early-stopping rule
    n_test: int
    epochs: int  # the budget; early stopping (patience 1 on validation loss) may end sooner
    max_length: int


PROFILES = {
    ("wordnet", "smoke"): Profile(2, 48, 8, 1, 64),  # checks the pipeline in a minute; numbers mean nothing
    ("mixed", "smoke"): Profile(2, 48, 8, 1, 64),
    ("wordnet", "quick"): Profile(5, 128, 100, 4, 64),
    ("mixed", "quick"): Profile(5, 96, 100, 4, 128),
    ("wordnet", "full"): Profile(6, 500, 100, 5, 128),
    ("mixed", "full"): Profile(8, 500, 100, 5, 512),
}
OUTPUT = {"wordnet": "continual", "mixed": "continual-mixed"}


def load_stream(stream: str, profile: Profile, trace_root: Path) -> list[Task]:
    if stream == "wordnet":
        return load_wordnet(n_tasks=profile.n_tasks, n_train=profile.n_train, n_test=profile.n_test)
    names = (
        MIXED_STREAM
        if profile.n_tasks <= len(MIXED_STREAM)
        else ("C-STANCE", "FOMC", "MeetingBank", "Py150", "ScienceQA", "NumGLUE-cm", "NumGLUE-ds", "20Minuten")
    )
    return load_trace(trace_root, names[: profile.n_tasks], n_train=profile.n_train, n_test=profile.n_test)


def method_config(method: str, profile: Profile, seed: int, ewc_lambda: float | None = None) -> StreamConfig:
    strategy, sections = METHODS[method]
    d: dict[str, Any] = {
        "strategy": strategy,
        "train": {"epochs": profile.epochs, "max_length": profile.max_length, "seed": seed, "patience": 1},
        **copy.deepcopy(sections),
    }
    if strategy == "ewc" and ewc_lambda is not None:
        d["ewc"] = {"lam": ewc_lambda}
    return config_from_dict(d)


def warm_up(base: Any, tok: Any, tasks: list[Task], profile: Profile) -> None:
    """A few untimed training steps, so the first timed cell does not pay for allocator and
    kernel warm-up."""
    learner = ContinualLearner(copy.deepcopy(base), tok, method_config("seq_lora", profile, 0))
    learner.strategy.begin_task("warm-up", [])
    params = learner.bank.set_trainable({"shared"})
    ids, labels = collate(learner.encode(tasks[0].train[:8]), tok.pad_token_id, learner.device)
    with learner.bank.routed_path(learner.path_for(None)):
        for _ in range(3):
            learner.loss(ids, labels).backward()
            for p in params:
                p.grad = None


def auto_scores(learner: ContinualLearner, task: Task, with_id: list[float]) -> tuple[list[float], int]:
    """Per-example scores with `task="auto"` and the number routed right. A row routed to its own
    task decodes exactly as with the true id (greedy decoding of a row does not depend on the
    rest of its batch, a tested property), so only the misrouted rows are generated again."""
    prompts = [e.prompt for e in task.test]
    routes = [name for name, _ in learner.resolve(prompts, "auto")]
    wrong = [k for k, name in enumerate(routes) if name != task.name]
    scores = list(with_id)
    if wrong:
        paths = [learner.path_for(routes[k]) for k in wrong]
        preds = learner.generate([prompts[k] for k in wrong], paths, max_new_tokens=learner.answer_budget(task))
        refs = [task.test[k].completion for k in wrong]
        for k, sc in zip(wrong, example_scores(preds, refs, task.metric), strict=True):
            scores[k] = sc
    return scores, len(prompts) - len(wrong)


def run_cell(method: str, cfg: StreamConfig, base: Any, tok: Any, tasks: list[Task]) -> dict[str, Any]:
    learner = ContinualLearner(copy.deepcopy(base), tok, cfg)
    routed = learner.strategy.needs_task_id
    t0 = time.time()
    R: list[list[list[float]]] = []  # R[t][i] = per-example scores on task i after task t
    R_auto: list[list[list[float]]] = []
    per_task = []
    bar = tqdm(tasks, desc=method, unit="task", leave=False)
    for t, task in enumerate(bar):
        rep = learner.learn(task)
        if learner.strategy.frozen_paths and R:  # old tasks answer exactly as before: score the new one
            R.append([*(list(r) for r in R[-1]), learner.evaluate_examples(task, "task_id")])
        else:
            R.append([learner.evaluate_examples(tasks[i], "task_id" if routed else "auto") for i in range(t + 1)])
        hits = total = 0
        if routed:
            row = []
            for i, old in enumerate(tasks[: t + 1]):
                scores, right = auto_scores(learner, old, R[-1][i])
                row.append(scores)
                hits, total = hits + right, total + len(scores)
            R_auto.append(row)
        per_task.append(
            {
                "task": task.name,
                "seconds": round(rep.seconds, 2),
                "thread_cpu_seconds": round(rep.thread_cpu_seconds, 2),
                "epochs": rep.epochs_run,
                "steps": rep.steps,
                "trainable_params": rep.trainable_params,
                "val_losses": [round(v, 4) for v in rep.val_losses],
                "placement": rep.placement,
                "phase_seconds": rep.phase_seconds,
                "stored_bytes": learner.stored_bytes(),
                "routing_accuracy": round(100.0 * hits / total, 2) if total else None,
            }
        )
        bar.set_postfix(op=f"{np.mean([np.mean(r) for r in (R_auto or R)[-1]]):.1f}")
    return {
        "method": method,
        "strategy": cfg.strategy,
        "seed": cfg.train.seed,
        "routed": routed,
        "R": R,
        "R_auto": R_auto or None,
        "per_task": per_task,
        "stored_bytes": learner.stored_bytes(),
        "trainable_params": round(sum(p["trainable_params"] for p in per_task) / len(per_task)),
        "wall_seconds": round(time.time() - t0, 1),
        "ewc_lambda": cfg.ewc.lam if cfg.strategy == "ewc" else None,
    }


def cells_dir(out: Path, stream: str, profile: str) -> Path:
    return out / "cells" / f"{stream}-{profile}"


def ewc_lambda(out: Path, stream: str, profile: str) -> float | None:
    path = cells_dir(out, stream, profile) / "ewc-lambda.json"
    if not path.exists():
        return None
    doc = json.loads(path.read_text())
    return float(doc["chosen"]) if doc.get("complete") else None  # a tune still running chooses nothing


def _setup(args: argparse.Namespace) -> tuple[Profile, list[Task], Any, Any]:
    logging.basicConfig(level=logging.WARNING)
    prof = PROFILES[(args.stream, args.profile)]
    tasks = load_stream(args.stream, prof, args.trace_root)
    base, tok = load_base(args.model, device=args.device)
    return prof, tasks, base, tok


_WORKER: dict[str, Any] = {}  # this process's model, tokenizer, tasks and settings (one per `--jobs` worker)


def _worker_init(args: argparse.Namespace, threads: int | None, lam: float | None) -> None:
    if threads:
        torch.set_num_threads(threads)
    prof, tasks, base, tok = _setup(args)
    warm_up(base, tok, tasks, prof)
    _WORKER.update(args=args, prof=prof, tasks=tasks, base=base, tok=tok, lam=lam)


def _worker_cell(seed: int, method: str) -> float:
    args, prof = _WORKER["args"], _WORKER["prof"]
    t0 = time.time()
    cfg = method_config(method, prof, seed, _WORKER["lam"])
    cell = run_cell(method, cfg, _WORKER["base"], _WORKER["tok"], _WORKER["tasks"])
    cell.update(stream=args.stream, profile=args.profile, model=args.model, machine=_machine())
    write_cell(cells_dir(args.out, args.stream, args.profile) / f"seed{seed}" / f"{method}.json", cell)
    return time.time() - t0


def cmd_run(args: argparse.Namespace) -> None:
    """Run the missing cells; with `--jobs N`, N worker processes (one torch thread each unless
    `--threads`) take the cells as they free up, each with its own model copy."""
    folder = cells_dir(args.out, args.stream, args.profile)
    lam = ewc_lambda(args.out, args.stream, args.profile)
    if "ewc" in args.methods and lam is None:
        raise SystemExit(f"run `tune-ewc --stream {args.stream} --profile {args.profile}` first")
    todo = []
    for seed in args.seeds:
        k = seed % len(args.methods)
        for m in args.methods[k:] + args.methods[:k]:  # the order rotates between seeds
            if not (folder / f"seed{seed}" / f"{m}.json").exists():
                todo.append((seed, m))
    if todo:
        if args.jobs > 1:  # longest first (by the method's cells so far), so the workers finish together
            past = load_cells(args.out, args.stream, args.profile)
            minutes = {m: np.mean([c["wall_seconds"] for c in past[m].values()]) for m in past}
            todo.sort(key=lambda sm: -minutes.get(sm[1], np.inf))
        threads = args.threads or (1 if args.jobs > 1 else None)
        init = (args, threads, lam)
        run_cells(todo, args.jobs, _worker_init, init, _worker_cell, f"cells {args.stream}", folder / "runs.jsonl")


def cmd_tune_ewc(args: argparse.Namespace) -> None:
    """EWC's lambda from EWC_GRID: seed 0, the first two tasks, the lambda with the lowest mean
    validation loss over both tasks' held-out validation splits after the second task (the
    validation splits never train; the test sets are not read)."""
    prof, tasks, base, tok = _setup(args)
    folder = cells_dir(args.out, args.stream, args.profile)
    path = folder / "ewc-lambda.json"
    results = json.loads(path.read_text())["validation_losses"] if path.exists() else {}  # resumes
    for lam in tqdm([v for v in EWC_GRID if str(v) not in results], desc="ewc lambda"):
        cfg = method_config("ewc", prof, 0, lam)
        learner = ContinualLearner(copy.deepcopy(base), tok, cfg)
        for task in tasks[:2]:
            learner.learn(task)
        results[str(lam)] = [round(learner.validation_loss(t), 4) for t in tasks[:2]]
        chosen = min((float(v) for v in results), key=lambda v: float(np.mean(results[str(v)])))
        complete = all(str(v) in results for v in EWC_GRID)
        doc = {"grid": list(EWC_GRID), "validation_losses": results, "chosen": chosen, "complete": complete}
        doc["rule"] = cmd_tune_ewc.__doc__
        folder.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(doc, indent=1) + "\n")  # after each lambda, so a stop loses little


def _machine() -> str:
    return f"{platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}"


def load_cells(out: Path, stream: str, profile: str) -> dict[str, dict[int, dict[str, Any]]]:
    """method -> seed -> cell."""
    cells: dict[str, dict[int, dict[str, Any]]] = {}
    for path in sorted(cells_dir(out, stream, profile).glob("seed*/*.json")):
        cell = json.loads(path.read_text())
        cells.setdefault(cell["method"], {})[cell["seed"]] = cell
    return cells


def task_seconds(cell: dict[str, Any], task: dict[str, Any]) -> float:
    """Training seconds of one task: the training thread's CPU time when the cell ran on one torch
    thread and recorded it (so a busy machine does not inflate it), else wall time; with one thread
    on an idle machine the two agree."""
    cpu = task.get("thread_cpu_seconds")
    return float(cpu) if cpu and cell["machine"].split(", ")[1].startswith("1 torch thread") else float(task["seconds"])


def first_task_unit(cell: dict[str, Any]) -> float:
    """The cell's first task's seconds without its placement (the probe pulls a placement rule may
    take before there is anything to compare): the same work for every `SAME_FIRST_TASK` method."""
    first = cell["per_task"][0]
    place = first.get("phase_seconds", {}).get("place", 0.0)
    return task_seconds(cell, first) * (1 - place / float(first["seconds"]))


def scores_array(cells: list[dict[str, Any]], key: str) -> np.ndarray:
    """(S, T, T, n) per-example scores, NaN where a task was not yet trained."""
    first = cells[0][key]
    T, n = len(first), max(len(ex) for ex in first[-1])  # tasks may have fewer test examples
    x = np.full((len(cells), T, T, n), np.nan)
    for s, cell in enumerate(cells):
        for t, row in enumerate(cell[key]):
            for i, ex in enumerate(row):
                x[s, t, i, : len(ex)] = ex
    return x


def summarise(out: Path, stream: str, profile: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(summary, details). Each method is summarised over the seeds it has finished (listed per
    method); a paired difference uses the seeds both methods have."""
    cells = load_cells(out, stream, profile)
    if not cells:
        raise SystemExit(f"no finished cell under {cells_dir(out, stream, profile)}")
    any_cell = next(iter(next(iter(cells.values())).values()))
    T = len(any_cell["R"])
    n_per_task = [len(ex) for ex in any_cell["R"][-1]]
    n: int | list[int] = n_per_task[0] if len(set(n_per_task)) == 1 else n_per_task
    arrays: dict[str, dict[int, np.ndarray]] = {}  # row name -> seed -> (1, T, T, n)
    methods: dict[str, Any] = {}
    in_first: dict[str, dict[str, float]] = {}
    per_seed_secs: dict[str, dict[int, float]] = {}  # method -> seed -> mean seconds per task
    for m, by_seed in cells.items():
        seeds = sorted(by_seed)
        cs = [by_seed[s] for s in seeds]
        draws = stats.resamples(len(seeds), T, n)
        rows = [(m, "R_auto" if cs[0]["routed"] else "R")]
        if cs[0]["routed"]:
            rows.append((f"{m}@task_id", "R"))
        secs = np.array([[task_seconds(c, p) for p in c["per_task"]] for c in cs])
        sec_mean, sec_ci = stats.mean_ci(secs)
        per_seed_secs[m] = {s: float(v) for s, v in zip(seeds, secs.mean(1), strict=True)}
        if METHODS[m][0] in SAME_FIRST_TASK:
            units = np.array([first_task_unit(c) for c in cs])
            in_first[m] = {str(s): round(float(v), 3) for s, v in zip(seeds, secs.mean(1) / units, strict=True)}
        for name, key in rows:
            x = scores_array(cs, key)
            arrays[name] = {s: x[k : k + 1] for k, s in enumerate(seeds)}
            op, op_ci = stats.bootstrap(stats.op_stat, x, draws)
            fg, fg_ci = stats.bootstrap(stats.forgetting_stat, x, draws)
            bwt = stats.bwt_stat(x)
            routing = [c["per_task"][-1]["routing_accuracy"] for c in cs] if name == m and cs[0]["routed"] else None
            methods[name] = {
                "op": round(op, 2),
                "bwt_gem": round(bwt, 2),
                "forgetting": round(fg, 2),
                "seconds_per_task": round(sec_mean, 1),
                "trainable_params": cs[0]["trainable_params"],
                "stored_bytes": round(float(np.mean([c["stored_bytes"] for c in cs]))),
                "routing_accuracy": None if routing is None else round(float(np.mean(routing)), 1),
                "op_ci": op_ci,
                "forgetting_ci": fg_ci,
                "seconds_ci": sec_ci,
                "seeds": seeds,
            }
    prof = PROFILES[(stream, profile)]
    summary = {
        "stream": stream,
        "profile": profile,
        "model": any_cell["model"],
        "epochs": prof.epochs,
        "seeds": sorted({s for by_seed in cells.values() for s in by_seed}),
        "methods": methods,
    }
    pairs = {}
    for a, b in TARGET_PAIRS:
        common = sorted(set(arrays.get(a, {})) & set(arrays.get(b, {})))
        if common:
            xa = np.concatenate([arrays[a][s] for s in common])
            xb = np.concatenate([arrays[b][s] for s in common])
            draws = stats.resamples(len(common), T, n)
            d, ci = stats.bootstrap_diff(stats.op_stat, xa, xb, draws)
            fd, fci = stats.bootstrap_diff(stats.forgetting_stat, xa, xb, draws)
            pairs[f"{a} vs {b}"] = {
                "op_diff": round(d, 2),
                "op_diff_ci": ci,
                "verdict": stats.verdict(ci),
                "forgetting_diff": round(fd, 2),
                "forgetting_diff_ci": fci,
                "forgetting_verdict": stats.verdict(fci, higher_is_better=False),
                "seeds": common,
            }
    tasks = [p["task"] for p in any_cell["per_task"]]
    details = {
        "tasks": tasks,
        "n_test": n,
        "profile": prof.__dict__,
        "machine": any_cell["machine"],
        "ewc_lambda": next((c["ewc_lambda"] for c in cells.get("ewc", {}).values()), None),
        "pairs": pairs,
        "seconds_in_first_tasks": in_first,
        "time_vs_per_task": time_ratios(per_seed_secs, in_first),
        "runs": {
            m: {
                str(s): {
                    "R": _means(c["R"]),
                    "R_auto": None if c["R_auto"] is None else _means(c["R_auto"]),
                    "wall_seconds": c["wall_seconds"],
                    "per_task": c["per_task"],
                }
                for s, c in by_seed.items()
            }
            for m, by_seed in cells.items()
        },
    }
    return summary, details


def time_ratios(secs: dict[str, dict[int, float]], units: dict[str, dict[str, float]]) -> dict[str, Any]:
    """Each method's seconds per task over `per_task_lora`'s on the seeds both have (a method with
    fewer seeds is not divided by the reference's other seeds), raw and, where both record it, in
    first-task units with a bootstrap interval over those seeds; the units ratio is the one that
    holds across machine days."""
    ref, ref_units = secs.get(REF_TIME, {}), units.get(REF_TIME, {})
    out: dict[str, Any] = {}
    for m, by_seed in secs.items():
        common = sorted(set(by_seed) & set(ref))
        if not common:
            continue
        row: dict[str, Any] = {
            "seeds": common,
            "seconds": round(float(np.mean([by_seed[s] for s in common]) / np.mean([ref[s] for s in common])), 3),
        }
        if m in units:
            mine, theirs = (np.array([us[str(s)] for s in common]) for us in (units[m], ref_units))
            row["first_task_units"] = round(float(mine.mean() / theirs.mean()), 3)
            row["first_task_units_ci"] = stats.ratio_ci(mine, theirs)
        out[m] = row
    return out


def _means(R: list[list[list[float]]]) -> list[list[float]]:
    """Per-example scores -> the R matrix (lower triangle: task i after task t >= i)."""
    return [[round(float(np.mean(ex)), 1) for ex in row] for row in R]


def cmd_aggregate(args: argparse.Namespace) -> None:
    summary, details = summarise(args.out, args.stream, args.profile)
    name = OUTPUT[args.stream] if args.profile != "smoke" else f"{OUTPUT[args.stream]}-smoke"
    (args.out / f"{name}.json").write_text(json.dumps(summary, indent=2) + "\n")
    (args.out / f"{name}.details.json").write_text(json.dumps(details, indent=1, default=str) + "\n")
    from .plot import plot

    plot(summary, details, args.out / f"{name}.png")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    for cmd in ("run", "tune-ewc", "aggregate"):
        p = sub.add_parser(cmd)
        p.add_argument("--stream", choices=("wordnet", "mixed"), default="wordnet")
        p.add_argument("--profile", choices=("smoke", "quick", "full"), default="quick")
        p.add_argument("--out", type=Path, default=Path("docs/benchmarks"))
        p.add_argument("--model", default=DEFAULT_MODEL)
        p.add_argument("--trace-root", type=Path, default=Path("../shared/data/trace-500"))
        p.add_argument("--device", default="cpu", help="torch device, e.g. cuda for the full profile")
        if cmd == "run":
            p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
            p.add_argument("--threads", type=int, default=None, help="torch threads (torch's own; 1 with --jobs)")
            p.add_argument("--jobs", type=int, default=1, help="worker processes running cells side by side")
            p.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    args = ap.parse_args(argv)
    {"run": cmd_run, "tune-ewc": cmd_tune_ewc, "aggregate": cmd_aggregate}[args.cmd](args)


if __name__ == "__main__":
    main()
