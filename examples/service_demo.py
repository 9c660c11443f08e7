"""`python -m examples.service_demo [--url URL]`: three real WordNet tasks through a running service.

Creates a stream, uploads the tasks one after another as they would arrive, follows each job's
live events with a progress bar, then prints the tree, the accuracy matrix R and predictions
with a task id and with `auto` routing. Start the service first (`./scripts/serve`).
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import httpx
from tqdm import tqdm

from treelora_core.data import Task, load_wordnet, to_jsonl


def follow(client: httpx.Client, job_id: str, name: str) -> dict[str, Any]:
    """Read the job's SSE stream until it ends, drawing its training progress."""
    with (
        tqdm(desc=name, unit="step") as bar,
        client.stream(
            "GET", f"/v1/jobs/{job_id}/events", headers={"accept": "text/event-stream"}, timeout=None
        ) as resp,
    ):
        kind = ""
        for line in resp.iter_lines():
            if line.startswith("event: "):
                kind = line[7:]
            elif line.startswith("data: ") and kind == "progress":
                p = json.loads(line[6:])
                bar.set_postfix_str(p.get("phase", ""))
                if p.get("phase") == "train":
                    bar.total, bar.n = p["total"], p["step"]
                bar.refresh()
    job: dict[str, Any] = client.get(f"/v1/jobs/{job_id}").json()
    return job


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", default="http://127.0.0.1:8000")
    ap.add_argument("--stream", default=f"wordnet-demo-{int(time.time())}")
    ap.add_argument("--train", type=int, default=96, help="training examples per task")
    ap.add_argument("--epochs", type=int, default=2)
    args = ap.parse_args(argv)
    tasks: list[Task] = load_wordnet(n_tasks=3, n_train=args.train, n_test=40)
    t0 = time.perf_counter()
    with httpx.Client(base_url=args.url, timeout=120) as client:
        config = {"name": args.stream, "train": {"epochs": args.epochs, "max_length": 96}}
        resp = client.post("/v1/streams", json=config)
        resp.raise_for_status()
        for task in tasks:
            files = {"file": ("train.jsonl", to_jsonl(task.train)), "eval_file": ("eval.jsonl", to_jsonl(task.test))}
            sub = client.post(f"/v1/streams/{args.stream}/tasks", files=files, data={"name": task.name})
            sub.raise_for_status()
            job = follow(client, sub.json()["job"]["id"], task.name)
            if job["state"] != "succeeded":
                raise SystemExit(f"{task.name}: {job['state']} {job.get('error')}")
            place = {k: v for k, v in job["report"]["placement"].items() if k != "block_cosines"}
            tqdm.write(f"{task.name}: {job['report']['seconds']}s, placement {place}")
        tree = client.get(f"/v1/streams/{args.stream}/tree").json()
        for n in tree["nodes"]:
            tqdm.write(f"node {n['id']} blocks [{n['lo']}, {n['hi']}) members {n['members']}")
        ev = client.get(f"/v1/streams/{args.stream}/evaluations").json()
        tqdm.write(f"R = {ev['R']}\nOP {ev['op']}  BWT {ev['bwt']}  forgetting {ev['forgetting']}")
        prompt = tasks[0].test[0].prompt
        for task_id in (tasks[0].name, "auto"):
            out = client.post(f"/v1/streams/{args.stream}/predict", json={"inputs": [prompt], "task": task_id}).json()
            p = out["predictions"][0]
            tqdm.write(f"predict(task={task_id}): {p['output']!r} via {p['task']} (confidence {p['confidence']})")
    tqdm.write(f"three tasks learned, evaluated and served in {time.perf_counter() - t0:.0f}s")


if __name__ == "__main__":
    main()
