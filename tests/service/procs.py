"""Real service processes for the end-to-end tests: uvicorn, a Celery worker, `api.serve`."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from api.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Proc:
    def __init__(self, args: list[str], env: dict[str, str], log: Path) -> None:
        self.log = log
        full_env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", **env}
        self.handle = log.open("wb")
        self.p = subprocess.Popen(
            [sys.executable, *args],
            cwd=ROOT,
            env=full_env,
            stdout=self.handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: stopping it stops its children too
        )

    def tail(self, n: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-n:]

    def stop(self) -> None:
        if self.p.poll() is None:
            os.killpg(self.p.pid, signal.SIGTERM)
            try:
                self.p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.p.pid, signal.SIGKILL)
                self.p.wait()
        self.handle.close()


def wait_ready(url: str, proc: Proc, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.p.poll() is not None:
            raise RuntimeError(f"process exited early:\n{proc.tail()}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"{url} not ready after {timeout}s:\n{proc.tail()}")


def wait_jobs(base: str, job_ids: list[str], procs: list[Proc], timeout: float = 900) -> list[dict]:  # type: ignore[type-arg]
    deadline = time.time() + timeout
    while time.time() < deadline:
        jobs = [httpx.get(f"{base}/v1/jobs/{j}", timeout=10).json() for j in job_ids]
        if all(j["state"] in ("succeeded", "failed", "cancelled") for j in jobs):
            return jobs
        for p in procs:
            if p.p.poll() is not None:
                raise RuntimeError(f"a service process died:\n{p.tail()}")
        time.sleep(1)
    raise TimeoutError(f"jobs not done after {timeout}s: {[j['state'] for j in jobs]}\n{procs[-1].tail()}")


def settings_env(settings: Settings) -> dict[str, str]:
    """The `TREELORA_*` variables that make a service process read these settings."""
    return {f"TREELORA_{k.upper()}": str(v) for k, v in settings.model_dump().items() if v is not None}
