"""Reliability under load, over HTTP against a real uvicorn process on PostgreSQL:

    python -m benchmarks.reliability_load --database-url postgresql+psycopg://USER@HOST:PORT/DB
                                         # -> docs/reliability-load.json

1. A stream on a tiny random Llama (SmolLM2's tokenizer, 4 blocks of width 64: built here, no
   download) learns one task in this process (`worker.runner.run_job`); a second task stays
   queued (no worker runs), so its job's event stream stays open.
2. Poison: `--clients` (32) well-formed clients send predicts (one input, 2 new tokens) and reads
   (stream, tree, job) back to back for `--seconds` (30), while one more client sends a malformed
   or hostile request every 0.5 s (out-of-range seed and temperature, lone surrogates, bad JSON,
   missing and mistyped fields). Counted: errors of the well-formed clients (target 0) and the
   status of every poison answer (4xx expected, never 5xx).
3. Listeners: `--predict-clients` (4) clients send predicts for `--listen-seconds` (15) without
   listeners, then again with 64 SSE listeners open on the queued job. Counted: pool timeouts in
   the API's log (target 0), database connections busy while they listen, predict p99 with and
   without them (target: within 1.5x), and whether every listener sees the job's end (it is
   cancelled at the end).

The database named by `--database-url` is only used to create (and drop at the end) a fresh one
beside it. The figures depend on the machine: `machine` in the JSON records its CPU count and
load average at the start and the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from api.db import busy_connections, create_database, drop_database
from api.migrate import upgrade
from api.settings import Settings
from benchmarks.serving import ROOT, start, stop

PROMPT = "Item {i} of the list: what is it?"
ROWS = [{"prompt": PROMPT.format(i=i), "completion": "apple"} for i in range(30)]
PREDICT = {"inputs": [PROMPT.format(i=3)], "task": "apple", "max_new_tokens": 2}
SCORE = {"inputs": [PROMPT.format(i=3)], "choices": ["apple", "plum"], "task": "apple"}
# (path under the stream, raw body): each one is refused with a 4xx before it can join a batch
POISON: list[tuple[str, bytes]] = [
    ("predict", json.dumps({**PREDICT, "do_sample": True, "seed": 2**64}).encode()),
    ("predict", json.dumps({**PREDICT, "do_sample": True, "temperature": 1e-40}).encode()),
    ("predict", json.dumps({**PREDICT, "inputs": [PROMPT.format(i=1), "\ud800"]}).encode()),
    ("score", json.dumps({**SCORE, "choices": ["apple", "\udfff"]}).encode()),
    ("predict", b'{"inputs": ["unterminated'),
    ("predict", json.dumps({"task": "apple"}).encode()),
    ("predict", json.dumps({**PREDICT, "max_new_tokens": 10**30}).encode()),
    ("predict", json.dumps({**PREDICT, "inputs": "not a list"}).encode()),
    ("predict", b'{"inputs": ["x"], "top_p": NaN}'),
    ("score", json.dumps({**SCORE, "choices": []}).encode()),
]
JSON_HEADERS = {"content-type": "application/json"}


def tiny_model(folder: Path) -> Path:
    """A tiny random Llama with SmolLM2's tokenizer (packaged, offline): a job trains in seconds."""
    from transformers import AutoTokenizer

    from treelora_core.models import smollm2_dir, tiny_llama

    tok = AutoTokenizer.from_pretrained(str(smollm2_dir()))
    tiny_llama(tok).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return round(values[min(len(values) - 1, int(q * len(values)))], 4)


def prepare(settings: Settings) -> tuple[str, str]:
    """Stream `s` learns task `apple` (in this process); task `pear` stays queued -> (job ids)."""
    from fastapi.testclient import TestClient

    from api.main import create_app
    from worker.runner import run_job

    rows = "".join(json.dumps(r) + "\n" for r in ROWS).encode()
    pears = rows.replace(b'"apple"', b'"pear"')
    with TestClient(create_app(settings)) as c:
        train = {"epochs": 1, "batch_size": 4, "max_length": 48, "lr": 5e-3}
        tree = {"min_own_blocks": 2, "max_pulls": 2, "probe_batch": 4}
        c.post("/v1/streams", json={"name": "s", "base_model": "tiny", "train": train, "tree": tree}).raise_for_status()
        learned = c.post("/v1/streams/s/tasks", files={"file": ("t", rows, "x")}, data={"name": "apple"})
        learned.raise_for_status()
        job = learned.json()["job"]["id"]
        if run_job(job, settings) != "done" or c.get(f"/v1/jobs/{job}").json()["state"] != "succeeded":
            raise RuntimeError(f"training failed: {c.get(f'/v1/jobs/{job}').json()}")
        queued = c.post("/v1/streams/s/tasks", files={"file": ("t", pears, "x")}, data={"name": "pear"})
        queued.raise_for_status()
        return job, queued.json()["job"]["id"]


