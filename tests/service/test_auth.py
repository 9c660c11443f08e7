"""API keys and ownership on real PostgreSQL and S3: keys are created by the admin key only and
stored hashed, a revoked key is refused at its next request, every stream belongs to the key that
created it and another key gets the same 404 as for a stream that does not exist, on every route
under it; 401s carry `WWW-Authenticate: Bearer` and the one error shape, whatever the header."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from pydantic import SecretStr
from sqlalchemy import create_engine, text

from api.errors import OPENAI_PATHS
from api.main import create_app
from api.services.owners import Caller
from api.settings import Settings
from api.storage import make_store

from .conftest import jsonl, row_counts, s3_keys
from .page_data import many_task_stream

ADMIN_KEY = "admin-" + "k" * 40
ROWS = [{"prompt": f"Item {i}: what is it?", "completion": "apple"} for i in range(12)]


@pytest.fixture
def asettings(settings: Settings) -> Settings:
    return settings.model_copy(update={"auth": True, "admin_key": SecretStr(ADMIN_KEY)})


def app_client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings), raise_server_exceptions=False) as c:
        yield c


@pytest.fixture
def aclient(asettings: Settings) -> Iterator[TestClient]:
    yield from app_client(asettings)


def app_routes(app: Any) -> list[Any]:
    """Every route of the app, those of included routers too."""
    return [x for r in app.routes for x in getattr(getattr(r, "original_router", None), "routes", [r])]


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


ADMIN = bearer(ADMIN_KEY)


def new_key(client: TestClient, name: str = "k") -> tuple[str, dict[str, str]]:
    r = client.post("/v1/keys", json={"name": name}, headers=ADMIN)
    assert r.status_code == 201, r.text
    return r.json()["id"], bearer(r.json()["secret"])


def assert_401(r: Any) -> None:
    assert r.status_code == 401, r.text
    assert r.headers["www-authenticate"].startswith("Bearer")
    body = r.json()
    assert set(body) == {"error"} and body["error"]["code"] == "unauthorized" and body["error"]["message"]


def test_keys_are_created_by_the_admin_only_and_stored_hashed(aclient: TestClient, asettings: Settings) -> None:
    assert_401(aclient.post("/v1/keys", json={"name": "x"}))
    r = aclient.post("/v1/keys", json={"name": "ci pipeline"}, headers=ADMIN)
    assert r.status_code == 201, r.text
    key = r.json()
    secret = key["secret"]
    assert re.fullmatch(r"tlk_[A-Za-z0-9_-]{43}", secret) and secret.startswith(key["prefix"])
    assert key["name"] == "ci pipeline" and key["revoked_at"] is None
    # a key that is not the admin's may not make keys, list them or revoke them
    other = bearer(secret)
    assert aclient.post("/v1/keys", json={}, headers=other).status_code == 403
    assert aclient.get("/v1/keys", headers=other).json()["error"]["code"] == "forbidden"
    assert aclient.delete(f"/v1/keys/{key['id']}", headers=other).status_code == 403
    # the list never shows a secret
    listed = aclient.get("/v1/keys", headers=ADMIN).json()["data"]
    assert [k["id"] for k in listed] == [key["id"]] and "secret" not in listed[0]
    # at rest: the sha256 of the secret, never the secret
    engine = create_engine(asettings.db_url)
    with engine.connect() as conn:
        rows = [tuple(r) for r in conn.execute(text("select * from api_keys"))]
        sha = conn.execute(text("select secret_sha256 from api_keys")).scalar_one()
    engine.dispose()
    assert len(rows) == 1 and not any(secret in str(v) for v in rows[0])
    assert sha == hashlib.sha256(secret.encode()).hexdigest()
    # bad key names and unknown fields are 422; another key's id to revoke is 404
    for body in ({"name": "x" * 65}, {"name": " lead"}, {"name": "a\nb"}, {"name": 5}, {"nme": "a"}):
        assert aclient.post("/v1/keys", json=body, headers=ADMIN).status_code == 422, body
    assert aclient.delete("/v1/keys/key_" + "0" * 22, headers=ADMIN).status_code == 404
    assert aclient.delete("/v1/keys/key_nope", headers=ADMIN).status_code == 422


def test_a_revoked_key_is_refused_at_its_next_request(aclient: TestClient) -> None:
    key_id, key = new_key(aclient)
    assert aclient.post("/v1/streams", json={"name": "mine"}, headers=key).status_code == 201
    assert aclient.get("/v1/streams/mine", headers=key).status_code == 200
    r = aclient.delete(f"/v1/keys/{key_id}", headers=ADMIN)
    assert r.status_code == 200 and r.json()["revoked_at"] is not None
    revoked_at = r.json()["revoked_at"]
    r = aclient.get("/v1/streams/mine", headers=key)
    assert_401(r)
    assert 'error="invalid_token"' in r.headers["www-authenticate"]
    # revoking twice keeps the first time; the stream stays, and the admin sees it (by id)
    assert aclient.delete(f"/v1/keys/{key_id}", headers=ADMIN).json()["revoked_at"] == revoked_at
    streams = aclient.get("/v1/streams", headers=ADMIN).json()["data"]
    assert [(s["name"], s["owner"]) for s in streams] == [("mine", key_id)]


@pytest.mark.parametrize(
    "header",
    [
        b"",
        b"Bearer",
        b"Bearer ",
        b"bearer    ",
        b"Basic dXNlcjpwYXNz",
        b"Token " + ADMIN_KEY.encode(),
        b"Bearer " + b"A" * 10240,  # a 10 KB token
        b"Bearer " + ADMIN_KEY.encode() + b"\x00",
        b"Bearer \x00",
        "Bearer clé-ünïcode".encode(),
        "Bearer 🔑".encode(),
        b"Bearer tlk_" + b"\xff" * 43,
        b"Bearer " + ADMIN_KEY.encode() + b" extra",
        b"Bearer ' OR 1=1 --",
        b"Bearer tlk_" + b"A" * 43,  # the right shape, no such key
    ],
)
def test_malformed_and_hostile_authorization_headers_get_401(aclient: TestClient, header: bytes) -> None:
    r = aclient.get("/v1/streams", headers=[(b"authorization", header)])  # type: ignore[arg-type]
    assert_401(r)


def test_the_admin_key_is_compared_whole(aclient: TestClient) -> None:
    for near in (ADMIN_KEY[:-1], ADMIN_KEY + "x", ADMIN_KEY.upper()):
        assert_401(aclient.get("/v1/streams", headers=bearer(near)))
    assert aclient.get("/v1/streams", headers=ADMIN).status_code == 200
    assert aclient.get("/v1/streams", headers={"Authorization": f"bearer {ADMIN_KEY}"}).status_code == 200


def test_every_route_needs_a_key_but_health_docs_and_static(aclient: TestClient) -> None:
    """Every route of the app, reached with no key: 401 (the web page asks for one), whatever
    the route, so a route added later is covered too."""
    public = {"/healthz", "/readyz", "/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json"}
    pages = {"/", "/streams/{stream_id}"}
    seen = 0
    for route in app_routes(aclient.app):
        path = getattr(route, "path", None)
        if path is None or not getattr(route, "methods", None):
            continue
        url = re.sub(r"\{[^}]+\}", "x", path)
        for method in route.methods - {"HEAD"}:
            r = aclient.request(method, url)
            if path in public:
                assert r.status_code != 401, (method, path)
            elif path in pages:
                assert r.status_code == 200 and 'id="key-form"' in r.text, (method, path)
            else:
                assert_401(r)
                seen += 1
    assert seen >= 25
    assert aclient.get("/static/app.js").status_code == 200


def test_metrics_and_docs_public_or_protected(asettings: Settings) -> None:
    with TestClient(create_app(asettings)) as c:  # defaults: docs public, metrics need a key
        assert c.get("/openapi.json").status_code == 200 and c.get("/docs").status_code == 200
        assert_401(c.get("/metrics"))
        assert c.get("/metrics", headers=ADMIN).status_code == 200
        _, key = new_key(c)
        assert c.get("/metrics", headers=key).status_code == 200
    flipped = asettings.model_copy(update={"public_docs": False, "public_metrics": True})
    with TestClient(create_app(flipped)) as c:
        assert c.get("/metrics").status_code == 200
        for path in ("/openapi.json", "/docs", "/redoc"):
            assert_401(c.get(path))
        assert c.get("/openapi.json", headers=ADMIN).status_code == 200


def test_the_spec_declares_the_bearer_scheme_and_the_401(aclient: TestClient) -> None:
    spec = aclient.get("/openapi.json").json()
    assert spec["components"]["securitySchemes"]["api_key"] == {
        "type": "http",
        "scheme": "bearer",
        "description": spec["components"]["securitySchemes"]["api_key"]["description"],
    }
    ops = [(p, m, op) for p, item in spec["paths"].items() if p.startswith("/v1/") for m, op in item.items()]
    assert len(ops) >= 20
    for path, method, op in ops:
        assert op.get("security") == [{"api_key": []}], (method, path)
        assert "401" in op["responses"], (method, path)
        shape = "OpenAIErrorOut" if OPENAI_PATHS.fullmatch(path) else "ErrorOut"  # OpenAI's routes: its shape
        assert op["responses"]["401"]["content"]["application/json"]["schema"] == {
            "$ref": f"#/components/schemas/{shape}"
        }


def learned_stream(settings: Settings, caller: Caller, name: str) -> list[str]:
    from api.db import session_factory

    with session_factory(settings.db_url)() as session:
        return many_task_stream(
            session=session, settings=settings, store=make_store(settings), name=name, n_tasks=2, caller=caller
        )


def fill(path: str, values: dict[str, str]) -> str:
    return re.sub(r"\{([^}]+)\}", lambda m: values[m.group(1)], path)


def test_another_keys_stream_is_not_found_on_every_route(aclient: TestClient, asettings: Settings) -> None:
    """Key A's stream, its tasks, jobs, events, tree, adapters, router, evaluations, predict and
    score, deletion, retirement and job cancel: for key B each is the 404 a stream (or job) that
    does not exist gets, by id and by name, and nothing changes."""
    a_id, a = new_key(aclient, "a")
    _b_id, b = new_key(aclient, "b")
    tasks = learned_stream(asettings, Caller(a_id), "wide")
    stream = aclient.get("/v1/streams/wide", headers=a).json()
    assert stream["owner"] == a_id
    job_id = aclient.get("/v1/jobs", headers=a).json()["data"][0]["id"]
    bodies = {
        "/v1/streams/{stream_id}/predict": {"inputs": ["x"], "task": tasks[0]},
        "/v1/streams/{stream_id}/score": {"inputs": ["x"], "choices": ["a", "b"], "task": tasks[0]},
    }
    checked: set[str] = set()
    for route in app_routes(aclient.app):
        if not isinstance(route, APIRoute) or not re.search(r"\{(stream_id|job_id)\}", route.path):
            continue
        for method in route.methods:
            for ref in (stream["id"], "wide"):
                values = {"stream_id": ref, "task_id": tasks[0], "job_id": job_id}
                kw: dict[str, Any] = {"headers": b}
                if route.path in bodies:
                    kw["json"] = bodies[route.path]
                if route.path == "/v1/streams/{stream_id}/tasks" and method == "POST":
                    kw |= {"files": {"file": ("t.jsonl", jsonl(ROWS), "x")}, "data": {"name": "sneaky"}}
                mine = aclient.request(method, fill(route.path, values), **kw)
                nobody = aclient.request(
                    method,
                    fill(route.path, {**values, "stream_id": "str_" + "0" * 22, "job_id": "job_" + "0" * 22}),
                    **kw,
                )
                assert mine.status_code == 404, (method, route.path, mine.text)
                assert nobody.status_code == 404, (method, route.path, nobody.text)
                if not route.path.startswith("/v1/"):  # the web page: its HTML "not found"
                    checked.add(f"{method} {route.path}")
                    continue
                # the same answer as for nothing at all: the message names what was asked, nothing more
                asked = ref if "{stream_id}" in route.path else job_id
                assert mine.json()["error"]["code"] == nobody.json()["error"]["code"] == "not_found"
                assert mine.json()["error"].get("param") == nobody.json()["error"].get("param")
                assert asked in mine.json()["error"]["message"]
                checked.add(f"{method} {route.path}")
    assert len(checked) >= 20, sorted(checked)
    # the live event stream too
    with aclient.stream("GET", f"/v1/jobs/{job_id}/events", headers={**b, "accept": "text/event-stream"}) as r:
        assert r.status_code == 404
    # nothing changed: A still has its stream, its tasks served, its job as it was
    assert aclient.get("/v1/streams/wide", headers=a).status_code == 200
    assert [t["retired_at"] for t in aclient.get("/v1/streams/wide/tasks", headers=a).json()["data"]] == [None, None]
    assert aclient.get(f"/v1/jobs/{job_id}", headers=a).json()["cancel_requested"] is False
    # the OpenAI-compatible routes: the stream is no model of B's
    assert "wide" not in str(aclient.get("/v1/models", headers=b).json())
    assert aclient.get("/v1/models/wide", headers=b).status_code == 404
    r = aclient.post("/v1/completions", json={"model": "wide", "prompt": "x"}, headers=b)
    assert r.status_code == 404, r.text
    assert "wide" in str(aclient.get("/v1/models", headers=a).json())
    # the lists show B nothing of A's
    assert aclient.get("/v1/streams", headers=b).json()["data"] == []
    assert aclient.get("/v1/jobs", headers=b).json()["data"] == []
    assert aclient.get("/v1/jobs", params={"stream_id": stream["id"]}, headers=b).status_code == 404
    # the owner reaches every read
    for path in (
        "/tree",
        "/tree/versions",
        "/router",
        "/adapters",
        "/evaluations",
        "/tasks",
        f"/tasks/{tasks[1]}/path",
    ):
        assert aclient.get(f"/v1/streams/wide{path}", headers=a).status_code == 200, path


def test_cancel_of_another_keys_job_is_not_found(aclient: TestClient) -> None:
    _, a = new_key(aclient, "a")
    _, b = new_key(aclient, "b")
    assert aclient.post("/v1/streams", json={"name": "s"}, headers=a).status_code == 201
    r = aclient.post("/v1/streams/s/tasks", files={"file": ("t", jsonl(ROWS), "x")}, data={"name": "t"}, headers=a)
    assert r.status_code == 202, r.text
    job = r.json()["job"]["id"]
    r = aclient.post(f"/v1/jobs/{job}/cancel", headers=b)
    assert r.status_code == 404 and r.json()["error"] == {
        "code": "not_found",
        "message": f"no job {job!r}",
        "param": "job_id",
    }
    assert aclient.get(f"/v1/jobs/{job}", headers=a).json()["state"] == "queued"
    assert aclient.post(f"/v1/jobs/{job}/cancel", headers=a).json()["state"] == "cancelled"


def test_names_are_per_owner_and_the_admin_sees_everything(aclient: TestClient) -> None:
    a_id, a = new_key(aclient, "a")
    b_id, b = new_key(aclient, "b")
    # B learns nothing from a 409: the name is taken only in A's own namespace
    assert aclient.post("/v1/streams", json={"name": "support"}, headers=a).status_code == 201
    assert aclient.post("/v1/streams", json={"name": "support"}, headers=b).status_code == 201
    assert aclient.post("/v1/streams", json={"name": "support"}, headers=a).status_code == 409
    sa = aclient.get("/v1/streams/support", headers=a).json()
    sb = aclient.get("/v1/streams/support", headers=b).json()
    assert (sa["owner"], sb["owner"]) == (a_id, b_id) and sa["id"] != sb["id"]
    # the admin lists all and reaches each by id; by name it finds its own first, else the oldest
    listed = aclient.get("/v1/streams", headers=ADMIN).json()["data"]
    assert {s["id"] for s in listed} == {sa["id"], sb["id"]}
    assert aclient.get(f"/v1/streams/{sb['id']}", headers=ADMIN).json()["owner"] == b_id
    assert aclient.get("/v1/streams/support", headers=ADMIN).json()["id"] == sa["id"]
    assert aclient.post("/v1/streams", json={"name": "support"}, headers=ADMIN).json()["owner"] == "admin"
    assert aclient.get("/v1/streams/support", headers=ADMIN).json()["owner"] == "admin"
    # the admin may delete any stream
    assert aclient.delete(f"/v1/streams/{sb['id']}", headers=ADMIN).status_code == 200
    assert aclient.get("/v1/streams/support", headers=b).status_code == 404


def test_the_web_page_asks_for_a_key_and_shows_the_callers_streams(aclient: TestClient) -> None:
    _, a = new_key(aclient, "a")
    _, b = new_key(aclient, "b")
    assert aclient.post("/v1/streams", json={"name": "alpha"}, headers=a).status_code == 201
    locked = aclient.get("/")
    assert locked.status_code == 200 and 'id="key-form"' in locked.text and "alpha" not in locked.text
    assert 'id="key-form"' in aclient.get("/streams/alpha").text
    assert 'data-stream="alpha"' in aclient.get("/", headers=a).text
    assert 'data-stream="alpha"' not in aclient.get("/", headers=b).text
    assert aclient.get("/streams/alpha", headers=b).status_code == 404
    assert aclient.get("/streams/alpha", headers=a).status_code == 200
    assert_401(aclient.get("/", headers=bearer("tlk_nope")))


def test_auth_off_is_the_admin_for_everyone(client: TestClient, settings: Settings) -> None:
    assert not settings.auth
    assert client.post("/v1/streams", json={"name": "open"}).json()["owner"] == "admin"
    assert client.get("/v1/streams").status_code == 200
    r = client.post("/v1/keys", json={"name": "prepared"})  # keys can be made before auth is turned on
    assert r.status_code == 201
    assert client.get("/v1/streams", headers=bearer(r.json()["secret"])).json()["data"][0]["name"] == "open"


def test_settings_refuse_auth_without_a_strong_admin_key() -> None:
    with pytest.raises(ValueError, match="TREELORA_ADMIN_KEY"):
        Settings(auth=True)
    with pytest.raises(ValueError, match="at least 32"):
        Settings(auth=True, admin_key="short")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="printable ASCII"):
        Settings(admin_key="é" * 40)  # type: ignore[arg-type]


def test_a_cross_origin_form_post_cannot_upload_without_a_key(aclient: TestClient, asettings: Settings) -> None:
    """A page on another site can post a multipart form to the upload route without a preflight,
    but it cannot add the bearer header: refused before the body is read, nothing stored."""
    _, a = new_key(aclient, "a")
    assert aclient.post("/v1/streams", json={"name": "s"}, headers=a).status_code == 201
    before, blobs = row_counts(asettings.db_url), s3_keys(asettings)
    for origin in ({"Origin": "https://evil.example"}, {}):
        r = aclient.post(
            "/v1/streams/s/tasks", files={"file": ("t", jsonl(ROWS), "x")}, data={"name": "t"}, headers=origin
        )
        assert r.status_code in (401, 403), r.text
    assert row_counts(asettings.db_url) == before and s3_keys(asettings) == blobs
