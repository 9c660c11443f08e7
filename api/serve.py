"""`python -m api.serve`: the whole service in one command (embedded mode by default).

Migrates the database, prepares the default model, starts one Celery worker process beside the
API and serves the API with uvicorn; Ctrl-C stops both.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys

import uvicorn

from .migrate import upgrade
from .settings import get_settings


def main(argv: list[str] | None = None) -> None:
    settings = get_settings()
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--host", default=settings.host, help="default: TREELORA_HOST or 127.0.0.1")
    ap.add_argument("--port", type=int, default=settings.port, help="default: TREELORA_PORT or 8000")
    ap.add_argument("--no-worker", action="store_true", help="serve the API only (workers run elsewhere)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    upgrade(settings.db_url)
    if settings.default_model in settings.model_choices() and settings.model_choices()[settings.default_model] is None:
        from treelora_core.models import smollm2_dir

        logging.info("default model ready at %s", smollm2_dir())
    worker = None
    if not args.no_worker:
        cmd = [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "worker.app",
            "worker",
            "--pool",
            "solo",
            "--concurrency",
            "1",
            "--loglevel",
            "INFO",
            "--hostname",
            f"treelora-{os.getpid()}@%h",
        ]
        worker = subprocess.Popen(cmd)
    url = f"http://{args.host}:{args.port}"
    print(f"TreeLoRA service: {url}  (API docs: {url}/docs)", flush=True)
    try:
        uvicorn.run("api.main:app", host=args.host, port=args.port, log_level="info")
    finally:
        if worker is not None:
            worker.send_signal(signal.SIGTERM)
            try:
                worker.wait(timeout=30)
            except subprocess.TimeoutExpired:
                worker.kill()


if __name__ == "__main__":
    main()