async def well_formed(c: httpx.AsyncClient, k: int, end: float, job: str, out: dict[str, Any]) -> None:
    """predict, then a read (stream, tree, job in turn), back to back until `end`."""
    reads = ["/v1/streams/s", "/v1/streams/s/tree", f"/v1/jobs/{job}"]
    i = k
    while time.perf_counter() < end:
        for method, path, body in (("POST", "/v1/streams/s/predict", PREDICT), ("GET", reads[i % 3], None)):
            t0 = time.perf_counter()
            try:
                r = await c.request(method, path, json=body)
                ok = r.status_code == 200
                why = f"{r.status_code} {r.text[:200]}"
            except httpx.HTTPError as exc:
                ok, why = False, f"{type(exc).__name__}: {exc}"
            out["requests"] += 1
            if method == "POST":
                out["predict_latency"].append(time.perf_counter() - t0)
            if not ok:
                out["errors"].append(why)
        i += 1


async def poisoner(c: httpx.AsyncClient, end: float, out: dict[str, Any]) -> None:
    i = 0
    while time.perf_counter() < end:
        path, body = POISON[i % len(POISON)]
        try:
            r = await c.post(f"/v1/streams/s/{path}", content=body, headers=JSON_HEADERS)
            status = str(r.status_code)
        except httpx.HTTPError as exc:
            status = type(exc).__name__
        out[status] = out.get(status, 0) + 1
        i += 1
        await asyncio.sleep(0.5)


async def poison_run(base: str, job: str, clients: int, seconds: float) -> dict[str, Any]:
    good: dict[str, Any] = {"requests": 0, "errors": [], "predict_latency": []}
    poison: dict[str, int] = {}
    limits = httpx.Limits(max_connections=clients + 8, max_keepalive_connections=clients + 8)
    async with httpx.AsyncClient(base_url=base, timeout=60, limits=limits) as c:
        end = time.perf_counter() + seconds
        await asyncio.gather(poisoner(c, end, poison), *(well_formed(c, k, end, job, good) for k in range(clients)))
    lat = good.pop("predict_latency")
    return {
        "well_formed_clients": clients,
        "seconds": seconds,
        "well_formed_requests": good["requests"],
        "well_formed_errors": len(good["errors"]),
        "error_samples": good["errors"][:5],
        "predict_p50_s": percentile(lat, 0.5),
        "predict_p99_s": percentile(lat, 0.99),
        "poison_requests": sum(poison.values()),
        "poison_status": dict(sorted(poison.items())),
        "poison_5xx": sum(n for s, n in poison.items() if s.startswith("5")),
    }


async def predict_load(base: str, clients: int, seconds: float) -> dict[str, Any]:
    lat: list[float] = []
    errors = 0

    async def one(c: httpx.AsyncClient) -> None:
        nonlocal errors
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            t0 = time.perf_counter()
            r = await c.post("/v1/streams/s/predict", json=PREDICT)
            if r.status_code != 200:
                errors += 1
            lat.append(time.perf_counter() - t0)

    async with httpx.AsyncClient(base_url=base, timeout=60) as c:
        await asyncio.gather(*(one(c) for _ in range(clients)))
    return {"requests": len(lat), "errors": errors, "p50_s": percentile(lat, 0.5), "p99_s": percentile(lat, 0.99)}


async def listen(base: str, job: str, opened: asyncio.Event, ready: list[int], seen: list[str]) -> None:
    timeout = httpx.Timeout(10, read=120)
    async with (
        httpx.AsyncClient(base_url=base, timeout=timeout) as c,
        c.stream("GET", f"/v1/jobs/{job}/events", headers={"accept": "text/event-stream"}) as r,
    ):
        kind = ""
        async for line in r.aiter_lines():
            if line.startswith("event: "):
                kind = line[7:]
            elif line.startswith("data: "):
                seen.append(kind)
                if kind == "progress" and seen.count("progress") == 1:
                    ready.append(1)
                    opened.set()


