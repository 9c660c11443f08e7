"""Shared prompt prefixes in batched generation and in the training cache's first pass: the prefix
is read once, and every row's scores (hidden states) are those of the plain batch."""

from __future__ import annotations

import pytest
import torch

from treelora_core.batching import (
    PrefixCache,
    collate,
    hidden_after,
    hidden_entering,
    left_pad,
    mean_pooled,
    model_loss,
)
from treelora_core.models import Encoded, blocks
from treelora_core.prompt_prefix import MIN_SHARED, common_prefix, prefilled, prefix_padded

from .conftest import toy_task

INSTRUCTION = "Classify the item into one of: fruit, animal, tool, colour. Answer with one word.\nItem:"
ITEMS = [" a ripe pear", " zebra", " the hammer on the shelf by the door", " teal", " an old rusty saw", " plum"]


def test_common_prefix_leaves_every_row_a_token_of_its_own() -> None:
    assert common_prefix([[1, 2, 3, 4], [1, 2, 3, 5], [1, 2, 9]]) == 2
    assert common_prefix([[1, 2, 3], [1, 2, 3, 4]]) == 2  # the shorter row keeps its last token
    assert common_prefix([[1, 2], [1, 2]]) == 1
    assert common_prefix([[7, 1], [8, 1]]) == 0
    assert common_prefix([[5]]) == 0 and common_prefix([]) == 0


def test_prefix_padded_puts_the_pads_after_the_prefix() -> None:
    seqs = [[1, 2, 3], [1, 2, 4, 5, 6]]
    ids, mask = prefix_padded(seqs, 2, 0)
    assert ids.tolist() == [[1, 2, 0, 0, 3], [1, 2, 4, 5, 6]]
    assert mask.tolist() == [[1, 1, 0, 0, 1], [1, 1, 1, 1, 1]]
    assert [t.tolist() for t in prefix_padded(seqs, 0, 0)] == [t.tolist() for t in left_pad(seqs, 0)]


def scores(model, ids, mask, pad_id, **kw):  # type: ignore[no-untyped-def]
    out = model.generate(
        input_ids=ids,
        attention_mask=mask,
        max_new_tokens=3,
        do_sample=False,
        pad_token_id=pad_id,
        output_scores=True,
        return_dict_in_generate=True,
        **kw,
    )
    return out.sequences[:, ids.shape[1] :], torch.stack(out.scores, 1)  # (B, new), (B, new, V)


@torch.no_grad()
def test_generation_from_the_shared_prefix_gives_the_left_padded_scores(tiny_base, tokenizer) -> None:  # type: ignore[no-untyped-def]
    seqs = [tokenizer(INSTRUCTION + item)["input_ids"] for item in ITEMS]
    shared = common_prefix(seqs)
    assert shared >= MIN_SHARED
    pad = tokenizer.pad_token_id
    plain_ids, plain_mask = left_pad(seqs, pad)
    want_tokens, want = scores(tiny_base, plain_ids, plain_mask, pad)

    ids, mask = prefix_padded(seqs, shared, pad)
    fed: list[int] = []
    hook = blocks(tiny_base)[0].register_forward_pre_hook(
        lambda m, a, kw: fed.append(int((a[0] if a else kw["hidden_states"]).shape[:2].numel())), with_kwargs=True
    )
    try:
        got_tokens, got = scores(tiny_base, ids, mask, pad, past_key_values=prefilled(tiny_base, ids, shared))
    finally:
        hook.remove()
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    assert torch.equal(got_tokens, want_tokens)
    # the prefix was read once: the first block saw (B - 1) * shared fewer token positions
    assert sum(fed) == plain_ids.numel() + 2 * len(seqs) - (len(seqs) - 1) * shared


@pytest.mark.parametrize("strategy", ["treelora", "seq_lora"])
def test_the_learner_reads_a_batchs_shared_prefix_once_and_answers_as_alone(tiny_learner, strategy: str) -> None:  # type: ignore[no-untyped-def]
    learner = tiny_learner(strategy)
    tasks = [toy_task("alpha", "apple"), toy_task("beta", "zebra")]
    for t in tasks:
        learner.learn(t)
    prompts = [INSTRUCTION + item for item in ITEMS]
    names = ["alpha", "beta", "alpha", "alpha", "beta", "alpha"] if learner.strategy.needs_task_id else [None] * 6
    paths = [learner.path_for(n) for n in names]
    fed: list[int] = []
    hook = blocks(learner.model)[0].register_forward_pre_hook(
        lambda m, a, kw: fed.append(int((a[0] if a else kw["hidden_states"]).shape[1])), with_kwargs=True
    )
    try:
        batched = learner.generate(prompts, paths, max_new_tokens=3)
        shared_fed = list(fed)
        fed.clear()
        plain = learner.generate(prompts, paths, max_new_tokens=3, share_prefix=False)
    finally:
        hook.remove()
    alone = [learner.generate([p], [q], max_new_tokens=3)[0] for p, q in zip(prompts, paths, strict=True)]
    assert batched == alone == plain
    longest = max(len(learner.fmt.encode_prompt(p, 3)) for p in prompts)
    assert max(shared_fed) < longest  # each batch's first pass read only the rows' own tokens after the prefix
    assert max(fed) == longest  # without sharing, the longest batch reads its whole width


