"""Schemathesis over the OpenAPI spec, in process, on real PostgreSQL and S3, with authentication
on and a valid key: no 5xx, every answer conforms to the schema of its status, no status the spec
does not declare, the declared content type. A bounded budget (`FUZZ_EXAMPLES` per operation)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from pydantic import SecretStr
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from api.main import create_app
from api.settings import Settings

ADMIN_KEY = "admin-" + "f" * 40
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "12"))
CHECKS = [not_a_server_error, response_schema_conformance, status_code_conformance, content_type_conformance]


@pytest.fixture
def fuzz_app(settings: Settings) -> Iterator[dict[str, Any]]:
    keyed = settings.model_copy(update={"auth": True, "admin_key": SecretStr(ADMIN_KEY)})
    app = create_app(keyed)
    with TestClient(app) as client:  # runs the lifespan: store, inference, live events
        secret = client.post("/v1/keys", json={"name": "fuzz"}, headers={"Authorization": f"Bearer {ADMIN_KEY}"})
        key = secret.json()["secret"]
        headers = {"Authorization": f"Bearer {key}"}
        assert client.post("/v1/streams", json={"name": "s"}, headers=headers).status_code == 201
        yield {"schema": schemathesis.openapi.from_asgi("/openapi.json", app), "headers": headers}


def test_api_conforms_to_its_spec(fuzz_app: dict[str, Any], tmp_path: Path) -> None:
    """Every operation, `EXAMPLES` generated cases each (valid and invalid data); all failures
    are collected and reported together, with the figures (also written to
    `$TREELORA_ARTIFACTS/fuzz.json`)."""
    schema, headers = fuzz_app["schema"], fuzz_app["headers"]
    failures: dict[str, list[str]] = {}
    counts: dict[str, int] = {}
    for result in schema.get_all_operations():
        op = result.ok()
        label = f"{op.method.upper()} {op.path}"
        counts[label] = 0

        @given(case=op.as_strategy())
        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            derandomize=True,
            database=None,
        )
        def run(case: Any) -> None:
            counts[label] += 1  # noqa: B023  (run() is called below, in this iteration)
            try:
                case.call_and_validate(headers=headers, checks=CHECKS)
            except (Exception, BaseExceptionGroup) as exc:  # collected: one report for every operation
                failures.setdefault(label, []).append(f"{type(exc).__name__}: {str(exc)[:1500]}")  # noqa: B023

        run()
    n_failures = sum(map(len, failures.values()))
    report = f"{len(counts)} operations, {sum(counts.values())} cases, {n_failures} failures"
    out = Path(os.environ.get("TREELORA_ARTIFACTS") or tmp_path) / "fuzz.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    figures = {"examples_per_operation": EXAMPLES, "cases": counts, "failures": n_failures}
    out.write_text(json.dumps(figures, indent=1))
    assert not failures, report + "\n" + "\n\n".join(f"{k}:\n" + "\n".join(v[:3]) for k, v in failures.items())


@pytest.mark.parametrize(
    "path",
    [
        "/v1/streams/a%00b",
        "/v1/streams/s/tasks/t%00",
        "/v1/streams/s/tree?version=99999999999999999999",
        "/v1/streams?after=str_%00",
        "/v1/jobs/job_%00",
        "/v1/jobs?stream_id=%00",
        "/v1/jobs?state=nope",
        "/v1/jobs/job_00000000000000000000aa/events?after=99999999999999999999999",
        "/v1/streams/" + "a" * 65,
    ],
)
def test_hostile_path_and_query_values_are_422_not_500(client: TestClient, path: str) -> None:
    """A NUL byte (PostgreSQL refuses it in text), an over-long name or an integer past 64 bits
    in a path or query parameter: 422 from the parameter's declared constraint, never a 500."""
    r = client.get(path)
    assert r.status_code == 422, r.text
    assert r.json()["error"]["code"] == "invalid"


def test_a_405_says_which_methods_the_path_takes(client: TestClient) -> None:
    r = client.put("/v1/streams")
    assert r.status_code == 405 and r.json()["error"]["code"] == "method_not_allowed"
    assert r.headers["allow"] == "GET, POST"
    assert client.patch("/v1/streams/s").headers["allow"] == "DELETE, GET"


def test_unparseable_bodies_get_422_everywhere(client: TestClient) -> None:
    assert client.post("/v1/streams", json={"name": "s"}).status_code == 201
    broken_json = client.post("/v1/streams", content=b'{"name": ', headers={"content-type": "application/json"})
    broken_form = client.post(
        "/v1/streams/s/tasks",
        content=b'--xx\r\nContent-Disposition: form-data; name="name"\r\n\r\nt\r\n--xx',  # never closed
        headers={"content-type": "multipart/form-data; boundary=xx"},
    )
    no_boundary = client.post("/v1/streams/s/tasks", content=b"abc", headers={"content-type": "multipart/form-data"})
    for r in (broken_json, broken_form, no_boundary):
        assert r.status_code == 422, r.text
        assert r.json()["error"]["code"] == "invalid"
