"""A few-minute demo on real data: learn WordNet supersense tasks one after another with TreeLoRA.

    python -m examples.library_demo --tasks 3

Prints each task's placement in the tree, the accuracy matrix, routing without a task id, and
exports the last task's path as a PEFT adapter.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from tqdm import tqdm

from treelora_core import views
from treelora_core.config import StreamConfig, TrainConfig
from treelora_core.data import load_wordnet
from treelora_core.export import export_peft
from treelora_core.learner import ContinualLearner
from treelora_core.metrics import summarize


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", type=int, default=3)
    ap.add_argument("--train", type=int, default=96, help="training examples per task")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--model", default=None, help="HF causal LM path or name (default: SmolLM2-135M-Instruct)")
    ap.add_argument("--strategy", default="treelora")
    ap.add_argument("--export", type=Path, default=None, help="folder for the PEFT adapter of the last task")
    args = ap.parse_args(argv)
    tasks = load_wordnet(n_tasks=args.tasks, n_train=args.train, n_test=40)
    cfg = StreamConfig(strategy=args.strategy, train=TrainConfig(epochs=args.epochs, max_length=96))
    learner = ContinualLearner.from_pretrained(args.model, cfg)
    R: list[list[float]] = []
    for task in tasks:
        with tqdm(desc=task.name, unit="step") as bar:

            def progress(ev: dict, bar: tqdm = bar) -> None:
                if ev["phase"] == "train":
                    bar.total, bar.n = ev["total"], ev["step"]
                    bar.set_postfix(loss=f"{ev['loss']:.3f}")
                    bar.refresh()

            report = learner.learn(task, progress=progress)
        place = {k: v for k, v in report.placement.items() if k != "block_cosines"}
        tqdm.write(f"{task.name}: {report.seconds:.0f}s, {report.trainable_params} trainable params, {place}")
        R.append([learner.evaluate(t, "auto") for t in tasks[: len(R) + 1]])
        tqdm.write(f"  scores (auto routing): {[round(x, 1) for x in R[-1]]}")
    tqdm.write(json.dumps({k: (round(v, 2) if v is not None else None) for k, v in summarize(R).items()}))
    if learner.strategy.needs_task_id:
        for name in learner.task_names:
            segments = views.path_segments(learner, name)
            tqdm.write(
                f"path of {name}: " + " -> ".join(f"{'+'.join(s['adapters'])}[{s['lo']},{s['hi']})" for s in segments)
            )
    prompt = tasks[0].test[0].prompt
    pred = learner.predict([prompt], task="auto")[0]
    tqdm.write(f"predict(auto): {pred.text!r} via {pred.task} (confidence {pred.confidence})")
    out = args.export or Path(tempfile.mkdtemp(prefix="treelora-peft-"))
    export_peft(learner, learner.task_names[-1] if learner.strategy.needs_task_id else None, out)
    tqdm.write(f"PEFT adapter of {learner.task_names[-1]} written to {out}")


if __name__ == "__main__":
    main()
