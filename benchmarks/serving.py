"""Serving benchmark over HTTP: this service against four baselines, in one run.

    python -m benchmarks.serving                     # -> docs/benchmarks/serving.json, serving.png
    python -m benchmarks.serving --profile smoke     # the pipeline in a few minutes (numbers mean little)

1. Runs the service (embedded mode, step-level batching) and teaches one stream 32 real WordNet
   tasks (random 4-label supersense sets; reused from `--state` when already there), downloads each
   task's path as a PEFT adapter, and registers a second stream of 1,000 tasks with random adapters
   of the real shapes (`benchmarks.many_tasks`).
2. Starts every system at once, each in its own process: `treelora` (this service), `base`,
   `peft_switch`, `peft_mixed`, `merged_switch` (`benchmarks.serving_systems`, the service's
   batching policy) and `treelora_request_level` (this service with request-level batching).
3. Cells, `--repeats` times with the systems' order rotated each time, closed-loop clients (32 in
   the full profile) sending greedy requests (one prompt, EOS ignored) for `seconds` each:
   - mixes of 1, 8 and 32 learned tasks, 32 new tokens, every system but the request-level one;
   - mixes of 10, 100 and 1,000 tasks of the random stream, 32 new tokens, `treelora`, with the
     adapter pool's hits, misses, cold-load time and the service's memory;
   - `mixed_lengths`: half the requests ask for 4 tokens (a short label), half for 32 to 64,
     on the 32-task mix: `treelora` (step-level) against `treelora_request_level`.
   Each figure is the median over the repeats, with the smallest and largest beside it.
4. Routing accuracy of `task: "auto"` (flat and tree) on every learned task's held-out prompts,
   and the router's own cost per request with 32 and with 1,000 tasks.
5. A load test: twice as many clients for 60 s on the 32-task mix, counting errors and sampling
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
PROFILES: dict[str, dict[str, Any]] = {
    "full": {
        "tasks": 32,
        "clients": 32,
        "seconds": 20.0,
        "max_new_tokens": 32,
        "load_seconds": 60.0,
        "repeats": 3,
        "many": 1000,
        "pool_bytes": 1 << 30,
    },
    "smoke": {
        "tasks": 8,
        "clients": 8,
        "seconds": 3.0,
        "max_new_tokens": 4,
        "load_seconds": 3.0,
        "repeats": 1,
        "many": 20,
        "pool_bytes": 1 << 28,
    },
}
STREAM = "serving-bench"
# the service under other schedules (settings), compared with `treelora` on mixed answer lengths
SCHEDULES = {
    "treelora_request_level": {"TREELORA_BATCHING": "request"},
    "treelora_prefill_64": {"TREELORA_PREFILL_TOKENS_PER_STEP": "64"},
    "treelora_prefill_256": {"TREELORA_PREFILL_TOKENS_PER_STEP": "256"},
}
CELLS = ("mixes", "many", "mixed_lengths")


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
    url: str,
    mix: list[str],
    prompts: list[str],
    *,
    clients: int,
    seconds: float,
    max_new_tokens: int | tuple[int, ...],
    seed: int,
    body: dict[str, Any],
) -> dict[str, Any]:
    """Closed-loop clients for `seconds`, each request on a task drawn from `mix` with a prompt
    from `prompts` and `max_new_tokens` (or one drawn from the tuple): tokens/s, latency
    percentiles, errors."""
    rng = random.Random(seed)
    lat: list[float] = []
    tokens, errors = 0, 0
    end = time.perf_counter() + seconds
    lengths = (max_new_tokens,) if isinstance(max_new_tokens, int) else max_new_tokens

    async def client(c: httpx.AsyncClient) -> None:
        nonlocal tokens, errors
        while time.perf_counter() < end:
            task, prompt, new = rng.choice(mix), rng.choice(prompts), rng.choice(lengths)
            t0 = time.perf_counter()
            try:
                r = await c.post(
                    url,
                    json={"inputs": [prompt], "task": task, "max_new_tokens": new, "ignore_eos": True, **body},
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


def medians(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """A cell's figures over its repeats: the median of each, with its smallest and largest."""
    out: dict[str, Any] = {}
    for k in ("tokens_per_s", "p50_ms", "p99_ms"):
        vals = [r[k] for r in runs]
        out[k] = round(statistics.median(vals), 2)
        out[f"{k}_range"] = [min(vals), max(vals)]
    out["errors"] = sum(r["errors"] for r in runs)
    out["runs"] = runs
    return out


