"""Routing without a task id: flat prototypes and tree descent, on hand-made embeddings."""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F

from treelora_core.adapter_tree import AdapterTree
from treelora_core.router import PrototypeRouter

PLACEMENTS = [
    {},
    {"relative": "a", "branch_at": 2},
    {"relative": "a", "branch_at": 0},
    {"relative": "c", "branch_at": 3},
]


def test_replayed_tree_and_descent() -> None:
    nodes = AdapterTree.replay(PLACEMENTS, ["a", "b", "c", "d"], n_blocks=4).view_nodes()
    tops = [n for n in nodes if n["parent"] is None]
    assert sorted(sorted(n["members"]) for n in tops) == [["a", "b"], ["c", "d"]]
    router = PrototypeRouter(per_task=1)
    basis = torch.eye(4)
    for i, name in enumerate("abcd"):
        router.add(name, basis[i : i + 1])
    scores = torch.tensor([0.9, 0.8, 0.85, 0.1])  # subtree {a, b} wins on average, then "a"
    assert router.descend(scores, nodes) == 0
    # flat routing takes the single best task; descent may differ when a subtree is better on average
    scores = torch.tensor([0.5, 0.1, 0.6, 0.55])
    assert int(scores.argmax()) == 2 and router.descend(scores, nodes) == 2
    scores = torch.tensor([0.7, 0.65, 0.72, 0.1])
    assert int(scores.argmax()) == 2 and router.descend(scores, nodes) == 0
    assert router.descend(scores, []) == 2  # no tree: same as flat


def test_a_router_without_some_tasks_never_picks_them() -> None:
    nodes = AdapterTree.replay(PLACEMENTS, ["a", "b", "c", "d"], n_blocks=4).view_nodes()
    router = PrototypeRouter(per_task=1)
    basis = torch.eye(4)
    for i, name in enumerate("abcd"):
        router.add(name, basis[i : i + 1])
    rest = router.without({"a", "c"})
    assert rest.names == ["b", "d"] and router.names == ["a", "b", "c", "d"]  # the original is untouched
    picks = rest.route(basis, None) + rest.route(basis, nodes)  # each task's own embedding, flat and by tree
    assert {t for t, _ in picks} <= {"b", "d"} and all(0 < c <= 1 for _, c in picks)
    assert [t for t, _ in rest.route(basis[1:2], nodes)] == ["b"] and [t for t, _ in rest.route(basis[3:4])] == ["d"]
    only_d = router.without({"a", "b", "c"})  # a whole subtree left out: descent takes the other
    assert {t for t, _ in only_d.route(basis, nodes)} == {"d"}


def test_committed_serving_benchmark_has_the_documented_shape() -> None:
    path = Path(__file__).resolve().parent.parent / "docs" / "benchmarks" / "serving.json"
    data = json.loads(path.read_text())
    assert set(data["mixes"]) == {"1", "8", "32", "10", "100", "1000", "mixed_lengths"}
    assert isinstance(data["model"], str) and data["setup"]["repeats"] >= 3
    for mix, systems in data["mixes"].items():
        if mix in ("1", "8", "32"):
            assert set(systems) == {"treelora", "base", "peft_switch", "peft_mixed", "merged_switch"}
        elif mix == "mixed_lengths":
            assert set(systems) == {"treelora", "treelora_request_level", "treelora_prefill_64", "treelora_prefill_256"}
        else:
            assert set(systems) == {"treelora"} and systems["treelora"]["runs"][0]["pool_hit_rate"] is not None
        for r in systems.values():
            assert {"tokens_per_s", "p50_ms", "p99_ms"} <= set(r) and r["errors"] == 0
            assert len(r["runs"]) == data["setup"]["repeats"]
            assert sorted([r["tokens_per_s"], *r["tokens_per_s_range"]])[1] == r["tokens_per_s"]  # a median


def _shared_topics(seed: int, n: int) -> list[torch.Tensor]:
    """Two tasks whose prompts share their large, varied topic directions and differ only along
    one small direction: nearest prototypes follow the topics, a linear head the difference."""
    g = torch.Generator().manual_seed(seed)
    topics = torch.randn(8, 32, generator=torch.Generator().manual_seed(99)) * 3
    topics[:, 0] = 0.0  # the tasks' direction carries no topic
    out = []
    for task in range(2):
        x = topics[torch.randint(0, 8, (n,), generator=g)] + 1.5 * torch.randn(n, 32, generator=g)
        x[:, 0] = (1.0 if task else -1.0) + 0.3 * torch.randn(n, generator=g)
        out.append(x)
    return out


def _accuracy(views: torch.Tensor, labels: torch.Tensor) -> float:
    return float((views.argmax(1) == labels).double().mean())