@torch.no_grad()
def test_the_prefix_layout_without_a_cache_gives_the_same_answers(tiny_base, tokenizer) -> None:  # type: ignore[no-untyped-def]
    """A model whose cache cannot be repeated generates the layout from scratch: pads in the
    middle are masked and skipped by the positions, so the answers are the left-padded ones."""
    seqs = [tokenizer(INSTRUCTION + item)["input_ids"] for item in ITEMS]
    pad = tokenizer.pad_token_id
    want_tokens, want = scores(tiny_base, *left_pad(seqs, pad), pad)
    got_tokens, got = scores(tiny_base, *prefix_padded(seqs, common_prefix(seqs), pad), pad)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    assert torch.equal(got_tokens, want_tokens)


def training_rows(tokenizer) -> list[Encoded]:  # type: ignore[no-untyped-def]
    rows = []
    for item, answer in zip(ITEMS, ["fruit", "animal", "tool", "colour", "tool", "fruit"], strict=True):
        prompt, full = (
            tokenizer(INSTRUCTION + item)["input_ids"],
            tokenizer(INSTRUCTION + item + " " + answer)["input_ids"],
        )
        rows.append(Encoded(full, [-100] * len(prompt) + full[len(prompt) :], len(prompt)))
    return rows


@torch.no_grad()
def test_the_cache_fill_reads_the_shared_prefix_once_and_equals_the_plain_pass(tiny_base, tokenizer) -> None:  # type: ignore[no-untyped-def]
    """The hidden state entering block `start`, computed with the prefix run once, is the plain
    forward's (right-padded rows, every position of every row), and the cached loss equals the
    model's loss on the first pass and on the next."""
    rows = training_rows(tokenizer)
    ids, labels = collate(rows, tokenizer.pad_token_id)
    start = 2
    seen: list[torch.Tensor] = []
    hook = blocks(tiny_base)[start].register_forward_pre_hook(
        lambda m, a, kw: seen.append(a[0] if a else kw["hidden_states"]), with_kwargs=True
    )
    try:
        want_loss = model_loss(tiny_base, ids, labels)
    finally:
        hook.remove()
    fed: list[int] = []
    hook = blocks(tiny_base)[0].register_forward_pre_hook(
        lambda m, a, kw: fed.append(int((a[0] if a else kw["hidden_states"]).shape[:2].numel())), with_kwargs=True
    )
    try:
        got = hidden_entering(tiny_base, ids, start, [r.input_ids for r in rows])
    finally:
        hook.remove()
    for row, r in enumerate(rows):
        n = len(r.input_ids)
        torch.testing.assert_close(got[row, :n], seen[0][row, :n], rtol=1e-5, atol=1e-5)
    shared = common_prefix([r.input_ids for r in rows])
    assert shared >= MIN_SHARED
    assert sum(fed) == ids.numel() - (len(rows) - 1) * shared  # the prefix ran for one row
    cache = PrefixCache(tiny_base, start)
    keys = list(range(len(rows)))
    torch.testing.assert_close(cache.loss(ids, labels, keys, rows), want_loss, rtol=1e-5, atol=1e-5)
    assert set(cache.store) == set(keys)
    torch.testing.assert_close(cache.loss(ids, labels, keys, rows), want_loss, rtol=1e-5, atol=1e-5)


@torch.no_grad()
def test_routing_embeddings_read_the_shared_prefix_once_and_equal_each_prompt_alone(tiny_base, tokenizer) -> None:  # type: ignore[no-untyped-def]
    """A batch's embeddings (prefix read once, right padding) are each prompt's embedding alone,
    and those of the plain left-padded pass that any causal LM gets."""
    seqs = [tokenizer(INSTRUCTION + item)["input_ids"] for item in ITEMS]
    pad = tokenizer.pad_token_id
    fed: list[int] = []
    hook = blocks(tiny_base)[0].register_forward_pre_hook(
        lambda m, a, kw: fed.append(int((a[0] if a else kw["hidden_states"]).shape[:2].numel())), with_kwargs=True
    )
    try:
        batched = mean_pooled(tiny_base, seqs, pad, "cpu")
    finally:
        hook.remove()
    alone = torch.cat([mean_pooled(tiny_base, [s], pad, "cpu") for s in seqs])
    ids, mask = left_pad(seqs, pad)
    h = hidden_after(tiny_base, ids, mask, max(1, len(blocks(tiny_base)) // 4))
    plain = (h * mask.unsqueeze(-1)).sum(1) / mask.sum(1, keepdim=True)
    torch.testing.assert_close(batched, alone, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(batched, plain, rtol=1e-4, atol=1e-4)
    shared = common_prefix(seqs)
    assert sum(fed) == len(seqs) * max(map(len, seqs)) - (len(seqs) - 1) * shared