def metrics(base: str) -> dict[str, float]:
    """The service's Prometheus gauges named `treelora_*` (adapter pool, batches)."""
    out = {}
    for line in httpx.get(f"{base}/metrics", timeout=30).text.splitlines():
        if line.startswith("treelora_adapter") or line.startswith("treelora_batch"):
            name, value = line.rsplit(" ", 1)
            out[name.removeprefix("treelora_")] = float(value)
    return out


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
    res = await load(
        url,
        [t.name for t in tasks],
        test_prompts(tasks),
        clients=clients,
        seconds=seconds,
        max_new_tokens=8,
        seed=99,
        body={},
    )
    sampler.cancel()
    return {
        **res,
        "clients": clients,
        "rss_mb_first": samples[0],
        "rss_mb_max": max(samples),
        "rss_mb_last": samples[-1],
        "rss_mb_samples": samples,
    }


def test_prompts(tasks: list[Task]) -> list[str]:
    return [e.prompt for t in tasks for e in t.test]


def start_systems(args: argparse.Namespace, base_port: int, systems: list[str], env: dict[str, str]) -> dict[str, Any]:
    """Every system but `treelora` in its own process: name -> (url, process)."""
    out = {}
    s = Settings()
    for k, system in enumerate(systems):
        port = base_port + 1 + k
        if system in SCHEDULES:  # the same service and data, another schedule
            cmd = ["-m", "api.serve", "--port", str(port), "--no-worker"]
            proc = start(
                cmd,
                {**env, **SCHEDULES[system]},
                args.state / f"{system}.log",
                f"http://127.0.0.1:{port}/readyz",
            )
            out[system] = (f"http://127.0.0.1:{port}/v1/streams/{STREAM}/predict", proc)
            continue
        cmd = ["-m", "benchmarks.serving_systems", "--system", system, "--adapters", str(args.state / "adapters")]
        cmd += ["--port", str(port), "--window-ms", str(s.batch_window_ms), "--max-wait-ms", str(s.batch_max_wait_ms)]
        cmd += ["--max-batch", str(s.max_batch)]  # the service's batching policy, for every system alike
        proc = start(cmd, {}, args.state / f"{system}.log", f"http://127.0.0.1:{port}/healthz")
        out[system] = (f"http://127.0.0.1:{port}/predict", proc)
    return out


