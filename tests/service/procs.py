"""Real service processes for the end-to-end and fault tests: the API (uvicorn), Celery workers,
`api.serve`, and servers of our own (Redis, PostgreSQL) that a fault test may stop and start."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import httpx
import redis

from api.settings import Settings, env_value

ROOT = Path(__file__).resolve().parents[2]
API_ARGS = ["-m", "uvicorn", "api.main:app"]
WORKER_ARGS = ["-m", "celery", "-A", "worker.app", "worker", "--pool", "solo", "-c", "1", "--loglevel", "INFO"]
T = TypeVar("T")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Proc:
    def __init__(self, args: list[str], env: dict[str, str], log: Path, program: str = sys.executable) -> None:
        self.log = log
        full_env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", **env}
        self.handle = log.open("ab")  # a restarted process appends to its predecessor's log
        self.p = subprocess.Popen(
            [program, *args],
            cwd=ROOT,
            env=full_env,
            stdout=self.handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: stopping it stops its children too
        )

    @property
    def pid(self) -> int:
        return self.p.pid

    def alive(self) -> bool:
        return self.p.poll() is None

    def tail(self, n: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-n:]

    def kill(self) -> None:
        """SIGKILL, as an out-of-memory kill or a lost machine would end it."""
        if self.alive():
            os.killpg(self.p.pid, signal.SIGKILL)
            self.p.wait()
        self.handle.close()

    def stop(self) -> None:
        if self.alive():
            os.killpg(self.p.pid, signal.SIGTERM)
            try:
                self.p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.p.pid, signal.SIGKILL)
                self.p.wait()
        self.handle.close()


def wait_for(what: Callable[[], T | None], timeout: float, why: str | Callable[[], str], every: float = 0.1) -> T:
    """Poll `what` until it returns something other than None. A callable `why` is read at the
    timeout, so a log tail in it shows what happened while waiting, not before."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (got := what()) is not None:
            return got
        time.sleep(every)
    raise TimeoutError(why if isinstance(why, str) else why())


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


def env_of(**settings: Any) -> dict[str, str]:
    """The `TREELORA_*` variables that make a service process read these settings."""
    return {f"TREELORA_{k.upper()}": env_value(v) for k, v in settings.items() if v is not None}


def settings_env(settings: Settings) -> dict[str, str]:
    return settings.to_env()


def production_env(
    *, pg_server_url: str, redis_url: str, broker_db: int, s3_env: dict[str, str], data_dir: Path, **settings: Any
) -> tuple[dict[str, str], str]:
    """The environment of service processes in production mode on the test servers: a fresh
    migrated database, Redis database `broker_db` (flushed) as the broker, a new S3 prefix, and
    `settings` on top -> (environment, database URL)."""
    from api.migrate import upgrade

    from .conftest import fresh_database

    db = fresh_database(pg_server_url)
    upgrade(db)
    broker = redis_url.rsplit("/", 1)[0] + f"/{broker_db}"
    redis.Redis.from_url(broker).flushdb()
    prefix = f"{data_dir.name}-{uuid.uuid4().hex[:8]}/"
    base = {"data_dir": data_dir, "database_url": db, "broker_url": broker, "store": "s3", "s3_prefix": prefix}
    return env_of(**base, **s3_env, **settings), db


