"""Routing confidence through the API: `GET .../router` reports the calibration each version
carries, and `low_confidence` follows it, on three tasks learned by the worker (tiny model): each
task has prompts of its own and notes that all three share, which no router can tell apart."""

from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient

from api.db import session_factory
from api.services import trees
from api.services.owners import ADMIN
from api.settings import Settings
from worker.runner import run_job

from .conftest import jsonl, make_stream

TEMPLATES = {
    "tickets": "Ticket {i}: the printer on floor {i} does not print anything at all.",
    "recipes": "Recipe {i}: bake the bread for {i} minutes, then let it cool on a rack.",
    "weather": "Forecast {i}: strong wind and rain expected near the coast on day {i}.",
}
SHARED = "Note {i}: please read the attached document before the meeting."


def rows(name: str) -> list[dict[str, str]]:
    own = [{"prompt": TEMPLATES[name].format(i=i), "completion": name} for i in range(24)]
    shared = [{"prompt": SHARED.format(i=i), "completion": name} for i in range(12)]
    return own + shared


def learn(client: TestClient, settings: Settings, name: str) -> None:
    data = rows(name)
    resp = client.post(
        "/v1/streams/s/tasks",
        files={"file": ("train.jsonl", jsonl(data), "x"), "eval_file": ("eval.jsonl", jsonl(data[:4]), "x")},
        data={"name": name},
    )
    assert resp.status_code == 202, resp.text
    assert run_job(resp.json()["job"]["id"], settings) == "done"


def predict(client: TestClient, prompt: str, **body: Any) -> dict[str, Any]:
    resp = client.post("/v1/streams/s/predict", json={"inputs": [prompt], "task": "auto", "max_new_tokens": 1, **body})
    assert resp.status_code == 200, resp.text
    return resp.json()["predictions"][0]  # type: ignore[no-any-return]


def test_router_reports_its_calibration_and_low_confidence_follows_it(wclient: TestClient, wsettings: Settings) -> None:
    make_stream(wclient)
    assert wclient.get("/v1/streams/s/router").json()["tasks"] == []  # nothing learned yet: version 0
    learn(wclient, wsettings, "tickets")
    one = wclient.get("/v1/streams/s/router").json()
    assert one["tasks"] == ["tickets"] and one["confidence"] == "single_task" and one["calibration"] is None
    alone = predict(wclient, SHARED.format(i=3))
    assert alone["task"] == "tickets" and alone["confidence"] == 1.0 and alone["low_confidence"] is False
    for name in ("recipes", "weather"):
        learn(wclient, wsettings, name)

    body = wclient.get("/v1/streams/s/router").json()
    assert body["version"] == 3 and body["tasks"] == list(TEMPLATES) and body["confidence"] == "calibrated"
    cal = body["calibration"]
    assert cal["held_out_prompts"] == 3 * 18  # half of each task's 36 training prompts, cross-fitted
    assert 0 < cal["wrong_routes"] < cal["held_out_prompts"] and 0 <= cal["ece"] <= 0.2 and cal["auroc"] >= 0.7
    assert body["threshold"] == cal["threshold"] and body["threshold_source"] == "router"
    assert cal["route_view"] in ("prototypes", "centroid", "discriminant")  # the best of them on the kept prompts
    assert 0.5 <= body["threshold"] < 1 and cal["features"][0] == f"{cal['route_view']}.margin"
    # an earlier version keeps the calibration it was made with
    assert wclient.get("/v1/streams/s/router", params={"version": 1}).json()["confidence"] == "single_task"
    assert wclient.get("/v1/streams/s/router", params={"version": 9}).status_code == 404
    assert wclient.get("/v1/streams/nope/router").status_code == 404

    for name, template in TEMPLATES.items():  # a prompt of one task alone: routed there, sure of it
        p = predict(wclient, template.format(i=100))
        assert p["task"] == name and p["confidence"] >= body["threshold"] and p["low_confidence"] is False
    shared = predict(wclient, SHARED.format(i=100))  # a note any of the three may own: flagged
    assert shared["confidence"] < body["threshold"] and shared["low_confidence"] is True
    assert shared["confidence"] < 0.6
    assert predict(wclient, SHARED.format(i=100), min_confidence=0.0)["low_confidence"] is False  # the request decides
    scored = wclient.post(
        "/v1/streams/s/score", json={"inputs": [SHARED.format(i=100)], "choices": list(TEMPLATES), "task": "auto"}
    )
    assert scored.status_code == 200 and scored.json()["results"][0]["low_confidence"] is True

    with session_factory(wsettings.db_url)() as session:  # the service's own setting overrides the router's
        fixed = trees.router(session=session, caller=ADMIN, stream_id="s", min_confidence=0.2)
    assert fixed["threshold"] == 0.2 and fixed["threshold_source"] == "settings"
