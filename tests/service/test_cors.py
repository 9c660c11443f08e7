"""The CORS policy: none by default (no CORS header on any answer, so a page of another origin
reads nothing), the listed origins when configured; and a cross-origin form post (no preflight)
refused before its upload is read, with authentication off as well as on."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from api.main import create_app
from api.settings import Settings

from .conftest import jsonl, row_counts, s3_keys

APP = "https://app.example"
EVIL = "https://evil.example"
ADMIN_KEY = "admin-" + "c" * 40
ROWS = [{"prompt": f"Item {i}: what is it?", "completion": "apple"} for i in range(12)]


def preflight(client: TestClient, origin: str, path: str = "/v1/streams") -> dict[str, str]:
    r = client.options(
        path,
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type",
        },
    )
    return {k.lower(): v for k, v in r.headers.items()}


def cors_headers(headers: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in headers.items() if k.startswith("access-control-")}


@pytest.fixture
def cors_client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings.model_copy(update={"cors_origins": [APP]}))) as c:
        yield c


def test_no_cors_headers_by_default(client: TestClient) -> None:
    for origin in (APP, EVIL):
        assert cors_headers(preflight(client, origin)) == {}
        r = client.get("/v1/streams", headers={"Origin": origin})
        assert r.status_code == 200 and cors_headers(dict(r.headers)) == {}


def test_listed_origins_get_the_allow_headers(cors_client: TestClient) -> None:
    h = preflight(cors_client, APP)
    assert h["access-control-allow-origin"] == APP
    assert "authorization" in h["access-control-allow-headers"].lower()
    assert "POST" in h["access-control-allow-methods"]
    assert "access-control-allow-credentials" not in h  # bearer keys, never cookies
    r = cors_client.get("/v1/streams", headers={"Origin": APP})
    assert r.headers["access-control-allow-origin"] == APP
    # any other origin still gets none
    assert "access-control-allow-origin" not in preflight(cors_client, EVIL)
    assert "access-control-allow-origin" not in cors_client.get("/v1/streams", headers={"Origin": EVIL}).headers


def test_a_listed_origin_reads_the_401(settings: Settings) -> None:
    keyed = settings.model_copy(update={"cors_origins": [APP], "auth": True, "admin_key": SecretStr(ADMIN_KEY)})
    with TestClient(create_app(keyed)) as c:
        assert preflight(c, APP)["access-control-allow-origin"] == APP  # a preflight needs no key
        r = c.get("/v1/streams", headers={"Origin": APP})
        assert r.status_code == 401 and r.headers["access-control-allow-origin"] == APP
        r = c.get("/v1/streams", headers={"Origin": APP, "Authorization": f"Bearer {ADMIN_KEY}"})
        assert r.status_code == 200 and r.headers["access-control-allow-origin"] == APP


def upload(client: TestClient, name: str, **headers: str) -> int:
    files = {"file": ("t.jsonl", jsonl(ROWS), "application/octet-stream")}
    return client.post("/v1/streams/s/tasks", files=files, data={"name": name}, headers=headers).status_code


def test_a_cross_origin_form_post_is_refused_with_auth_off(client: TestClient, settings: Settings) -> None:
    """Authentication off (the embedded mode): a page on another site may still post a form to
    the service on the user's machine; it is refused (403 `cross_origin`) before the upload is
    read, and nothing is stored. Same-origin pages, listed origins and clients that send no
    Origin (curl, the SDK) are served."""
    assert not settings.auth
    assert client.post("/v1/streams", json={"name": "s"}).status_code == 201
    before, blobs = row_counts(settings.db_url), s3_keys(settings)
    for origin in (EVIL, "null", "http://testserver.evil.example", "http://127.0.0.1:9"):
        r = client.post(
            "/v1/streams/s/tasks",
            files={"file": ("t.jsonl", jsonl(ROWS), "application/octet-stream")},
            data={"name": "t"},
            headers={"Origin": origin},
        )
        assert r.status_code == 403 and r.json()["error"]["code"] == "cross_origin", (origin, r.text)
    assert client.delete("/v1/streams/s", headers={"Origin": EVIL}).status_code == 403
    assert row_counts(settings.db_url) == before and s3_keys(settings) == blobs
    assert upload(client, "same", Origin="http://testserver") == 202
    assert upload(client, "curl") == 202
    assert client.get("/v1/streams", headers={"Origin": EVIL}).status_code == 200  # a read: the browser hides it


def test_a_listed_origin_may_write(cors_client: TestClient) -> None:
    assert cors_client.post("/v1/streams", json={"name": "s"}, headers={"Origin": APP}).status_code == 201
    assert upload(cors_client, "t", Origin=APP) == 202
    assert upload(cors_client, "u", Origin=EVIL) == 403


def test_cors_origins_setting() -> None:
    assert Settings(cors_origins="https://a.example, http://localhost:3000/").cors_origins == [  # type: ignore[arg-type]
        "https://a.example",
        "http://localhost:3000",
    ]
    for bad in ("*", "a.example", "https://a.example/path", "ftp://a.example"):
        with pytest.raises(ValueError, match="cors_origins"):
            Settings(cors_origins=bad)  # type: ignore[arg-type]
