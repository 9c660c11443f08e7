"""Evaluation with and without the shared prompt prefix (`treelora_core.prompt_prefix`), side by
side in one process: the seconds to generate every test answer of a stream, and whether the
answers are the same.

    python -m benchmarks.prompt_prefix                                          # WordNet
    python -m benchmarks.prompt_prefix --trace-root ../shared/data/trace-500   # and the mixed stream

Per stream: `per_task_lora` learns the first task (the quick profile's data and settings, one
epoch), then every test set is scored on that task's path `--repeats` times each way, the order
of the two ways alternating from test set to test set, after one untimed warm-up evaluation.
Writes `docs/benchmarks/prompt-prefix.json`; `python -m benchmarks.report` puts it in the doc.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path
from typing import Any

import torch

from treelora_core.batching import generation_batches
from treelora_core.learner import ContinualLearner
from treelora_core.models import load_base
from treelora_core.prompt_prefix import shared_length

from .continual import PROFILES, _machine, load_stream, method_config


def prompt_tokens(learner: ContinualLearner, prompts: list[str], budget: int, share: bool) -> int:
    """Prompt positions the model runs at prefill (padding included), as `generate` batches them."""
    enc = [learner.fmt.encode_prompt(p, budget) for p in prompts]
    total = 0
    for rows in generation_batches(enc, [{}] * len(enc), 32):
        seqs = [enc[k] for k in rows]
        shared = shared_length(seqs) if share else 0
        total += shared + len(rows) * (max(len(s) for s in seqs) - shared)
    return total


def measure(stream: str, trace_root: Path, repeats: int, seed: int) -> dict[str, Any]:
    profile = PROFILES[(stream, "quick")]
    tasks = load_stream(stream, profile, trace_root)
    base, tok = load_base(None)
    cfg = method_config("per_task_lora", profile, seed)
    cfg.train.epochs = 1
    learner = ContinualLearner(copy.deepcopy(base), tok, cfg)
    learner.learn(tasks[0])
    path = learner.path_for(tasks[0].name)
    rows: list[dict[str, Any]] = []
    learner.generate([e.prompt for e in tasks[0].test], [path] * len(tasks[0].test), max_new_tokens=4)  # warm-up
    for i, task in enumerate(tasks):
        prompts = [e.prompt for e in task.test]
        budget = learner.answer_budget(task)
        seconds: dict[bool, list[float]] = {True: [], False: []}
        answers: dict[bool, list[str]] = {}
        for _ in range(repeats):
            for share in (True, False) if i % 2 == 0 else (False, True):
                t0 = time.perf_counter()
                paths = [path] * len(prompts)
                answers[share] = learner.generate(prompts, paths, max_new_tokens=budget, share_prefix=share)
                seconds[share].append(time.perf_counter() - t0)
        rows.append(
            {
                "task": task.name,
                "prompts": len(prompts),
                "max_new_tokens": budget,
                "seconds_shared": round(min(seconds[True]), 2),
                "seconds_plain": round(min(seconds[False]), 2),
                "prefill_positions_shared": prompt_tokens(learner, prompts, budget, True),
                "prefill_positions_plain": prompt_tokens(learner, prompts, budget, False),
                "same_answers": sum(a == b for a, b in zip(answers[True], answers[False], strict=True)),
            }
        )
        print(stream, rows[-1], flush=True)
    shared = sum(float(r["seconds_shared"]) for r in rows)
    plain = sum(float(r["seconds_plain"]) for r in rows)
    return {
        "tasks": rows,
        "seconds_shared": round(shared, 2),
        "seconds_plain": round(plain, 2),
        "ratio": round(shared / plain, 3),
        "same_answers": sum(r["same_answers"] for r in rows),
        "answers": sum(r["prompts"] for r in rows),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trace-root", type=Path, default=None, help="TRACE-500 folder: also run the mixed stream")
    p.add_argument("--repeats", type=int, default=2, help="timed evaluations per test set and way (the fastest counts)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=Path("docs/benchmarks"))
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    streams = {"wordnet": measure("wordnet", Path("."), args.repeats, args.seed)}
    if args.trace_root is not None:
        streams["mixed"] = measure("mixed", args.trace_root, args.repeats, args.seed)
    out = {"machine": _machine(), "repeats": args.repeats, "seed": args.seed, "streams": streams}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "prompt-prefix.json").write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
