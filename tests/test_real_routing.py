"""Routing confidence on the real model: SmolLM2-135M-Instruct embeddings of WordNet tasks whose
label sets overlap, so that routing errs and its confidence must tell (CPU, about a minute)."""

from __future__ import annotations

import pytest
import torch

from treelora_core.calibration import auroc, ece
from treelora_core.config import StreamConfig, TrainConfig
from treelora_core.data import load_wordnet, wordnet_label_sets
from treelora_core.learner import ContinualLearner
from treelora_core.models import load_base
from treelora_core.router import PrototypeRouter

pytestmark = pytest.mark.slow


def test_confidence_is_calibrated_and_flags_wrong_routes_on_real_embeddings() -> None:
    # 16 tasks over overlapping label sets with few training prompts each: the discriminant routes
    # 98.5% of these test prompts, and its 7 wrong routes are what the confidence must tell
    tasks = load_wordnet(n_tasks=16, n_train=24, n_test=30, seed=11, classes=wordnet_label_sets(16, seed=7))
    model, tok = load_base()  # its own copy: nothing else wraps it
    learner = ContinualLearner(model, tok, StreamConfig(train=TrainConfig(max_length=64)))
    router = PrototypeRouter()
    for t in tasks:
        router.add(t.name, learner.embed([e.prompt for e in t.train]))
    test = [learner.embed([e.prompt for e in t.test]) for t in tasks]
    labels = torch.cat([torch.full((len(x),), i) for i, x in enumerate(test)])
    routes = router.route(torch.cat(test))
    right = torch.tensor([router.names.index(n) for n, _ in routes]) == labels
    conf = torch.tensor([c for _, c in routes], dtype=torch.float64)
    assert router.route_view == PrototypeRouter.DISCRIMINANT
    assert 0.9 < float(right.double().mean()) < 1.0  # overlapping label sets: some routes are wrong
    assert (auroc(conf, right) or 0.0) >= 0.85 and ece(conf, right) <= 0.1
    low = conf < router.threshold
    assert float(low[~right].double().mean()) >= 0.6 and float(low[right].double().mean()) <= 0.1
