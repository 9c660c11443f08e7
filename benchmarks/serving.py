"""Serving benchmark over HTTP: this service against four baselines, in one run.

    python -m benchmarks.serving                     # -> docs/benchmarks/serving.json, serving.png
    python -m benchmarks.serving --profile smoke     # the pipeline in a few minutes (numbers mean little)

1. Runs the service (embedded mode) and teaches one stream 32 real WordNet tasks (random
   4-label supersense sets; reused from `--state` when already there), then downloads each task's
   path as a PEFT adapter.
2. For each system (`treelora` = this service, then `base`, `peft_switch`, `peft_mixed`,
   `merged_switch` from `benchmarks.serving_systems`), one at a time on the same machine: closed-loop
   clients (32 in the full profile) send greedy requests (one prompt each, 32 new tokens with EOS
   ignored) for 40 s, each to a task drawn from a mix of 1, 8 or 32 tasks; tokens/s and p50/p99
   latency are measured by the clients. The batching systems all use the service's batching policy.
3. Routing accuracy of `task: "auto"` (flat and tree) on every task's held-out prompts.
4. A load test: twice as many clients for 60 s on the 32-task mix, counting errors and sampling
   the service's memory (API and worker processes) every second.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import time
from pathlib import Path
from typing import Any

import httpx
from tqdm import tqdm

from api.settings import Settings
from benchmarks.serving_systems import SYSTEMS
from treelora_core.data import Task, load_wordnet, to_jsonl, wordnet_label_sets

ROOT = Path(__file__).resolve().parent.parent
PROFILES = {
    "full": {"tasks": 32, "clients": 32, "seconds": 40.0, "max_new_tokens": 32, "load_seconds": 60.0},
    "smoke": {"tasks": 8, "clients": 8, "seconds": 5.0, "max_new_tokens": 4, "load_seconds": 5.0},
}
STREAM = "serving-bench"


def start(args: list[str], env: dict[str, str], log: Path, url: str, timeout: float = 300) -> Any:
    import subprocess
    import sys

    proc = subprocess.Popen(
        [sys.executable, *args],
        cwd=ROOT,
        env={**os.environ, "HF_HUB_OFFLINE": "1", **env},
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{args} exited: see {log}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"{url} not ready after {timeout}s: see {log}")


def stop(proc: Any) -> None:
    import signal
    import subprocess

    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:  # still draining requests: a later run must not find it on its port
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=60)


def teach(base: str, tasks: list[Task]) -> None:
    """Create the stream and learn every task not learned yet (jobs run one after another)."""
    with httpx.Client(base_url=base, timeout=60) as c:
        if c.get(f"/v1/streams/{STREAM}").status_code == 404:
            c.post("/v1/streams", json={"name": STREAM, "train": {"epochs": 1, "max_length": 96}}).raise_for_status()
        have = {t["name"] for t in c.get(f"/v1/streams/{STREAM}/tasks?limit=100").json()["data"]}
        jobs = []
        for t in tasks:
            if t.name not in have:
                files = {"file": ("t.jsonl", to_jsonl(t.train)), "eval_file": ("e.jsonl", to_jsonl(t.test))}
                r = c.post(f"/v1/streams/{STREAM}/tasks", files=files, data={"name": t.name})
                r.raise_for_status()
                jobs.append(r.json()["job"]["id"])
        with tqdm(total=len(jobs), desc="learning tasks", unit="task") as bar:
            for j in jobs:
                while (state := c.get(f"/v1/jobs/{j}").json()["state"]) not in ("succeeded", "failed", "cancelled"):
                    time.sleep(1)
                if state != "succeeded":
                    raise RuntimeError(f"job {j}: {c.get(f'/v1/jobs/{j}').json()}")
                bar.update()


def export(base: str, tasks: list[Task], folder: Path) -> None:
    import io
    import tarfile

    folder.mkdir(parents=True, exist_ok=True)
    with httpx.Client(base_url=base, timeout=300) as c:
        for t in tqdm(tasks, desc="exporting PEFT adapters", unit="task"):
            if (folder / t.name / "adapter_config.json").exists():
                continue
            r = c.get(f"/v1/streams/{STREAM}/tasks/{t.name}/adapter")
            r.raise_for_status()
            with tarfile.open(fileobj=io.BytesIO(r.content)) as tar:
                tar.extractall(folder, filter="data")


async def load(
    url: str, mix: list[Task], *, clients: int, seconds: float, max_new_tokens: int, seed: int, body: dict[str, Any]
) -> dict[str, Any]:
    """Closed-loop clients for `seconds`: tokens/s, latency percentiles, errors."""
    rng = random.Random(seed)
    lat: list[float] = []
    tokens, errors = 0, 0
    end = time.perf_counter() + seconds

    async def client(c: httpx.AsyncClient) -> None:
        nonlocal tokens, errors
        while time.perf_counter() < end:
            task = rng.choice(mix)
            prompt = rng.choice(task.test).prompt
            t0 = time.perf_counter()
            try:
                r = await c.post(
                    url,
                    json={
                        "inputs": [prompt],
                        "task": task.name,
                        "max_new_tokens": max_new_tokens,
                        "ignore_eos": True,
                        **body,
                    },
                )
                r.raise_for_status()
                tokens += sum(p["tokens"] for p in r.json()["predictions"])
                lat.append(time.perf_counter() - t0)
            except httpx.HTTPError:
                errors += 1

    t0 = time.perf_counter()
    limits = httpx.Limits(max_connections=clients + 4)
    async with httpx.AsyncClient(timeout=600, limits=limits) as c:
        await asyncio.gather(*(client(c) for _ in range(clients)))
    wall = time.perf_counter() - t0
    q = statistics.quantiles(lat, n=100) if len(lat) > 1 else [lat[0] if lat else 0.0] * 99
    return {
        "tokens_per_s": round(tokens / wall, 2),
        "p50_ms": round(q[49] * 1000, 1),
        "p99_ms": round(q[98] * 1000, 1),
        "requests": len(lat),
        "errors": errors,
        "seconds": round(wall, 1),
    }


def routing_accuracy(base: str, tasks: list[Task]) -> dict[str, float]:
    out = {}
    with httpx.Client(base_url=base, timeout=600) as c:
        for routing in ("flat", "tree"):
            right = total = 0
            for t in tasks:
                prompts = [e.prompt for e in t.test]
                r = c.post(
                    f"/v1/streams/{STREAM}/predict",
                    json={"inputs": prompts, "task": "auto", "routing": routing, "max_new_tokens": 1},
                )
                r.raise_for_status()
                right += sum(p["task"] == t.name for p in r.json()["predictions"])
                total += len(prompts)
            out[routing] = round(100 * right / total, 1)
    return out


def rss_mb(pid: int) -> float:
    """Resident memory of a process and its children (the API is the serve process's child)."""
    total = 0.0
    for p in [pid, *_children(pid)]:
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) / 1024
        except OSError:
            pass
    return round(total, 1)