def test_the_discriminant_routes_by_what_separates_tasks_task_by_task_and_survives_a_reload() -> None:
    """Tasks that share large topic directions and differ along a small one: nearest prototypes
    follow the topics, the linear discriminant (pooled within-task covariance) the difference; the
    router picks it from its kept prompts. Its scatter, summed task by task, is the batch one."""
    train, test = _shared_topics(0, 128), _shared_topics(1, 200)
    labels = torch.cat([torch.full((len(x),), i) for i, x in enumerate(test)])
    x = torch.cat(test)
    router = PrototypeRouter()
    for i, t in enumerate(train):
        router.add(f"t{i}", t)
    views = router.views(x)
    assert router.route_view == PrototypeRouter.DISCRIMINANT and router.head is None
    assert _accuracy(views[PrototypeRouter.DISCRIMINANT], labels) > 0.95 > 0.8 > _accuracy(views[0], labels)
    assert [n for n, _ in router.route(x)] == [f"t{int(k)}" for k in views[PrototypeRouter.DISCRIMINANT].argmax(1)]
    # the scatter, summed task by task over the prompts a task does not keep for calibration
    unit = [F.normalize(t, dim=-1).double() for t in train]
    kept = [{tuple(h.float().tolist()) for h in router.heldout[f"t{i}"][0]} for i in range(len(train))]
    fit = [u[torch.tensor([tuple(r.half().float().tolist()) not in kept[i] for r in u])] for i, u in enumerate(unit)]
    assert [len(f) for f in fit] == [len(t) - len(router.heldout[f"t{i}"][0]) for i, t in enumerate(train)]
    batch = sum((f - f.mean(0)).T @ (f - f.mean(0)) for f in fit)
    assert router.scatter is not None and torch.allclose(router.scatter, batch, atol=1e-5)
    loaded = PrototypeRouter()
    loaded.load(router.names, router.state(), router.calibration_json())
    assert loaded.route(x[:50]) == router.route(x[:50])
    # saved before the discriminant existed (no means, no scatter, an older calibration): it
    # routes as it did, by its prototypes
    legacy = PrototypeRouter()
    old = {k: v for k, v in router.state().items() if not k.startswith(("mean.", "scatter", "heldout_means"))}
    legacy.load(router.names, old)
    assert legacy.route_view == 0
    assert [n for n, _ in legacy.route(x[:50])] == [f"t{int(k)}" for k in views[0][:50].argmax(1)]


def test_the_linear_head_survives_save_and_leave_out() -> None:
    train, test = _shared_topics(0, 128), _shared_topics(1, 200)
    labels = torch.cat([torch.full((len(x),), i) for i, x in enumerate(test)])
    x = torch.cat(test)
    head = PrototypeRouter(head=True)
    for i, t in enumerate(train):
        head.add(f"t{i}", t)
    assert head.head is not None and _accuracy(head.views(x)[PrototypeRouter.LINEAR], labels) > 0.95
    # it routes only where it beats the best of the other views (here the discriminant) on the
    # kept prompts by McNemar's margin; the routes follow whichever view routes
    assert head.route_view == (PrototypeRouter.LINEAR if head.head_routes else PrototypeRouter.DISCRIMINANT)
    assert [n for n, _ in head.route(x)] == [f"t{int(k)}" for k in head.views(x)[head.route_view].argmax(1)]
    # saved and loaded: the same routes; saved without a head (older versions): no head
    loaded = PrototypeRouter(head=True)
    loaded.load(head.names, head.state(), head.calibration_json())
    assert loaded.route(x[:50]) == head.route(x[:50])
    legacy = PrototypeRouter(head=True)
    legacy.load(head.names, {k: v for k, v in head.state().items() if not k.startswith("head.")})
    assert legacy.head is None
    # a router without a task never picks the left-out task
    assert {name for name, _ in head.without({"t1"}).route(x)} == {"t0"}


def test_a_calibration_saved_with_the_older_views_reads_them_by_name() -> None:
    """Before the discriminant view, the head's view was number 2: a saved calibration's
    features are read by the names it was saved with."""
    router = PrototypeRouter(head=True)
    for i, t in enumerate(_shared_topics(0, 64)):
        router.add(f"t{i}", t)
    saved = router.calibration_json()
    assert saved is not None
    old = {**saved, "views": ["prototypes", "centroid", "linear"], "features": [[0, "margin"], [2, "margin"]]}
    again = PrototypeRouter(head=True)
    again.load(router.names, router.state(), old)
    assert again.calibrator is not None
    assert again.calibrator.features == ((0, "margin"), (PrototypeRouter.LINEAR, "margin"))
