"""The `treelora` command line (and the SDK under it) against a running service: uvicorn and a
Celery worker as processes on PostgreSQL, Redis and S3, with the tiny random Llama as the model.
The CLI runs as the installed console script, as a user runs it."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from client import Client, NotFoundError, UnprocessableEntityError

from .conftest import jsonl
from .procs import Service, free_port, production_env

TREELORA = Path(sys.executable).with_name("treelora")
PROMPT = "Item {i} of the list: what is it?"
STREAM_CONFIG = [
    *("--epochs", "2"),
    *("--set", "train.batch_size=4", "--set", "train.max_length=48", "--set", "train.lr=0.005"),
    *("--set", "tree.min_own_blocks=2", "--set", "tree.max_pulls=2", "--set", "tree.probe_batch=4"),
]


@pytest.fixture(scope="module")
def service(
    pg_server_url: str, redis_url: str, s3_env: dict[str, str], tiny_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("cli-service")
    env, _ = production_env(
        pg_server_url=pg_server_url,
        redis_url=redis_url,
        broker_db=3,
        s3_env=s3_env,
        data_dir=tmp,
        models=f"tiny={tiny_dir}",
        heartbeat_s=0.2,  # progress reaches the event stream several times a second
    )
    with Service(env, tmp, ready_timeout=120) as svc:
        yield svc.base


def treelora(base: str, *args: str, tty: bool = False) -> subprocess.CompletedProcess[str]:
    """Run the installed `treelora` script; `tty`: draw as on a terminal (the live progress bar)."""
    if not TREELORA.exists():
        pytest.fail(f"{TREELORA} is missing: `pip install -e .` installs the console script")
    env = {k: v for k, v in os.environ.items() if k not in ("TTY_COMPATIBLE", "FORCE_COLOR", "NO_COLOR")}
    env |= {"TREELORA_URL": base, "COLUMNS": "120"} | ({"TTY_COMPATIBLE": "1"} if tty else {})
    return subprocess.run([str(TREELORA), *args], env=env, capture_output=True, text=True, timeout=600)


def plain(text: str) -> str:
    """What a terminal shows: escape sequences dropped, each line's last redraw kept."""
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", text)
    return "\n".join(line.split("\r")[-1] for line in text.split("\n"))


def write(path: Path, word: str, n: int, start: int = 0) -> Path:
    path.write_bytes(jsonl([{"prompt": PROMPT.format(i=i), "completion": word} for i in range(start, start + n)]))
    return path


