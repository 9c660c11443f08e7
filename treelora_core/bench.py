"""Continual-learning benchmark: every method, one run, same model, data, seeds and epoch budget.

    python -m treelora_core.bench --stream wordnet --profile quick
    python -m treelora_core.bench --stream mixed --profile quick --trace-root ../shared/data/trace-500

Writes docs/benchmarks/continual.json (wordnet) or continual-mixed.json (mixed), a details file
with the R matrices, per-task times and placements, and a PNG plot; `bench_report` renders the doc.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import platform
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from .config import PaperConfig, StreamConfig, TrainConfig
from .data import MIXED_STREAM, Task, load_trace, load_wordnet
from .learner import ContinualLearner
from .metrics import summarize
from .models import DEFAULT_MODEL, load_base
from .strategies import STRATEGIES

ABLATIONS = {"treelora_paper[no_penalty]": "none", "treelora_paper[random_search]": "random"}


@dataclass(frozen=True)
class Profile:
    n_tasks: int
    n_train: int  # per task, of which TrainConfig.val_examples go to the early-stopping rule
    n_test: int
    epochs: int
    max_length: int


PROFILES = {
    ("wordnet", "smoke"): Profile(2, 48, 8, 1, 64),  # checks the pipeline in a minute; numbers mean nothing
    ("mixed", "smoke"): Profile(2, 48, 8, 1, 64),
    ("wordnet", "quick"): Profile(5, 160, 50, 2, 96),
    ("mixed", "quick"): Profile(5, 96, 40, 2, 128),
    ("wordnet", "full"): Profile(6, 500, 100, 5, 128),
    ("mixed", "full"): Profile(8, 500, 100, 5, 512),
}


def load_stream(stream: str, profile: Profile, trace_root: Path) -> list[Task]:
    if stream == "wordnet":
        return load_wordnet(n_tasks=profile.n_tasks, n_train=profile.n_train, n_test=profile.n_test)
    names = (
        MIXED_STREAM
        if profile.n_tasks <= len(MIXED_STREAM)
        else ("C-STANCE", "FOMC", "MeetingBank", "Py150", "ScienceQA", "NumGLUE-cm", "NumGLUE-ds", "20Minuten")
    )
    return load_trace(trace_root, names[: profile.n_tasks], n_train=profile.n_train, n_test=profile.n_test)


def run_method(name: str, cfg: StreamConfig, base: Any, tok: Any, tasks: list[Task], bar: tqdm) -> dict[str, Any]:
    learner = ContinualLearner(copy.deepcopy(base), tok, cfg)
    routed = learner.strategy.needs_task_id
    R: list[list[float]] = []
    R_auto: list[list[float]] = []
    reports = []
    for t, task in enumerate(tasks):
        inner = tqdm(total=0, desc=f"{name} {task.name[:24]}", leave=False, unit="step")

        def progress(ev: dict[str, Any], inner: tqdm = inner) -> None:
            if ev["phase"] == "train":
                inner.total = ev["total"]
                inner.n = ev["step"]
                inner.set_postfix(loss=f"{ev['loss']:.3f}")
                inner.refresh()

        rep = learner.learn(task, progress=progress)
        inner.close()
        reports.append(rep)
        R.append([learner.evaluate(tasks[i], "task_id" if routed else "auto") for i in range(t + 1)])
        if routed:
            R_auto.append([learner.evaluate(tasks[i], "auto") for i in range(t + 1)])
        bar.update(1)
        bar.set_postfix(method=name, op=f"{sum(R[-1]) / len(R[-1]):.1f}")
    routing = None
    if routed:
        hits = total = 0
        for task in tasks:
            routes = learner.resolve([e.prompt for e in task.test], "auto")
            hits += sum(r == task.name for r, _ in routes)
            total += len(routes)
        routing = 100.0 * hits / total
    return {
        "R": R,
        "R_auto": R_auto or None,
        "routing_accuracy": routing,
        "reports": reports,
        "stored_bytes": learner.strategy.stored_bytes(),
        "trainable_params": round(sum(r.trainable_params for r in reports) / len(reports)),
    }


def entry(R: list[list[float]], res: dict[str, Any], routing: float | None) -> dict[str, Any]:
    s = {k: float(v) for k, v in summarize(R).items() if v is not None}
    secs = [r.seconds for r in res["reports"]]
    return {
        "op": round(s["op"], 2),
        "bwt_gem": round(s["bwt_gem"], 2),
        "forgetting": round(s["forgetting"], 2),
        "seconds_per_task": round(sum(secs) / len(secs), 1),
        "trainable_params": res["trainable_params"],
        "stored_bytes": res["stored_bytes"],
        "routing_accuracy": None if routing is None else round(routing, 1),
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--stream", choices=("wordnet", "mixed"), default="wordnet")
    ap.add_argument("--profile", choices=("smoke", "quick", "full"), default="quick")
    ap.add_argument("--methods", nargs="*", default=list(STRATEGIES) + list(ABLATIONS))
    ap.add_argument("--model", default=DEFAULT_MODEL)
    ap.add_argument("--trace-root", type=Path, default=Path("../shared/data/trace-500"))
    ap.add_argument("--out", type=Path, default=Path("docs/benchmarks"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu", help="torch device, e.g. cuda for the full profile")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    prof = PROFILES[(args.stream, args.profile)]
    tasks = load_stream(args.stream, prof, args.trace_root)
    base, tok = load_base(args.model, device=args.device)
    train = TrainConfig(epochs=prof.epochs, max_length=prof.max_length, seed=args.seed)
    zero_learner = ContinualLearner(copy.deepcopy(base), tok, StreamConfig(train=train))
    zero_shot = [zero_learner.evaluate(t, "base") for t in tasks]
    del zero_learner
    results: dict[str, Any] = {}
    t0 = time.time()
    with tqdm(total=len(args.methods) * len(tasks), desc=f"bench {args.stream}", unit="task") as bar:
        for m in args.methods:
            strategy = "treelora_paper" if m in ABLATIONS else m
            paper = PaperConfig(search=ABLATIONS.get(m, "lcb"))
            cfg = StreamConfig(strategy=strategy, train=replace(train), paper=paper)
            results[m] = run_method(m, cfg, base, tok, tasks, bar)
    methods: dict[str, Any] = {}
    for m, res in results.items():
        if m in ABLATIONS:
            continue
        if res["R_auto"] is not None:
            methods[m] = entry(res["R_auto"], res, res["routing_accuracy"])
            methods[f"{m}@task_id"] = entry(res["R"], res, None)
        else:
            methods[m] = entry(res["R"], res, None)
    name = "continual" if args.stream == "wordnet" else "continual-mixed"
    args.out.mkdir(parents=True, exist_ok=True)
    summary = {
        "stream": args.stream,
        "profile": args.profile,
        "model": args.model,
        "epochs": prof.epochs,
        "methods": methods,
    }
    (args.out / f"{name}.json").write_text(json.dumps(summary, indent=2) + "\n")
    details = {
        "tasks": [{"name": t.name, "metric": t.metric, "n_train": len(t.train), "n_test": len(t.test)} for t in tasks],
        "zero_shot": zero_shot,
        "profile": prof.__dict__,
        "seed": args.seed,
        "wall_seconds": round(time.time() - t0),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}",
        "ablations": {m: entry(results[m]["R"], results[m], None) for m in ABLATIONS if m in results},
        "runs": {
            m: {
                "R": r["R"],
                "R_auto": r["R_auto"],
                "fwt": summarize(r["R"], zero_shot)["fwt"],
                "per_task": [
                    {
                        "task": rep.name,
                        "seconds": round(rep.seconds, 1),
                        "epochs": rep.epochs_run,
                        "steps": rep.steps,
                        "val_losses": [round(v, 4) for v in rep.val_losses],
                        "placement": rep.placement,
                        "phase_seconds": rep.phase_seconds,
                    }
                    for rep in r["reports"]
                ],
            }
            for m, r in results.items()
        },
    }
    (args.out / f"{name}.details.json").write_text(json.dumps(details, indent=1) + "\n")
    from .bench_plot import plot

    plot(summary, details, args.out / f"{name}.png")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
