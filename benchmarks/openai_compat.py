"""The OpenAI-compatible routes on the real model (SmolLM2-135M-Instruct, CPU), over HTTP:

    python -m benchmarks.openai_compat            # -> docs/benchmarks/openai-compat.json

1. Runs the service (embedded mode) and teaches one stream two small real WordNet tasks (reused
   from `--state` when already there).
2. Time to first streamed token: a streamed greedy `/v1/completions` request, one at a time, timed
   to its first chunk; against the same request unstreamed through `predict` with
   `max_new_tokens` 2 (prefill and one decoding step) and 1 (prefill alone). Rounds interleave the
   three, so load on the machine hits all of them alike; medians and their ratio.
3. Throughput: closed-loop clients send greedy requests for a task drawn from the stream's tasks,
   in alternating phases to `/v1/completions` and to `predict` (same prompts, same max tokens);
   tokens/s per phase, and the ratio of the medians over phases.
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

from benchmarks.serving import ROOT, start, stop, teach
from treelora_core.data import load_wordnet, wordnet_label_sets

STREAM = "serving-bench"  # benchmarks.serving.teach's stream


def ttft_round(c: httpx.Client, task: str, prompt: str, max_tokens: int) -> dict[str, float]:
    body = {"model": f"{STREAM}:{task}", "prompt": prompt, "max_tokens": max_tokens, "temperature": 0}
    t0 = time.perf_counter()
    first = None
    with c.stream("POST", "/v1/completions", json={**body, "stream": True}) as resp:
        resp.raise_for_status()
        for line in resp.iter_lines():
            if line.startswith("data: ") and first is None:
                first = time.perf_counter() - t0
    out = {"ttft_s": first if first is not None else float("nan"), "stream_total_s": time.perf_counter() - t0}
    for n, key in ((2, "prefill_step_s"), (1, "prefill_s")):
        t0 = time.perf_counter()
        r = c.post(f"/v1/streams/{STREAM}/predict", json={"inputs": [prompt], "task": task, "max_new_tokens": n})
        r.raise_for_status()
        out[key] = time.perf_counter() - t0
    return out


async def phase(
    base: str, route: str, work: list[tuple[str, str]], clients: int, seconds: float, new: int
) -> dict[str, Any]:
    rng = random.Random(len(route) + clients)
    tokens, lat = 0, []
    end = time.perf_counter() + seconds

    async def client(c: httpx.AsyncClient) -> None:
        nonlocal tokens
        while time.perf_counter() < end:
            task, prompt = rng.choice(work)
            t0 = time.perf_counter()
            if route == "openai":
                body = {"model": f"{STREAM}:{task}", "prompt": prompt, "max_tokens": new, "temperature": 0}
                r = await c.post("/v1/completions", json=body)
                r.raise_for_status()
                tokens += r.json()["usage"]["completion_tokens"]
            else:
                body = {"inputs": [prompt], "task": task, "max_new_tokens": new}
                r = await c.post(f"/v1/streams/{STREAM}/predict", json=body)
                r.raise_for_status()
                tokens += sum(p["tokens"] for p in r.json()["predictions"])
            lat.append(time.perf_counter() - t0)

    t0 = time.perf_counter()
    async with httpx.AsyncClient(base_url=base, timeout=600) as c:
        await asyncio.gather(*(client(c) for _ in range(clients)))
    wall = time.perf_counter() - t0
    return {
        "route": route,
        "tokens_per_s": round(tokens / wall, 2),
        "requests": len(lat),
        "p50_s": statistics.median(lat),
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--state", type=Path, default=ROOT / "runs" / "openai-compat", help="reused between runs")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks" / "openai-compat.json")
    ap.add_argument("--port", type=int, default=8192)
    ap.add_argument("--url", help="measure a running service whose stream has learned some of the tasks")
    ap.add_argument("--tasks", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=15, help="time-to-first-token rounds")
    ap.add_argument("--phases", type=int, default=3, help="throughput phases per route")
    ap.add_argument("--seconds", type=float, default=8.0, help="per throughput phase")
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--max-tokens", type=int, default=8)
    args = ap.parse_args(argv)
    tasks = load_wordnet(
        n_tasks=args.tasks, n_train=16, n_test=8, seed=7, classes=wordnet_label_sets(args.tasks, seed=7)
    )
    args.state.mkdir(parents=True, exist_ok=True)
    base = args.url or f"http://127.0.0.1:{args.port}"
    env = {"TREELORA_DATA_DIR": str(args.state / "var"), "TREELORA_MAX_EVAL_EXAMPLES": "4"}
    service = None
    if args.url is None:
        service = start(
            ["-m", "api.serve", "--port", str(args.port)], env, args.state / "service.log", f"{base}/readyz"
        )
    try:
        if service is not None:
            teach(base, tasks)
        learned = httpx.get(f"{base}/v1/models", timeout=60).json()["data"]
        names = {m["treelora"]["task"] for m in learned if m["treelora"]["stream"] and m["id"].startswith(STREAM)}
        tasks = [t for t in tasks if t.name in names]
        work = [(t.name, e.prompt) for t in tasks for e in t.test]
        with httpx.Client(base_url=base, timeout=600) as c:
            ttft_round(c, *work[0], max_tokens=args.max_tokens)  # warm up: adapters loaded, model touched
            rounds = [ttft_round(c, *work[k % len(work)], max_tokens=args.max_tokens) for k in range(args.rounds)]
        med = {k: statistics.median(r[k] for r in rounds) for k in rounds[0]}
        ttft = {
            **{f"median_{k}": round(v, 4) for k, v in med.items()},
            "ratio_ttft_to_prefill_step": round(med["ttft_s"] / med["prefill_step_s"], 3),
            "ratio_ttft_to_prefill": round(med["ttft_s"] / med["prefill_s"], 3),
            "rounds": rounds,
        }
        print(f"time to first token: {json.dumps({k: v for k, v in ttft.items() if k != 'rounds'})}")
        phases = []
        for k in range(args.phases):
            for route in ("openai", "predict") if k % 2 == 0 else ("predict", "openai"):
                res = asyncio.run(phase(base, route, work, args.clients, args.seconds, args.max_tokens))
                phases.append(res)
                print(f"throughput phase {k} {route}: {res}")
        tps = {
            r: statistics.median(p["tokens_per_s"] for p in phases if p["route"] == r) for r in ("openai", "predict")
        }
        throughput = {
            "median_tokens_per_s": tps,
            "ratio_openai_to_predict": round(tps["openai"] / tps["predict"], 3),
            "phases": phases,
        }
        print(f"throughput: {json.dumps({k: v for k, v in throughput.items() if k != 'phases'})}")
    finally:
        if service is not None:
            stop(service)
    out = {
        "model": "SmolLM2-135M-Instruct",
        "device": "cpu",
        "cpu_count": os.cpu_count(),
        "setup": {k: v for k, v in vars(args).items() if k not in ("state", "out", "url")}
        | {"tasks_served": len(tasks)},
        "time_to_first_token": ttft,
        "throughput": throughput,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
