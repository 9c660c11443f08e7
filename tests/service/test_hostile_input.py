"""Hostile and careless values on real PostgreSQL and S3: stream configs out of range or not
finite, names that end in a newline or look like ids, uploads with lone surrogates or exotic line
separators, and a run that diverges. Each is a clean 4xx naming the field (nothing stored), or a
job that fails with a clear code; none is a 500 or a "succeeded" job with NaN weights."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from fastapi.testclient import TestClient
from sqlalchemy import select, update

from api.db import session_factory
from api.main import create_app
from api.models import Stream, TreeVersion
from api.settings import Settings
from treelora_core.bounds import bounds_of
from treelora_core.config import config_from_dict
from worker.runner import run_job

from .conftest import ROWS, jsonl, make_stream, row_counts, s3_keys, submit
from .test_bad_input import check_error

SECTION_NAMES = ("lora", "train", "tree", "paper", "ewc", "o_lora", "lora_top")

CONFIG_CASES: list[tuple[str, dict[str, Any] | bytes, str]] = [
    ("epochs 1e12 (float)", {"train": {"epochs": 1e12}}, "train.epochs"),
    ("epochs 10**12", {"train": {"epochs": 10**12}}, "train.epochs"),
    ("lr Infinity", b'{"name": "x", "train": {"lr": Infinity}}', "train.lr"),
    ("lr NaN", b'{"name": "x", "train": {"lr": NaN}}', "train.lr"),
    ("lr -Infinity", b'{"name": "x", "train": {"lr": -Infinity}}', "train.lr"),
    ("lr 1e400", b'{"name": "x", "train": {"lr": 1e400}}', "train.lr"),
    ("lr huge", {"train": {"lr": 1e30}}, "train.lr"),
    ("lr zero", {"train": {"lr": 0}}, "train.lr"),
    ("lr string", {"train": {"lr": "0.001"}}, "train.lr"),
    ("lr null", {"train": {"lr": None}}, "train.lr"),
    ("alpha huge", {"lora": {"alpha": 1e30}}, "lora.alpha"),
    ("alpha NaN", b'{"name": "x", "lora": {"alpha": NaN}}', "lora.alpha"),
    ("max_length 1", {"train": {"max_length": 1}}, "train.max_length"),
    ("max_length huge", {"train": {"max_length": 10**9}}, "train.max_length"),
    ("r 2**31", {"lora": {"r": 2**31}}, "lora.r"),
    ("r 10**400", b'{"name": "x", "lora": {"r": 1' + b"0" * 400 + b"}}", "lora.r"),
    ("r true", {"lora": {"r": True}}, "lora.r"),
    ("r 8.0", {"lora": {"r": 8.0}}, "lora.r"),
    ("negative projection_dim", {"tree": {"projection_dim": -5}}, "tree.projection_dim"),
    ("negative weight_decay", {"train": {"weight_decay": -0.01}}, "train.weight_decay"),
    ("dropout 1", {"lora": {"dropout": 1.0}}, "lora.dropout"),
    ("batch_size 0", {"train": {"batch_size": 0}}, "train.batch_size"),
    ("seed 2**64", {"train": {"seed": 2**64}}, "train.seed"),
    ("share_threshold 2", {"tree": {"share_threshold": 2}}, "tree.share_threshold"),
    ("sparsity 0", {"strategy": "treelora_paper", "paper": {"sparsity": 0}}, "paper.sparsity"),
    ("ewc lam Infinity", b'{"name": "x", "strategy": "ewc", "ewc": {"lam": Infinity}}', "ewc.lam"),
    ("o_lora lam huge", {"strategy": "o_lora", "o_lora": {"lam": 1e12}}, "o_lora.lam"),
    ("own_blocks 0", {"strategy": "lora_top", "lora_top": {"own_blocks": 0}}, "lora_top.own_blocks"),
    ("unknown target module", {"lora": {"target_modules": ["q_proj", "attn_out"]}}, "lora.target_modules"),
    ("target module of another model", {"lora": {"target_modules": ["c_attn"]}}, "lora.target_modules"),
    ("target module path", {"lora": {"target_modules": ["self_attn.q_proj"]}}, "lora.target_modules.0"),
    ("target module with a newline", {"lora": {"target_modules": ["q_proj\n"]}}, "lora.target_modules.0"),
    ("no target module", {"lora": {"target_modules": []}}, "lora.target_modules"),
    ("target module twice", {"lora": {"target_modules": ["q_proj", "q_proj"]}}, "lora.target_modules"),
    ("17 target modules", {"lora": {"target_modules": [f"m{i}" for i in range(17)]}}, "lora.target_modules"),
    ("target module not a string", {"lora": {"target_modules": [7]}}, "lora.target_modules.0"),
    ("section not an object", {"train": [1, 2]}, "train"),
]


@pytest.mark.parametrize(("label", "body", "param"), CONFIG_CASES, ids=[c[0] for c in CONFIG_CASES])
def test_out_of_range_config_is_a_422_naming_the_field(
    client: TestClient, settings: Settings, label: str, body: dict[str, Any] | bytes, param: str
) -> None:
    rows = row_counts(settings.db_url)
    if isinstance(body, bytes):  # JSON that Python's parser reads as inf, nan or a huge int
        resp = client.post("/v1/streams", content=body, headers={"content-type": "application/json"})
    else:
        resp = client.post("/v1/streams", json={"name": "x", **body})
    check_error(resp, 422, "invalid", param, None)
    assert row_counts(settings.db_url) == rows


def test_valid_edges_and_real_target_modules_are_accepted(client: TestClient) -> None:
    body = {
        "name": "edges",
        "lora": {"r": 256, "alpha": 1024, "target_modules": ["q_proj", "gate_proj", "down_proj"]},
        "train": {"epochs": 100, "lr": 1, "max_length": 16, "seed": 2**32 - 1, "weight_decay": 0},
    }
    resp = client.post("/v1/streams", json=body)
    assert resp.status_code == 201, resp.text
    config = resp.json()["config"]
    assert config["lora"]["target_modules"] == ["q_proj", "gate_proj", "down_proj"]
    assert config["train"]["epochs"] == 100 and config["train"]["lr"] == 1.0 and config["tree"]["max_pulls"] == 4


def test_openapi_states_every_bound_the_engine_enforces(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    create = spec["components"]["schemas"]["StreamCreate"]["properties"]
    assert create["name"]["pattern"] and set(create["strategy"]["enum"]) >= {"treelora", "ewc"}
    defaults = config_from_dict({})
    for section in SECTION_NAMES:
        ref = next(x["$ref"] for x in create[section]["anyOf"] if "$ref" in x)
        props = spec["components"]["schemas"][ref.rsplit("/", 1)[1]]
        assert props["additionalProperties"] is False
        for f in type(getattr(defaults, section)).__dataclass_fields__.values():
            b = bounds_of(f)
            if b is None:
                continue
            p = props["properties"][f.name]
            stated = (p.get("minimum"), p.get("exclusiveMinimum"), p.get("maximum"), p.get("exclusiveMaximum"))
            assert stated == (b.ge, b.gt, b.le, b.lt), (section, f.name, p)
    lora = spec["components"]["schemas"]["LoraSection"]["properties"]["target_modules"]
    assert lora["maxItems"] == 16 and lora["items"]["pattern"]


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("s\n", "trailing newline"),
        ("s\r\n", "trailing CRLF"),
        ("str_018f3c2a9b1d4e5f6a7b8c", "the shape of a stream id"),
        ("TSK_018F3C2A9B1D4E5F6A7B8C", "the shape of a task id"),
        ("x" * 65, "too long"),
        ("", "empty"),
    ],
)
def test_stream_names_are_whole_and_never_look_like_ids(client: TestClient, name: str, why: str) -> None:
    check_error(client.post("/v1/streams", json={"name": name}), 422, "invalid", "name", None)


def test_task_names_are_whole_never_ids_nor_auto(client: TestClient, settings: Settings) -> None:
    assert client.post("/v1/streams", json={"name": "s"}).status_code == 201
    rows, keys = row_counts(settings.db_url), s3_keys(settings)
    for name in ("t1\n", "job_018f3c2a9b1d4e5f6a7b8c", "auto"):
        resp = client.post("/v1/streams/s/tasks", files={"file": ("t", jsonl(ROWS), "x")}, data={"name": name})
        check_error(resp, 422, "invalid", "name", None)
    assert row_counts(settings.db_url) == rows and s3_keys(settings) == keys
    near_id = client.post("/v1/streams", json={"name": "str_" + "0" * 20}).status_code  # 20 digits, not 22
    assert near_id == 201  # only the exact shape of an id is refused


def test_an_id_wins_over_a_name_that_equals_it(client: TestClient, settings: Settings) -> None:
    """A row named like another stream's id can only come from before the naming rule; lookups
    still resolve the id first, so the stream with that id is never shadowed."""
    first = client.post("/v1/streams", json={"name": "first"}).json()
    second = client.post("/v1/streams", json={"name": "second"}).json()
    with session_factory(settings.db_url)() as s:  # a legacy row: the API no longer allows the name
        s.execute(update(Stream).where(Stream.id == first["id"]).values(name=second["id"]))
        s.commit()  # PostgreSQL writes the updated row after the others: the id's row moves last
        s.execute(update(Stream).where(Stream.id == second["id"]).values(name="second-renamed"))
        s.commit()
    got = client.get(f"/v1/streams/{second['id']}").json()
    assert got["id"] == second["id"] and got["name"] == "second-renamed"
    assert client.get("/v1/streams/second-renamed").json()["id"] == second["id"]


def test_uploads_refuse_lone_surrogates_and_keep_line_separators(client: TestClient, settings: Settings) -> None:
    assert client.post("/v1/streams", json={"name": "s"}).status_code == 201
    ok = '{"prompt": "Item: which class?", "completion": "alpha"}\n'
    rows, keys = row_counts(settings.db_url), s3_keys(settings)
    bad = (ok * 3 + '{"prompt": "broken \\ud800 text", "completion": "alpha"}\n' + ok * 8).encode()
    resp = client.post("/v1/streams/s/tasks", files={"file": ("t", bad, "x")}, data={"name": "t1"})
    check_error(resp, 422, "invalid_dataset", "file", 4)
    assert row_counts(settings.db_url) == rows and s3_keys(settings) == keys
    # raw U+2028 and U+0085 inside strings, CRLF line ends: valid JSONL, every record kept
    odd = [{"prompt": f"Item {i}\u2028of the list\x85which class?", "completion": "alpha"} for i in range(12)]
    body = "\r\n".join(json.dumps(r, ensure_ascii=False) for r in odd).encode()
    assert "\u2028".encode() in body and "\x85".encode() in body
    resp = client.post("/v1/streams/s/tasks", files={"file": ("t", body, "x")}, data={"name": "t2"})
    assert resp.status_code == 202, resp.text
    assert resp.json()["task"]["n_train"] + resp.json()["task"]["n_eval"] == 12


def test_a_stored_config_out_of_bounds_fails_the_job_as_invalid_config(
    wclient: TestClient, wsettings: Settings
) -> None:
    """A stream stored before the bounds existed (lr 1e30, as the API used to accept) used to
    "succeed" with NaN weights; its job now fails `invalid_config` naming the field."""
    make_stream(wclient)
    with session_factory(wsettings.db_url)() as s:  # only the database can still hold such a config
        row = s.scalar(select(Stream).where(Stream.name == "s"))
        assert row is not None
        config = {**row.config, "train": {**row.config["train"], "lr": 1e30}}
        s.execute(update(Stream).where(Stream.id == row.id).values(config=config))
        s.commit()
    job = submit(wclient, "boom")
    assert run_job(job["id"], wsettings) == "done"
    done = wclient.get(f"/v1/jobs/{job['id']}").json()
    assert done["state"] == "failed" and done["error"]["code"] == "invalid_config", done
    assert "train.lr" in done["error"]["message"]
    assert wclient.get("/v1/streams/s").json()["tree_version"] == 0


@pytest.fixture
def broken_settings(wsettings: Settings, tiny_base: Any, tokenizer: Any, tmp_path: Path) -> Settings:
    """A second base model whose last block's weights are NaN: training on it produces a NaN
    loss at the first step (within the bounds, the tiny model never diverges by itself)."""
    model = copy.deepcopy(tiny_base)
    with torch.no_grad():
        model.model.layers[-1].mlp.down_proj.weight.fill_(math.nan)
    model.save_pretrained(tmp_path / "broken")
    tokenizer.save_pretrained(tmp_path / "broken")
    return wsettings.model_copy(update={"models": f"{wsettings.models},broken={tmp_path / 'broken'}"})


def test_a_diverging_job_fails_with_diverged(broken_settings: Settings) -> None:
    """Non-finite loss or weights: the job ends `failed` with code `diverged`, not `succeeded`,
    and nothing is committed."""
    with TestClient(create_app(broken_settings), raise_server_exceptions=False) as client:
        body = {"name": "nan", "base_model": "broken", "strategy": "seq_lora", "train": {"epochs": 1, "max_length": 48}}
        assert client.post("/v1/streams", json=body).status_code == 201
        job = submit(client, "boom", stream="nan")
        assert run_job(job["id"], broken_settings) == "done"
        done = client.get(f"/v1/jobs/{job['id']}").json()
        assert done["state"] == "failed" and done["error"]["code"] == "diverged", done
        assert "diverged" in done["error"]["message"] and done["result_version"] is None
        assert client.get("/v1/streams/nan").json()["tree_version"] == 0
        assert client.get("/v1/streams/nan/tasks/boom").json()["status"] == "failed"
    with session_factory(broken_settings.db_url)() as s:
        assert s.scalar(select(TreeVersion.id)) is None


def test_the_smallest_max_length_still_scores(wclient: TestClient, wsettings: Settings) -> None:
    """`max_length` 16, the least now allowed (1 was accepted and made /score fail): a stream
    with it trains, evaluates and scores; its prompts keep tokens even where scoring's reserve
    takes the whole budget."""
    make_stream(wclient, max_length=16)
    assert run_job(submit(wclient, "apples")["id"], wsettings) == "done"
    prompt = "Item 3 of the list, which is a long and winding description: what is it?"
    resp = wclient.post(
        "/v1/streams/s/score", json={"inputs": [prompt], "choices": ["apple", "pear"], "task": "apples"}
    )
    assert resp.status_code == 200, resp.text
    assert all(math.isfinite(c["logprob"]) for c in resp.json()["results"][0]["choices"])


def test_no_validation_split_is_no_nan_in_the_database(wclient: TestClient, wsettings: Settings) -> None:
    """`val_examples: 0` (the lowest bound: no early-stopping split) makes every validation loss
    NaN, which PostgreSQL's JSON refuses: the report and the events carry null instead, and the
    job succeeds with its events intact."""
    make_stream(wclient, epochs=2, val_examples=0, patience=0)
    job = submit(wclient, "no-val")
    assert run_job(job["id"], wsettings) == "done"
    done = wclient.get(f"/v1/jobs/{job['id']}").json()
    assert done["state"] == "succeeded", done
    assert done["report"]["val_losses"] == [None, None] and math.isfinite(done["report"]["final_train_loss"])
    events = wclient.get(f"/v1/jobs/{job['id']}/events").json()["data"]
    assert "task.learned" in [e["type"] for e in events]
    validated = [e["data"] for e in events if e["type"] == "epoch.validated"]
    assert validated and all(d["val_loss"] is None for d in validated)