def test_cli_learns_tasks_with_live_progress_and_shows_what_was_learned(service: str, tmp_path: Path) -> None:
    r = treelora(service, "stream", "create", "fruit", "--model", "tiny", *STREAM_CONFIG)
    assert r.returncode == 0, r.stderr
    assert "created stream fruit" in r.stdout and "treelora on tiny" in r.stdout

    # a terminal: the live bar, fed by the job's events
    r = treelora(
        service, "task", "add", "fruit", str(write(tmp_path / "apple.jsonl", "apple", 120)), "--wait", tty=True
    )
    assert r.returncode == 0, r.stdout + r.stderr
    shown = plain(r.stdout)
    assert "━" in r.stdout  # the progress bar
    assert re.search(r"step \d+/\d+", shown) and "val loss" in shown, shown
    assert "succeeded · tree version 1" in shown and shown.rstrip().endswith("succeeded")

    # a log or a pipe: one line per change
    train, evals = write(tmp_path / "p.jsonl", "pear", 100), write(tmp_path / "p-eval.jsonl", "pear", 12, start=100)
    r = treelora(service, "task", "add", "fruit", str(train), "--eval", str(evals), "--name", "pear", "--wait")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "added task pear (100 train, 12 eval examples)" in r.stdout
    lines = r.stdout.splitlines()
    assert any(re.match(r"pear: epoch 1 · val loss [\d.]+ · step \d+/\d+", line) for line in lines), r.stdout
    assert any(line.startswith("pear: succeeded · tree version 2") for line in lines), r.stdout
    assert lines[-1].endswith("succeeded")

    with Client(service) as sdk:
        tree = sdk.streams.tree("fruit")
        ev = sdk.streams.evaluations("fruit")
        pred = sdk.streams.predict("fruit", PROMPT.format(i=3), task="auto", max_new_tokens=4).predictions[0]
        jobs = sdk.jobs.list().data
    assert tree.version == 2 and {n.task for n in tree.nodes if n.task} == {"apple", "pear"}

    r = treelora(service, "tree", "show", "fruit")
    assert r.returncode == 0, r.stderr
    assert "fruit · treelora · tree version 2 · 4 blocks" in r.stdout
    for n in tree.nodes:  # every node, with its block range and owning task
        assert re.search(rf"{n.id}\s+\S+\s+\[{n.lo}, {n.hi}\)" + (f"\\s+task {n.task}" if n.task else ""), r.stdout)
    assert "task similarity" in r.stdout

    r = treelora(service, "eval", "show", "fruit")
    assert r.returncode == 0, r.stderr
    rows = [line.split() for line in r.stdout.splitlines()]
    assert ["version", "learned", "apple", "pear"] in rows
    assert ["1", "apple", f"{ev.R[0][0]:.1f}", "·"] in rows
    assert ["2", "pear", f"{ev.R[1][0]:.1f}", f"{ev.R[1][1]:.1f}"] in rows
    assert f"OP {ev.op:.2f}   BWT {ev.bwt:.2f}" in r.stdout

    r = treelora(service, "predict", "fruit", PROMPT.format(i=3), "--task", "auto", "--max-new-tokens", "4")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(pred.output.strip())
    assert f"{pred.task} (routed, confidence {pred.confidence:.2f})" in r.stdout
    assert " → ".join(f"[{s.lo}, {s.hi}) {'+'.join(s.adapters)}" for s in pred.path) in r.stdout

    r = treelora(service, "job", "show", jobs[0].id)
    assert r.returncode == 0 and "succeeded" in r.stdout and "learned in" in r.stdout, r.stdout + r.stderr

    r = treelora(service, "adapter", "export", "fruit", "apple", "-o", str(tmp_path / "peft"))
    assert r.returncode == 0, r.stderr
    config = json.loads((tmp_path / "peft" / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and (tmp_path / "peft" / "adapter_model.safetensors").stat().st_size > 0

    r = treelora(service, "--json", "stream", "list")
    assert r.returncode == 0, r.stderr
    assert [(s["name"], s["tree_version"]) for s in json.loads(r.stdout)] == [("fruit", 2)]


def test_bad_input_exits_nonzero_with_the_service_message(service: str, tmp_path: Path) -> None:
    good = write(tmp_path / "good.jsonl", "apple", 20)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a", "completion": "b"}\n{"prompt": "a"\n')

    r = treelora(service, "task", "add", "no-such-stream", str(good))
    assert r.returncode == 1 and r.stdout == ""
    assert "error: no stream 'no-such-stream'" in r.stderr and "not_found" in r.stderr

    assert treelora(service, "stream", "create", "strict", "--model", "tiny").returncode == 0
    r = treelora(service, "task", "add", "strict", str(bad))
    assert r.returncode == 1
    assert "error: line 2: invalid JSON" in r.stderr and "invalid_dataset" in r.stderr and "line 2" in r.stderr

    r = treelora(service, "stream", "create", "typo", "--set", "train.epoch=2")
    assert r.returncode == 1 and "code invalid, param train.epoch" in r.stderr

    r = treelora(f"http://127.0.0.1:{free_port()}", "stream", "list")
    assert r.returncode == 1 and "cannot reach the service" in r.stderr

    with Client(service) as sdk:  # the SDK raises the same errors, typed, with the service's body
        with pytest.raises(NotFoundError) as nf:
            sdk.streams.retrieve("no-such-stream")
        with pytest.raises(UnprocessableEntityError) as invalid:
            sdk.tasks.create("strict", bad)
    assert (nf.value.status, nf.value.code, nf.value.param) == (404, "not_found", "stream_id")
    e: Any = invalid.value
    assert (e.status, e.code, e.param, e.line) == (422, "invalid_dataset", "file", 2)
    assert e.body["error"]["message"].startswith("line 2:")

    r = treelora(service, "stream", "delete", "strict", "--yes")
    assert r.returncode == 0 and "deleted stream strict" in r.stdout, r.stderr
    r = treelora(service, "stream", "show", "strict")
    assert r.returncode == 1 and "no stream 'strict'" in r.stderr