class Service:
    """The API (uvicorn) and `workers` Celery workers as processes, configured by `env`, with
    their logs in `logs`: `with Service(env, tmp) as svc:` waits until the API is ready (and
    each worker, with `wait_workers`) and stops them all at the end. `api=False` starts workers
    only. A worker can be killed and another started while the service runs."""

    def __init__(
        self,
        env: dict[str, str],
        logs: Path,
        *,
        api: bool = True,
        workers: int = 1,
        ready_timeout: float = 600,  # seconds on an idle machine; minutes when torch imports on a busy one
        wait_workers: bool = False,
    ) -> None:
        self.env, self.logs, self.ready_timeout = env, logs, ready_timeout
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.api: Proc | None = None
        self.workers: list[Proc] = []
        self._want_api, self._want_workers, self._wait_workers = api, workers, wait_workers
        self._started = 0

    def __enter__(self) -> Service:
        try:
            if self._want_api:
                args = [*API_ARGS, "--port", str(self.port)]
                self.api = Proc(args, self.env, self.logs / "api.log")
            for _ in range(self._want_workers):
                self.start_worker(wait=False)
            if self.api is not None:
                wait_ready(f"{self.base}/readyz", self.api, timeout=self.ready_timeout)
            if self._wait_workers:
                for w in self.workers:
                    self.wait_worker(w)
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    @property
    def procs(self) -> list[Proc]:
        return [p for p in (self.api, *self.workers) if p is not None]

    def start_worker(self, *, wait: bool = True) -> Proc:
        """A new Celery worker (named `w<k>@host`), once it is ready for tasks when `wait`."""
        name = f"w{self._started}@%h"
        proc = Proc([*WORKER_ARGS, "-n", name], self.env, self.logs / f"worker{self._started}.log")
        self._started += 1
        self.workers.append(proc)
        if wait:
            self.wait_worker(proc)
        return proc

    def wait_worker(self, proc: Proc) -> None:
        def ready() -> bool | None:
            if not proc.alive():
                raise RuntimeError(f"the worker exited:\n{proc.tail()}")
            return True if " ready." in proc.tail() else None

        wait_for(ready, self.ready_timeout, lambda: f"worker not ready:\n{proc.tail()}", every=0.3)

    def worker_by_pid(self, pid: int) -> Proc:
        return next(w for w in self.workers if w.pid == pid)

    def wait_jobs(self, job_ids: list[str], timeout: float = 900) -> list[dict[str, Any]]:
        return wait_jobs(self.base, job_ids, [p for p in self.procs if p.alive()], timeout)

    def stop(self) -> None:
        for p in self.procs:
            p.stop()


# -- servers a fault test owns: stopped and started again on the same port and data ------------


def _as_postgres(args: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root: run its programs as `postgres` when we are root."""
    return ["runuser", "-u", "postgres", "--", *args] if os.geteuid() == 0 else args


def pg_bindir() -> Path:
    found = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True, check=False).stdout.strip()
    if found and (Path(found) / "initdb").exists():
        return Path(found)
    dirs = sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: int(p.parent.name))
    if not dirs:
        raise RuntimeError("PostgreSQL server programs (initdb) not found")
    return dirs[-1]


class PostgresServer:
    """A PostgreSQL server of the test's own (initdb in a new temporary folder, one port), as
    scripts/services starts one: `stop()` and `start()` keep its data, so it comes back as it
    was; `close()` stops it and removes the folder. The folder is not under pytest's, whose
    private parents the `postgres` user could not enter."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="treelora-pg-"))
        self.port, self.bin = free_port(), pg_bindir()
        self.data, self.log = self.root / "data", self.root / "pg.log"
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres")
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "treelora", "--no-sync", "--encoding=UTF8")
        with (self.data / "postgresql.conf").open("a") as f:
            f.write(
                f"\nlisten_addresses = '127.0.0.1'\nport = {self.port}\nunix_socket_directories = '{self.root}'\n"
                "fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n"
            )
        self.start()
        self._run("createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", "treelora", "treelora")
        self.url = f"postgresql+psycopg://treelora@127.0.0.1:{self.port}/treelora"

    def _run(self, program: str, *args: str) -> None:
        subprocess.run(
            _as_postgres([str(self.bin / program), *args]), cwd=self.root, check=True, capture_output=True, timeout=120
        )

    def start(self) -> None:
        self._run("pg_ctl", "start", "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60")

    def stop(self) -> None:
        """A fast shutdown: open connections are closed, running transactions rolled back."""
        self._run("pg_ctl", "stop", "-D", str(self.data), "-m", "fast", "-w", "-t", "60")

    def close(self) -> None:
        if (self.data / "postmaster.pid").exists():
            self.stop()
        shutil.rmtree(self.root, ignore_errors=True)


class RedisServer:
    """A Redis server of the test's own on one port; `stop()` then `start()` restarts it on the
    same port with the same data folder (no persistence: what it held is gone, as after a crash)."""

    def __init__(self, root: Path) -> None:
        self.root, self.port = root, free_port()
        root.mkdir(parents=True, exist_ok=True)
        self.proc: Proc | None = None
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.start()

    def start(self) -> None:
        args = ["--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        self.proc = Proc([*args, "--dir", str(self.root)], {}, self.root / "redis.log", program="redis-server")

        def up() -> bool | None:
            if not self.proc or not self.proc.alive():
                raise RuntimeError("redis-server exited")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                    s.sendall(b"PING\r\n")
                    return True if s.recv(16).startswith(b"+PONG") else None
            except OSError:
                return None

        wait_for(up, 30, lambda: f"redis-server not ready:\n{self.proc.tail()}")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()
            self.proc = None