def router_cost(data_dir: Path, stream: str, rows: tuple[int, ...] = (1, 32)) -> dict[str, float]:
    """Milliseconds the stream's router takes to route `rows` embeddings (flat), median of 20:
    the part of a `task: "auto"` request that grows with the number of tasks."""
    import torch

    from api.db import session_factory
    from api.models import Stream
    from api.services.trees import get_version
    from api.storage import make_store
    from treelora_core.persist import router_from_parts

    settings = Settings(data_dir=data_dir)
    with session_factory(settings.db_url)() as session:
        st = session.query(Stream).filter(Stream.name == stream).one()
        tv = get_version(session=session, stream=st)
        assert tv is not None
    router = router_from_parts(tv.manifest, make_store(settings).get)
    out = {"tasks": float(len(router.names))}
    width = router.means[0].shape[0]
    for n in rows:
        emb = torch.randn(n, width)
        router.route(emb)  # warm
        times = []
        for _ in range(20):
            t0 = time.perf_counter()
            router.route(emb)
            times.append(time.perf_counter() - t0)
        out[f"ms_{n}_rows"] = round(1000 * statistics.median(times), 2)
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", choices=PROFILES, default="full")
    ap.add_argument("--state", type=Path, default=ROOT / "runs" / "serving-bench", help="reused between runs")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks")
    ap.add_argument("--systems", nargs="*", default=["treelora", *SYSTEMS])
    ap.add_argument("--repeats", type=int, default=None, help="default: the profile's")
    ap.add_argument("--port", type=int, default=8190)
    ap.add_argument(
        "--cells",
        nargs="*",
        choices=CELLS,
        default=list(CELLS),
        help="run only these cells and update them in the existing JSON (routing and the load test run with mixes)",
    )
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(1)  # this process only registers tasks and times the router: the services compute
    prof = PROFILES[args.profile]
    n, clients, secs, new = prof["tasks"], int(prof["clients"]), prof["seconds"], int(prof["max_new_tokens"])
    repeats = int(args.repeats or prof["repeats"])
    many = int(prof["many"])
    tasks = load_wordnet(n_tasks=int(n), n_train=32, n_test=8, seed=7, classes=wordnet_label_sets(int(n), seed=7))
    prompts = test_prompts(tasks)
    args.state.mkdir(parents=True, exist_ok=True)
    data_dir = args.state / "var"
    many_stream = f"many-{many}"
    marker = args.state / f"{many_stream}.registered"
    if not marker.exists():  # before the service starts: one writer to the embedded database
        from api.migrate import upgrade
        from api.storage import make_store
        from benchmarks.many_tasks import register

        settings = Settings(data_dir=data_dir)
        data_dir.mkdir(parents=True, exist_ok=True)
        upgrade(settings.db_url)
        t0 = time.perf_counter()
        register(settings, make_store(settings), many_stream, many)
        marker.write_text(f"{time.perf_counter() - t0:.1f} s\n")
    base = f"http://127.0.0.1:{args.port}"
    # the pool holds the 1,000-task working set (about 0.65 GB of adapters): see docs/benchmarks.md
    env = {
        "TREELORA_DATA_DIR": str(data_dir),
        "TREELORA_MAX_EVAL_EXAMPLES": "4",
        "TREELORA_ADAPTER_CACHE_BYTES": str(prof["pool_bytes"]),
    }
    service = start(["-m", "api.serve", "--port", str(args.port)], env, args.state / "service.log", f"{base}/readyz")
    results: dict[str, Any] = {"model": "SmolLM2-135M-Instruct", "mixes": {}}
    others: dict[str, Any] = {}
    try:
        teach(base, tasks)
        export(base, tasks, args.state / "adapters")
        baselines = [s for s in args.systems if s != "treelora"] if "mixes" in args.cells else []
        schedules = list(SCHEDULES) if "mixed_lengths" in args.cells else []
        others = start_systems(args, args.port, baselines + schedules, env)
        urls = {"treelora": f"{base}/v1/streams/{STREAM}/predict", **{k: u for k, (u, _) in others.items()}}
        names = [t.name for t in tasks]
        for url in urls.values():  # warm up
            asyncio.run(load(url, names[:1], prompts, clients=2, seconds=3, max_new_tokens=2, seed=0, body={}))
        many_url = f"{base}/v1/streams/{many_stream}/predict"  # its version loaded once, not in a cell
        asyncio.run(load(many_url, ["t0000"], prompts, clients=1, seconds=1, max_new_tokens=1, seed=0, body={}))
        runs: dict[str, dict[str, list[dict[str, Any]]]] = {}

        def cell(
            mix: str, system: str, url: str, task_names: list[str], lengths: int | tuple[int, ...], seed: int
        ) -> None:
            before = metrics(base) if system == "treelora" else {}
            rss: list[float] = []

            async def measured() -> dict[str, Any]:
                async def sample() -> None:
                    while True:
                        rss.append(rss_mb(service.pid))
                        await asyncio.sleep(1)

                sampler = asyncio.create_task(sample())
                res = await load(
                    url, task_names, prompts, clients=clients, seconds=secs, max_new_tokens=lengths, seed=seed, body={}
                )
                sampler.cancel()
                return res

            res = asyncio.run(measured())
            if system == "treelora":
                after = metrics(base)
                d = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in after}
                looked = d.get("adapter_cache_hits", 0) + d.get("adapter_cache_misses", 0)
                res["pool_hit_rate"] = round(d.get("adapter_cache_hits", 0) / looked, 4) if looked else None
                res["cold_loads"] = int(d.get("adapter_cache_misses", 0))
                res["cold_load_ms_mean"] = (
                    round(1000 * d["adapter_load_seconds"] / res["cold_loads"], 2) if res["cold_loads"] else None
                )
                res["pool_bytes"] = after.get("adapter_cache_bytes")
                res["rss_mb_max"] = max(rss) if rss else None
            runs.setdefault(mix, {}).setdefault(system, []).append(res)
            tqdm.write(f"{system:>22} mix {mix:>13}: { {k: v for k, v in res.items() if k != 'runs'} }")

        systems = [s for s in args.systems if s in urls]
        many_names = [f"t{k:04d}" for k in range(many)]
        mixes = [m for m in (1, 8, 32) if m <= len(tasks)]
        scheduled = ["treelora", *SCHEDULES]
        for rep in range(repeats):
            order = systems[rep % len(systems) :] + systems[: rep % len(systems)]
            for m in mixes if "mixes" in args.cells else []:
                for system in order:
                    cell(str(m), system, urls[system], names[:m], new, seed=100 * rep + m)
            for m in (10, 100, 1000) if "many" in args.cells else ():
                if m <= many:
                    cell(str(m), "treelora", many_url, many_names[:m], new, seed=100 * rep + m)
            for system in scheduled[rep % 4 :] + scheduled[: rep % 4] if "mixed_lengths" in args.cells else []:
                lengths = (4,) * 33 + tuple(range(32, 65))  # half 4 tokens, half 32..64
                cell("mixed_lengths", system, urls[system], names, lengths, seed=100 * rep + 7)
        if set(args.cells) != set(CELLS):  # update these cells in the committed results
            name = "serving" if args.profile == "full" else f"serving-{args.profile}"
            results = {**json.loads((args.out / f"{name}.json").read_text()), "model": results["model"]}
        for mix, cells in runs.items():
            results["mixes"][mix] = {system: medians(rs) for system, rs in cells.items()}
        if "mixes" in args.cells:  # routing, the router's cost and the load test go with the full cells
            results["routing_accuracy"] = routing_accuracy(base, tasks)
            tqdm.write(f"routing accuracy: {results['routing_accuracy']}")
            results["router_ms"] = {"32": router_cost(data_dir, STREAM), str(many): router_cost(data_dir, many_stream)}
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
        for _, proc in others.values():
            stop(proc)
        stop(service)
    results["setup"] = {
        "tasks": len(tasks),
        "many_tasks": many,
        "many_tasks_registration": marker.read_text().strip(),
        "clients": clients,
        "seconds": secs,
        "repeats": repeats,
        "max_new_tokens": new,
        "mixed_lengths": "half 4 tokens, half uniform in 32..64",
        "ignore_eos": True,
        "batching": "step (treelora), request (the baselines and treelora_request_level)",
        "schedules": SCHEDULES,
        "batch_window_ms": Settings().batch_window_ms,
        "batch_max_wait_ms": Settings().batch_max_wait_ms,
        "max_batch": Settings().max_batch,
        "adapter_cache_bytes": prof["pool_bytes"],
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

    mixes = [m for m in ("1", "8", "32") if m in results["mixes"]]
    systems = list(results["mixes"][mixes[0]])
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
