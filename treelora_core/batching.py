"""Collation and the forward passes the learner needs (full, from a cached block, embeddings)."""

from __future__ import annotations

import torch
from transformers import PreTrainedModel
from transformers.masking_utils import create_causal_mask

from .models import Encoded, blocks


def collate(items: list[Encoded], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded (B, T) ids and labels. Training needs no attention mask: with right padding
    and a causal mask, real tokens never see padding, and padded labels are -100."""
    t = max(len(e.input_ids) for e in items)
    ids = torch.full((len(items), t), pad_id, dtype=torch.long)
    labels = torch.full((len(items), t), -100, dtype=torch.long)
    for i, e in enumerate(items):
        ids[i, : len(e.input_ids)] = torch.tensor(e.input_ids)
        labels[i, : len(e.labels)] = torch.tensor(e.labels)
    return ids, labels


def lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy over completion tokens. logits (B, T, V), labels (B, T)."""
    return torch.nn.functional.cross_entropy(
        logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten(), ignore_index=-100
    )


def supports_resume(model: PreTrainedModel) -> bool:
    """Whether `forward_from` knows this architecture (Llama-style decoders)."""
    inner = getattr(model, "model", None)
    return all(hasattr(inner, a) for a in ("rotary_emb", "layers", "norm", "embed_tokens"))


def forward_from(model: PreTrainedModel, hidden: torch.Tensor, start: int) -> torch.Tensor:
    """Logits from the hidden state entering block `start` (B, T, C), same maths as model(ids)."""
    inner = model.model
    pos = torch.arange(hidden.shape[1]).unsqueeze(0)
    mask = create_causal_mask(config=model.config, inputs_embeds=hidden, attention_mask=None,
                              past_key_values=None, position_ids=pos)
    pe = inner.rotary_emb(hidden, position_ids=pos)
    for layer in inner.layers[start:]:
        hidden = layer(hidden, attention_mask=mask, position_embeddings=pe, position_ids=pos)
    return model.lm_head(inner.norm(hidden))


class PrefixCapture:
    """Records the hidden state entering block `start` during a normal forward (first epoch)."""

    def __init__(self, model: PreTrainedModel, start: int) -> None:
        self.value: torch.Tensor | None = None
        self.handle = blocks(model)[start].register_forward_pre_hook(self._hook, with_kwargs=True)

    def _hook(self, module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        h = args[0] if args else kwargs["hidden_states"]
        self.value = h.detach()

    def close(self) -> None:
        self.handle.remove()


def left_pad(seqs: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded ids and attention mask for generation and embeddings."""
    t = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), t), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), t), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, t - len(s):] = torch.tensor(s)
        mask[i, t - len(s):] = 1
    return ids, mask