async def listeners_run(base: str, job: str, db: str, clients: int, seconds: float, n: int) -> dict[str, Any]:
    await predict_load(base, 1, 2.0)  # warm: the base model and the adapters are loaded
    alone = await predict_load(base, clients, seconds)
    ready: list[int] = []
    seen: list[list[str]] = [[] for _ in range(n)]
    opened = asyncio.Event()
    tasks = [asyncio.create_task(listen(base, job, opened, ready, seen[i])) for i in range(n)]
    deadline = time.perf_counter() + 60
    while len(ready) < n and time.perf_counter() < deadline:
        await asyncio.sleep(0.1)
    busy_before = await asyncio.to_thread(busy_connections, db)
    beside = await predict_load(base, clients, seconds)
    busy_after = await asyncio.to_thread(busy_connections, db)
    async with httpx.AsyncClient(base_url=base, timeout=30) as c:
        (await c.post(f"/v1/jobs/{job}/cancel")).raise_for_status()
    _, pending = await asyncio.wait(tasks, timeout=30)
    for t in pending:
        t.cancel()
    ratio = beside["p99_s"] / alone["p99_s"] if alone["p99_s"] and beside["p99_s"] else None
    return {
        "listeners": n,
        "listeners_open": len(ready),
        "listeners_saw_end": sum(1 for s in seen if "job.cancelled" in s),
        "busy_db_connections": [busy_before, busy_after],
        "predict_clients": clients,
        "seconds": seconds,
        "without_listeners": alone,
        "with_listeners": beside,
        "p99_ratio": round(ratio, 3) if ratio else None,
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--database-url", default=os.environ.get("TREELORA_TEST_DATABASE_URL"))
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--listeners", type=int, default=64)
    ap.add_argument("--predict-clients", type=int, default=4)
    ap.add_argument("--listen-seconds", type=float, default=15.0)
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "reliability-load.json")
    args = ap.parse_args(argv)
    if not args.database_url or not args.database_url.startswith("postgresql"):
        ap.error("--database-url (or TREELORA_TEST_DATABASE_URL) must name a PostgreSQL server")
    started = {"cpus": os.cpu_count(), "loadavg_start": [round(x, 2) for x in os.getloadavg()]}
    db = create_database(args.database_url, "reliability")
    try:
        upgrade(db)
        with tempfile.TemporaryDirectory(prefix="reliability-") as tmp_dir:
            tmp = Path(tmp_dir)
            settings = Settings(data_dir=tmp / "var", database_url=db, models=f"tiny={tiny_model(tmp / 'tiny')}")
            learned, queued = prepare(settings)
            env = settings.to_env()
            port = 18000 + os.getpid() % 1000
            base = f"http://127.0.0.1:{port}"
            log = tmp / "api.log"
            api = start(["-m", "uvicorn", "api.main:app", "--port", str(port)], env, log, f"{base}/readyz", 600)
            try:
                print(f"poison: {args.clients} clients for {args.seconds:g} s ...", flush=True)
                poison = asyncio.run(poison_run(base, learned, args.clients, args.seconds))
                print(json.dumps(poison), flush=True)
                print(f"listeners: {args.listeners} beside {args.predict_clients} predict clients ...", flush=True)
                listeners = asyncio.run(
                    listeners_run(base, queued, db, args.predict_clients, args.listen_seconds, args.listeners)
                )
            finally:
                stop(api)
            api_log = log.read_text(errors="replace")
            listeners["pool_timeouts"] = len(re.findall(r"QueuePool limit|TimeoutError", api_log))
            listeners["api_tracebacks"] = api_log.count("Traceback")
            print(json.dumps(listeners), flush=True)
    finally:
        drop_database(args.database_url, db)
    started["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    result = {
        "command": "python -m benchmarks.reliability_load --database-url postgresql+psycopg://...",
        "machine": started,
        "model": "tiny random Llama (4 blocks, width 64), SmolLM2 tokenizer; CPU",
        "poison": poison,
        "sse_listeners": listeners,
        "targets": {"well_formed_errors": 0, "pool_timeouts": 0, "p99_ratio_at_most": 1.5},
    }
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
