"""Routing confidence as a calibrated probability: the calibrator on score matrices, the router's
cross-fitted held-out prompts and its refits, and persistence of both (no model needed but a tiny
one for the learner round trip)."""

from __future__ import annotations

import copy
import json

import pytest
import torch
import torch.nn.functional as F

from treelora_core import persist
from treelora_core.calibration import MIN_THRESHOLD, Calibrator, auroc, ece
from treelora_core.router import PrototypeRouter


def synthetic_scores(
    n: int, tasks: int, seed: int, second_view: bool = False
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Score views of `n` inputs whose true task is `labels`: some inputs are clear (their task
    scores well above the others), the rest ambiguous (their task scores like the others). With
    `second_view`, the first view's signal is weak for every input and a second view carries
    the ambiguity instead."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(tasks, (n,), generator=g)
    clear = torch.rand(n, generator=g) < 0.8
    signal = torch.where(clear, 0.4 + 0.3 * torch.rand(n, generator=g), torch.zeros(n))
    rows = torch.arange(n)
    first = 0.1 * torch.randn(n, tasks, generator=g)
    if not second_view:
        first[rows, labels] += signal
        return [first], labels
    first[rows, labels] += 0.12  # right more often than not, but the margin says little
    second = 0.1 * torch.randn(n, tasks, generator=g)
    second[rows, labels] += signal
    return [first, second], labels


def fit_and_score(
    views: list[torch.Tensor], labels: torch.Tensor, test_seed: int, second_view: bool = False, use: int = 2
) -> dict[str, float]:
    """Fit on `views` (the first `use` of them), score fresh inputs drawn the same way."""
    picks = views[0].argmax(1)
    cal = Calibrator.fit(views[:use], picks, picks == labels)
    test, test_labels = synthetic_scores(len(labels), views[0].shape[1], test_seed, second_view)
    test = test[:use]
    test_picks = test[0].argmax(1)
    right = test_picks == test_labels
    conf = cal.predict(test, test_picks)
    low = conf < cal.threshold
    return {
        "ece": ece(conf, right),
        "auroc": auroc(conf, right) or 0.0,
        "spread": float(conf.std()),
        "right_flagged": float(low[right].double().mean()),
        "wrong_flagged": float(low[~right].double().mean()),
        "accuracy": float(right.double().mean()),
    }


def test_figures_of_known_cases() -> None:
    right = torch.tensor([True, True, False, False])
    assert auroc(torch.tensor([0.9, 0.8, 0.2, 0.1]), right) == 1.0
    assert auroc(torch.tensor([0.1, 0.2, 0.8, 0.9]), right) == 0.0
    assert auroc(torch.full((4,), 0.7), right) == 0.5  # an inert confidence ranks nothing
    assert auroc(torch.tensor([0.9, 0.8]), torch.tensor([True, True])) is None
    assert ece(torch.tensor([1.0, 1.0, 0.0, 0.0]), right) == 0.0
    assert ece(torch.full((4,), 0.9), right) == pytest.approx(0.4)  # constant 0.9 against 50% right


def test_calibrated_confidence_separates_right_from_wrong_routes_on_fresh_inputs() -> None:
    views, labels = synthetic_scores(3000, 8, seed=0)
    got = fit_and_score(views, labels, test_seed=1)
    # an inert confidence (constant, or the same for right and wrong routes) fails every line
    assert got["spread"] > 0.2
    assert got["auroc"] >= 0.9
    assert got["ece"] <= 0.05
    assert got["right_flagged"] <= 0.06 and got["wrong_flagged"] >= 0.85


def test_a_second_view_is_used_when_it_carries_the_signal() -> None:
    views, labels = synthetic_scores(3000, 8, seed=2, second_view=True)
    both = fit_and_score(views, labels, test_seed=3, second_view=True)
    first_only = fit_and_score(views, labels, test_seed=3, second_view=True, use=1)
    assert both["auroc"] >= 0.9 and both["auroc"] > first_only["auroc"] + 0.1
    assert both["ece"] <= 0.05


def test_calibration_is_plain_data_and_round_trips_exactly() -> None:
    views, labels = synthetic_scores(800, 5, seed=4, second_view=True)
    picks = views[0].argmax(1)
    cal = Calibrator.fit(views, picks, picks == labels)
    again = Calibrator.from_json(json.loads(json.dumps(cal.to_json())))
    assert again == cal and torch.equal(again.predict(views, picks), cal.predict(views, picks))
    figures = cal.figures
    assert figures["held_out_prompts"] == 800 and figures["wrong_routes"] == int((picks != labels).sum())
    assert 0 <= figures["ece"] <= 0.1 and figures["auroc"] >= 0.8


def test_only_right_routes_give_a_constant_that_flags_nothing() -> None:
    scores = torch.eye(4).repeat(10, 1) + 0.01 * torch.randn(40, 4, generator=torch.Generator().manual_seed(0))
    picks = scores.argmax(1)
    cal = Calibrator.fit([scores], picks, torch.ones(40, dtype=torch.bool))
    conf = cal.predict([torch.randn(7, 4)], torch.zeros(7, dtype=torch.long))
    assert cal.features == () and bool((conf > 0.9).all()) and not bool((conf < cal.threshold).any())
    assert cal.figures["auroc"] is None and cal.figures["wrong_routes"] == 0


def clusters(seed: int, per_task: int, centers: torch.Tensor, spread: float = 0.35) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [c + spread * torch.randn(per_task, centers.shape[1], generator=g) for c in centers]


def overlapping_centers(tasks: int = 6, dim: int = 24) -> torch.Tensor:
    """Task centers in pairs: each pair's two centers are close, so the router confuses them."""
    g = torch.Generator().manual_seed(123)
    base = torch.randn(tasks // 2, dim, generator=g)
    return torch.cat([base + 0.12 * torch.randn(tasks // 2, dim, generator=g) for _ in range(2)])


def trained_router(centers: torch.Tensor, prototypes: int = 4) -> PrototypeRouter:
    router = PrototypeRouter(per_task=prototypes)
    for i, x in enumerate(clusters(0, 96, centers)):
        router.add(f"t{i}", x)
    return router


def test_router_confidence_is_calibrated_on_unseen_prompts_and_refitted_as_tasks_arrive() -> None:
    centers = overlapping_centers()
    router = PrototypeRouter(per_task=4)
    held = []
    for i, x in enumerate(clusters(0, 96, centers)):
        router.add(f"t{i}", x)
        if i == 0:
            assert router.calibrator is None and router.route(x[:3]) == [("t0", 1.0)] * 3  # one task: always right
        else:
            assert router.calibrator is not None
            held.append(router.calibrator.figures["held_out_prompts"])
    assert held == [48 * k for k in range(2, 7)]  # refitted on every task's held-out prompts at each add
    test = clusters(1, 200, centers)
    labels = torch.cat([torch.full((len(x),), i) for i, x in enumerate(test)])
    routes = router.route(torch.cat(test))
    right = torch.tensor([int(name[1:]) for name, _ in routes]) == labels
    conf = torch.tensor([c for _, c in routes])
    assert 0.6 < float(right.double().mean()) < 0.97  # the pairs are confused: wrong routes exist
    assert (auroc(conf, right) or 0.0) >= 0.85 and ece(conf, right) <= 0.08
    assert float(conf[right].mean()) - float(conf[~right].mean()) > 0.2
    low = conf < router.threshold
    # the pairs overlap: some wrong routes look like right ones (the discriminant, which routes
    # here, leaves the closest of them), but a third or more are flagged, few right ones
    assert float(low[right].double().mean()) <= 0.1 and float(low[~right].double().mean()) >= 0.3


def test_held_out_prompts_are_scored_against_prototypes_built_without_them() -> None:
    centers = overlapping_centers()
    router = trained_router(centers)
    (protos, centroid, disc), labels = router.heldout_views()
    direct = router.views(torch.cat([router.heldout[n][0] for n in router.names]))
    rows = torch.arange(len(labels))
    # their own task's cross-fitted score is lower than its score with them inside the prototypes
    assert float(protos[rows, labels].mean()) < float(direct[0][rows, labels].mean())
    assert float(centroid[rows, labels].mean()) < float(direct[1][rows, labels].mean())
    assert float(disc[rows, labels].mean()) < float(direct[2][rows, labels].mean())  # and its mean
    other = labels != 0
    assert torch.equal(protos[other, 0], direct[0][other, 0])  # other tasks' prototypes never held them
    assert torch.allclose(disc[other, 0], direct[2][other, 0])


def test_router_round_trips_through_a_learner_and_alone(tiny_learner, tiny_base, tmp_path) -> None:  # type: ignore[no-untyped-def]
    learner = tiny_learner("per_task_lora")
    learner.router = trained_router(overlapping_centers(), prototypes=PrototypeRouter().per_task)  # as saved
    probe = torch.cat(clusters(7, 5, overlapping_centers()))
    expected = learner.router.route(probe)
    manifest, blobs = persist.to_parts(learner)
    assert json.loads(json.dumps(manifest))["router_calibration"] == manifest["router_calibration"]
    rebuilt = persist.from_parts(manifest, blobs.__getitem__, copy.deepcopy(tiny_base), learner.tok).router
    saved = persist.load(persist.save(learner, tmp_path / "l"), copy.deepcopy(tiny_base), learner.tok).router
    for r in (rebuilt, saved):
        assert r.calibrator == learner.router.calibrator and r.route(probe) == expected
        assert r.heldout.keys() == learner.router.heldout.keys()
        assert all(torch.equal(r.heldout[n][0], learner.router.heldout[n][0]) for n in r.heldout)
    alone = persist.router_from_parts(manifest, blobs.__getitem__)
    assert alone.route(probe) == expected and alone.heldout == {} and alone.threshold == learner.router.threshold
    # a refit after a reload gives the calibration the original router would have
    extra = clusters(9, 96, F.normalize(torch.randn(1, probe.shape[1]), dim=-1) * 3)[0]
    learner.router.add("t6", extra)
    rebuilt.add("t6", extra)
    assert rebuilt.calibrator == learner.router.calibrator


def test_a_router_saved_before_calibration_routes_with_its_old_confidence() -> None:
    router = trained_router(overlapping_centers())
    old = PrototypeRouter(per_task=4)
    old.load(router.names, {f"proto.{n}": p for n, p in zip(router.names, router.protos, strict=True)})
    probe = torch.cat(clusters(3, 4, overlapping_centers()))
    scores = old.scores(probe)
    shares = torch.softmax(scores / old.temperature, dim=1).max(1).values
    routes = old.route(probe)
    assert old.calibrator is None and old.threshold == MIN_THRESHOLD
    assert [n for n, _ in routes] == [router.names[int(k)] for k in scores.argmax(1)]
    assert torch.allclose(torch.tensor([c for _, c in routes], dtype=torch.float64), shares.double())
