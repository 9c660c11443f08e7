"""Collation and the forward passes the learner needs (full, from a cached block, embeddings)."""

from __future__ import annotations

import torch
from transformers import DynamicCache, PreTrainedModel
from transformers.masking_utils import create_causal_mask

from .models import Encoded, blocks
from .prompt_prefix import prefix_padded, shared_length
from .types import Path


def right_pad(seqs: list[list[int]], fill: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """(B, T) rows, each sequence in its first columns and `fill` after it."""
    out = torch.full((len(seqs), max(len(q) for q in seqs)), fill, dtype=torch.long)
    for i, q in enumerate(seqs):
        out[i, : len(q)] = torch.tensor(q, dtype=torch.long)
    return out.to(device)


def collate(items: list[Encoded], pad_id: int, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded (B, T) ids and labels. Training needs no attention mask: with right padding
    and a causal mask, real tokens never see padding, and padded labels are -100."""
    return right_pad([e.input_ids for e in items], pad_id, device), right_pad([e.labels for e in items], -100, device)


def lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy over completion tokens. logits (B, T, V), labels (B, T)."""
    return torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten(), ignore_index=-100)


def supports_resume(model: PreTrainedModel) -> bool:
    """Whether `forward_from` knows this architecture (Llama-style decoders)."""
    inner = getattr(model, "model", None)
    return all(hasattr(inner, a) for a in ("rotary_emb", "layers", "norm", "embed_tokens"))


def _run_blocks(
    model: PreTrainedModel, hidden: torch.Tensor, which: range, past: int = 0, cache: DynamicCache | None = None
) -> torch.Tensor:
    """`hidden` (B, T, C) through the blocks `which`, its positions starting at `past` (the length already
    in `cache`, which the blocks extend). Right padding needs no attention mask (causal)."""
    inner = model.model
    pos = torch.arange(past, past + hidden.shape[1], device=hidden.device).unsqueeze(0)
    mask = create_causal_mask(
        config=model.config, inputs_embeds=hidden, attention_mask=None, past_key_values=cache, position_ids=pos
    )
    pe = inner.rotary_emb(hidden, position_ids=pos)
    for k in which:
        hidden = inner.layers[k](
            hidden, attention_mask=mask, position_embeddings=pe, position_ids=pos, past_key_values=cache
        )
    return hidden


def forward_from(model: PreTrainedModel, hidden: torch.Tensor, start: int) -> torch.Tensor:
    """Final (normed) hidden states from the hidden state entering block `start`: (B, T, C).
    Same maths as model.model(ids); the LM head is applied by the caller."""
    return model.model.norm(_run_blocks(model, hidden, range(start, len(model.model.layers))))


@torch.no_grad()
def hidden_entering(model: PreTrainedModel, ids: torch.Tensor, start: int, seqs: list[list[int]]) -> torch.Tensor:
    """The hidden state entering block `start` for `ids`, the sequences `seqs` right-padded, the
    blocks before it frozen: (B, T, C). The tokens every row starts with (a task's instruction:
    `prompt_prefix.shared_length`) run through those blocks once, for one row; each row's rest
    runs from their keys and values at its own positions, so every row sees what it would alone."""
    inner, b = model.model, ids.shape[0]
    shared = shared_length(seqs)
    if not shared:
        return _run_blocks(model, inner.embed_tokens(ids), range(start))
    cache = DynamicCache(config=model.config)
    head = _run_blocks(model, inner.embed_tokens(ids[:1, :shared]), range(start), 0, cache)
    cache.batch_repeat_interleave(b)
    rest = _run_blocks(model, inner.embed_tokens(ids[:, shared:]), range(start), shared, cache)
    return torch.cat([head.expand(b, -1, -1), rest], dim=1)


def head_loss(model: PreTrainedModel, hidden: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The LM loss with the vocabulary projection computed only where a label exists.

    Completion tokens are a few of each example's tokens, and the head (C x vocab) costs as much
    as several blocks, so this is the same loss as lm_loss at a fraction of the cost."""
    keep = labels[:, 1:] != -100
    logits = model.lm_head(hidden[:, :-1][keep])  # (n, V)
    return torch.nn.functional.cross_entropy(logits, labels[:, 1:][keep])


def model_loss(model: PreTrainedModel, ids: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    if supports_resume(model):
        return head_loss(model, model.model(input_ids=ids).last_hidden_state, labels)
    return lm_loss(model(input_ids=ids).logits, labels)


def left_pad(
    seqs: list[list[int]], pad_id: int, device: torch.device | str = "cpu"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded ids and attention mask for generation and embeddings."""
    return prefix_padded(seqs, 0, pad_id, device)


def generation_batches(enc: list[list[int]], paths: list[Path], batch_size: int) -> list[list[int]]:
    """Row indices in batches of at most `batch_size` for generation: one path per batch (so a
    batch's shared prompt prefix runs once, on that path), rows by prompt length, shortest
    batches first."""
    groups: dict[str, list[int]] = {}
    for k, path in enumerate(paths):
        groups.setdefault(repr(sorted(path.items())), []).append(k)
    out = []
    for rows in groups.values():
        rows.sort(key=lambda k: len(enc[k]))
        out += [rows[i : i + batch_size] for i in range(0, len(rows), batch_size)]
    return sorted(out, key=lambda b: len(enc[b[-1]]))


class _Stop(Exception):
    pass


def hidden_after(model: PreTrainedModel, ids: torch.Tensor, mask: torch.Tensor, n_blocks: int) -> torch.Tensor:
    """Hidden state leaving block `n_blocks - 1`, without running the blocks after it."""
    seen: list[torch.Tensor] = []

    def hook(module: torch.nn.Module, args: tuple, output: object) -> None:
        seen.append(output[0] if isinstance(output, tuple) else output)  # type: ignore[arg-type]
        raise _Stop

    handle = blocks(model)[n_blocks - 1].register_forward_hook(hook)
    try:
        model(input_ids=ids, attention_mask=mask)
    except _Stop:
        pass
    finally:
        handle.remove()
    return seen[0]


@torch.no_grad()
def mean_pooled(
    model: PreTrainedModel, prompts: list[list[int]], pad_id: int, device: torch.device | str
) -> torch.Tensor:
    """Routing embeddings: the mean-pooled hidden state after the first quarter of the blocks,
    per prompt: (N, C) on the CPU. Measured on the WordNet stream, early blocks route as well as
    the last one (99% nearest-prototype accuracy) at a quarter of the cost. The caller decides
    which adapters are active (routing uses none: the frozen model). On a Llama-style model the
    prompts are right-padded and their shared prefix is read once (`hidden_entering`)."""
    n = max(1, len(blocks(model)) // 4)
    if supports_resume(model):
        ids, mask = right_pad(prompts, pad_id, device), right_pad([[1] * len(p) for p in prompts], 0, device)
        h = hidden_entering(model, ids, n, prompts)
    else:
        ids, mask = left_pad(prompts, pad_id, device)
        h = hidden_after(model, ids, mask, n)
    m = mask.unsqueeze(-1).float()
    return ((h * m).sum(1) / m.sum(1)).cpu()


class PrefixCache:
    """Hidden states entering block `start`, per example, computed by the first pass over it
    (`hidden_entering`, which reads a batch's shared prompt prefix once).

    While a branch trains, blocks before `start` hold nothing trainable, so their output for an
    example never changes: later passes start from the cached state and skip those blocks.
    """

    def __init__(self, model: PreTrainedModel, start: int, *, enabled: bool = True) -> None:
        self.model, self.start = model, start
        self.enabled = enabled and start > 0 and supports_resume(model)
        self.store: dict[object, torch.Tensor] = {}

    def loss(self, ids: torch.Tensor, labels: torch.Tensor, keys: list, items: list[Encoded]) -> torch.Tensor:
        if not self.enabled:
            return model_loss(self.model, ids, labels)
        if all(k in self.store for k in keys):
            h = ids.new_zeros((len(keys), ids.shape[1], self.store[keys[0]].shape[-1]), dtype=self.store[keys[0]].dtype)
            for row, k in enumerate(keys):
                h[row, : self.store[k].shape[0]] = self.store[k]
        else:
            h = hidden_entering(self.model, ids, self.start, [item.input_ids for item in items])
            for row, (k, item) in enumerate(zip(keys, items, strict=True)):
                self.store[k] = h[row, : len(item.input_ids)].clone()
        return head_loss(self.model, forward_from(self.model, h, self.start), labels)
