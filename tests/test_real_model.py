"""The few real-model tests: SmolLM2-135M-Instruct on real WordNet tasks (CPU, a few minutes)."""

from __future__ import annotations

import pytest
import torch

from treelora_core.batching import collate
from treelora_core.config import StreamConfig, TrainConfig
from treelora_core.data import load_wordnet
from treelora_core.learner import ContinualLearner

pytestmark = pytest.mark.slow


def test_treelora_learns_two_real_tasks_and_keeps_the_first_bit_identical(smollm2) -> None:  # type: ignore[no-untyped-def]
    model, tok = smollm2
    tasks = load_wordnet(n_tasks=2, n_train=72, n_test=24, seed=3)
    learner = ContinualLearner(
        model, tok, StreamConfig(strategy="treelora", train=TrainConfig(epochs=1, max_length=80, lr=2e-3))
    )
    zero_shot = [learner.evaluate(t, "base") for t in tasks]
    learner.learn(tasks[0])
    first = learner.evaluate(tasks[0], "task_id")
    ids, _ = collate(learner.encode(tasks[0].test[:8]), tok.pad_token_id)
    with torch.no_grad(), learner.bank.routed_path(learner.path_for(tasks[0].name)):
        before = learner.model(input_ids=ids).logits
    report = learner.learn(tasks[1])
    with torch.no_grad(), learner.bank.routed_path(learner.path_for(tasks[0].name)):
        after = learner.model(input_ids=ids).logits
    assert torch.equal(before, after)  # the first task's weights and outputs never moved
    assert report.placement["relative"] == tasks[0].name  # same template: the tree finds the relative
    assert first > zero_shot[0] + 10
    assert learner.evaluate(tasks[1], "auto") > zero_shot[1] + 10
    assert learner.evaluate(tasks[0], "auto") == first  # routing sends task-0 prompts to task 0
