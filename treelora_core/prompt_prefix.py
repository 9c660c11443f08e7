"""Shared prompt prefixes in batched generation: the tokens every prompt of a batch starts with
(an instruction, a chat template's header) are read once, not once per row.

A task's prompts usually share their instruction: on WordNet's five test sets the prefill runs
9,892 prompt positions with it against 19,492 without (`python -m benchmarks.prompt_prefix`).
`prefix_padded` lays a batch out as [prefix | pads | each row's rest]; the prefix's keys and
values are computed for one row and repeated to the batch, and generation goes on from them.
Positions come from the attention mask (the pads are masked and skipped), so each row sees
exactly the tokens and positions it would see alone: the answers are those of `left_pad`'s
layout (tested), at a fraction of the prefill.

Right-padded batches (training rows, routing prompts) need no layout: their prefix already sits
in the first columns, and `batching.hidden_entering` uses `shared_length` the same way.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import PreTrainedModel

MIN_SHARED = 8  # a shorter common prefix is not worth the extra forward call


def common_prefix(seqs: list[list[int]]) -> int:
    """How many leading tokens every sequence shares, leaving each at least one token of its own
    (generation needs one uncached token per row)."""
    if not seqs:
        return 0
    first, n = seqs[0], min(len(s) for s in seqs) - 1
    for s in seqs[1:]:
        k = 0
        while k < n and s[k] == first[k]:
            k += 1
        n = k
    return max(n, 0)


def shared_length(seqs: list[list[int]]) -> int:
    """The prefix a batch reads once: its common prefix, if at least `MIN_SHARED` tokens and
    the batch has two rows or more, else 0."""
    shared = common_prefix(seqs) if len(seqs) > 1 else 0
    return shared if shared >= MIN_SHARED else 0


def prefix_padded(
    seqs: list[list[int]], shared: int, pad_id: int, device: torch.device | str = "cpu"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Ids and attention mask with the first `shared` tokens in the first columns of every row and
    the padding after them (`left_pad` with `shared=0`)."""
    t = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), t), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), t), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, :shared] = torch.tensor(s[:shared], dtype=torch.long)
        mask[i, :shared] = 1
        rest = len(s) - shared
        if rest:
            ids[i, t - rest :] = torch.tensor(s[shared:], dtype=torch.long)
            mask[i, t - rest :] = 1
    return ids.to(device), mask.to(device)


def prefilled(model: PreTrainedModel, ids: torch.Tensor, shared: int) -> Any:
    """The KV cache of the shared prefix (read from the first row), repeated to every row: pass it
    to `generate` as `past_key_values` with the full ids and mask. The caller routes the adapters
    (the rows must share one path). None for a model whose cache cannot be repeated: the layout
    is then generated from scratch, which gives the same answers (positions skip the pads)."""
    cache = model(input_ids=ids[:1, :shared], use_cache=True).past_key_values
    repeat = getattr(cache, "batch_repeat_interleave", None)
    if repeat is None:
        return None
    repeat(ids.shape[0])
    return cache