def _children(pid: int) -> list[int]:
    try:
        kids = [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []
    return kids + [g for k in kids for g in _children(k)]


async def load_test(url: str, tasks: list[Task], pid: int, *, clients: int, seconds: float) -> dict[str, Any]:
    samples: list[float] = []

    async def sample() -> None:
        while True:
            samples.append(rss_mb(pid))
            await asyncio.sleep(1)

    sampler = asyncio.create_task(sample())
    res = await load(url, tasks, clients=clients, seconds=seconds, max_new_tokens=8, seed=99, body={})
    sampler.cancel()
    return {
        **res,
        "clients": clients,
        "rss_mb_first": samples[0],
        "rss_mb_max": max(samples),
        "rss_mb_last": samples[-1],
        "rss_mb_samples": samples,
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", choices=PROFILES, default="full")
    ap.add_argument("--state", type=Path, default=ROOT / "runs" / "serving-bench", help="reused between runs")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks")
    ap.add_argument("--systems", nargs="*", default=["treelora", *SYSTEMS])
    ap.add_argument("--port", type=int, default=8190)
    args = ap.parse_args(argv)
    prof = PROFILES[args.profile]
    n, clients, secs, new = prof["tasks"], int(prof["clients"]), prof["seconds"], int(prof["max_new_tokens"])
    tasks = load_wordnet(n_tasks=int(n), n_train=32, n_test=8, seed=7, classes=wordnet_label_sets(int(n), seed=7))
    args.state.mkdir(parents=True, exist_ok=True)
    base = f"http://127.0.0.1:{args.port}"
    env = {"TREELORA_DATA_DIR": str(args.state / "var"), "TREELORA_MAX_EVAL_EXAMPLES": "4"}
    service = start(["-m", "api.serve", "--port", str(args.port)], env, args.state / "service.log", f"{base}/readyz")
    results: dict[str, Any] = {"model": "SmolLM2-135M-Instruct", "mixes": {}}
    try:
        teach(base, tasks)
        export(base, tasks, args.state / "adapters")
        mixes = [m for m in (1, 8, 32) if m <= len(tasks)]
        for system in args.systems:
            if system == "treelora":
                url, proc = f"{base}/v1/streams/{STREAM}/predict", None
            else:
                port = args.port + 1
                proc = start(
                    [
                        "-m",
                        "benchmarks.serving_systems",
                        "--system",
                        system,
                        "--adapters",
                        str(args.state / "adapters"),
                        "--port",
                        str(port),
                        "--window-ms",  # the service's batching policy, for every batching system alike
                        str(Settings().batch_window_ms),
                        "--max-wait-ms",
                        str(Settings().batch_max_wait_ms),
                        "--max-batch",
                        str(Settings().max_batch),
                    ],
                    {},
                    args.state / f"{system}.log",
                    f"http://127.0.0.1:{port}/healthz",
                )
                url = f"http://127.0.0.1:{port}/predict"
            try:
                asyncio.run(load(url, tasks[:1], clients=2, seconds=3, max_new_tokens=2, seed=0, body={}))  # warm up
                for m in mixes:
                    res = asyncio.run(
                        load(url, tasks[:m], clients=clients, seconds=secs, max_new_tokens=new, seed=m, body={})
                    )
                    results["mixes"].setdefault(str(m), {})[system] = res
                    tqdm.write(f"{system:>14} mix {m:>2}: {res}")
            finally:
                if proc is not None:
                    stop(proc)
        results["routing_accuracy"] = routing_accuracy(base, tasks)
        tqdm.write(f"routing accuracy: {results['routing_accuracy']}")
        results["load"] = asyncio.run(
            load_test(
                f"{base}/v1/streams/{STREAM}/predict",
                tasks,
                service.pid,
                clients=2 * clients,
                seconds=prof["load_seconds"],
            )
        )
        tqdm.write(f"load: { {k: v for k, v in results['load'].items() if k != 'rss_mb_samples'} }")
    finally:
        stop(service)
    results["setup"] = {
        "tasks": len(tasks),
        "clients": clients,
        "seconds": secs,
        "max_new_tokens": new,
        "ignore_eos": True,
        "batch_window_ms": Settings().batch_window_ms,
        "batch_max_wait_ms": Settings().batch_max_wait_ms,
        "max_batch": Settings().max_batch,
        "device": "cpu",
        "cpu_count": os.cpu_count(),
        "profile": args.profile,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    name = "serving" if args.profile == "full" else f"serving-{args.profile}"
    (args.out / f"{name}.json").write_text(json.dumps(results, indent=1))
    plot(results, args.out / f"{name}.png")
    tqdm.write(f"wrote {args.out / name}.json")


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    mixes = list(results["mixes"])
    systems = list(next(iter(results["mixes"].values())))
    fig, ax = plt.subplots(1, 2, figsize=(10, 3.6))
    width = 0.8 / len(systems)
    for i, s in enumerate(systems):
        xs = [j + i * width for j in range(len(mixes))]
        ax[0].bar(xs, [results["mixes"][m][s]["tokens_per_s"] for m in mixes], width, label=s)
        ax[1].bar(xs, [results["mixes"][m][s]["p99_ms"] for m in mixes], width, label=s)
    for a, title in zip(ax, ("throughput (tokens/s)", "p99 latency (ms)"), strict=True):
        a.set_xticks([j + 0.4 - width / 2 for j in range(len(mixes))], [f"{m} tasks" for m in mixes])
        a.set_title(title)
    ax[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
