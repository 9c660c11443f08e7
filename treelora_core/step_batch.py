"""Step-level (continuous) batching, the way vLLM and LoRAX schedule decoding.

Rows decode together one token per step. A new row joins at the next step: its prompt is
prefilled (with the other rows joining at the same time) and its KV cache spliced into the
batch's, left-padded to a common length; a finished row leaves at once and frees its slot, and
cache columns that no remaining row attends to are dropped. Each row keeps its own path (the
server's per-row adapter columns), its own parameters and sampler, and its own cache rows, so a
greedy row's answer is the one it gets alone, whoever joins or leaves around it.

Request-level batching (`serving.decode_rows`) runs a batch until its longest row ends: a short
answer holds its slot, and keeps being computed, until then.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Generic, TypeVar

import torch
import torch.nn.functional as F
from transformers.cache_utils import DynamicCache, DynamicLayer

from .batching import left_pad
from .errors import ConfigError
from .serving import Generated, GenParams, RowDecoder, RowEmit, Server, pick
from .types import Path


@dataclass(eq=False)
class StepRow:
    """A row to decode: its encoded prompt, its path, its parameters and who hears its text
    (`emit`: see `serving.RowEmit`). Callers subclass it to say which request it answers."""

    prompt: list[int]
    path: Path
    params: GenParams
    emit: RowEmit | None = None


R = TypeVar("R", bound=StepRow)


class StepBatch(Generic[R]):
    """The rows decoding on one server; `join` adds rows, `step` decodes one token for every row.
    Both return the rows that finished, with their answers. Not thread-safe (one decoding loop)."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.rows: list[R] = []
        self._dec: list[RowDecoder] = []
        self._cache: DynamicCache | None = None
        self._mask = torch.zeros((0, 0), dtype=torch.long, device=server.device)  # (N, T) real cache columns
        self._pos = torch.zeros(0, dtype=torch.long, device=server.device)  # each row's next position
        self._next: list[int] = []  # each row's last token, the next step's input
        self._key = object()  # changes whenever the set of rows does (the server routes per set)

    def __len__(self) -> int:
        return len(self.rows)

    @torch.no_grad()
    def join(self, rows: list[R]) -> list[tuple[R, Generated]]:
        """Prefill `rows` together and pick their first tokens; rows not finished by it join the
        batch. If the prefill raises, the batch is as it was."""
        if not rows:
            return []
        s = self.server
        ids, mask = left_pad([r.prompt for r in rows], s.tok.pad_token_id, s.device)
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        s.route([r.path for r in rows], object())
        res = s.model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True, logits_to_keep=1)
        cache = res.past_key_values
        _layers(cache)  # a cache this batch can splice, or ConfigError
        dec = [RowDecoder(s.tok, r.params, r.emit) for r in rows]
        done: list[tuple[R, Generated]] = []
        keep: list[int] = []
        for i, (r, d, t) in enumerate(zip(rows, dec, pick(res.logits[:, -1], dec), strict=True)):
            if d.push(t) is not None:
                done.append((r, d.finish()))
            else:
                keep.append(i)
        if keep:
            idx = torch.tensor(keep, device=s.device)
            cache.batch_select_indices(idx)
            self._splice(cache, mask[idx], (pos[:, -1] + 1)[idx])
            self.rows += [rows[i] for i in keep]
            self._dec += [dec[i] for i in keep]
            self._next += [d.out[-1] for d in (dec[i] for i in keep)]
            self._key = object()
        return done

    @torch.no_grad()
    def step(self) -> list[tuple[R, Generated]]:
        """One decoding step for every row; finished rows leave the batch."""
        if not self.rows:
            return []
        s, n = self.server, len(self.rows)
        s.route([r.path for r in self.rows], self._key)
        mask = torch.cat([self._mask, self._mask.new_ones((n, 1))], dim=1)
        res = s.model(
            input_ids=torch.tensor(self._next, device=s.device).unsqueeze(1),
            attention_mask=mask,
            position_ids=self._pos.unsqueeze(1),
            past_key_values=self._cache,
            use_cache=True,
        )
        self._mask, self._pos = mask, self._pos + 1
        done: list[tuple[R, Generated]] = []
        keep: list[int] = []
        for i, (d, t) in enumerate(zip(self._dec, pick(res.logits[:, -1], self._dec), strict=True)):
            if d.push(t) is not None:
                done.append((self.rows[i], d.finish()))
            else:
                keep.append(i)
                self._next[i] = t
        if done:
            self._keep(keep)
        return done

    def drop(self) -> list[R]:
        """Empty the batch (after a failed step, say); the rows it held, unfinished."""
        rows = self.rows
        self._keep([])
        return rows

    # -- the batch's KV cache -------------------------------------------------------------------

    def _splice(self, cache: DynamicCache, mask: torch.Tensor, pos: torch.Tensor) -> None:
        """Append rows with their own cache, left-padding whichever side is shorter."""
        if self._cache is None or not self.rows:
            self._cache, self._mask, self._pos = cache, mask, pos
            return
        t = max(self._mask.shape[1], mask.shape[1])
        for mine, theirs in zip(_layers(self._cache), _layers(cache), strict=True):
            mine.keys = torch.cat([_left(mine.keys, t), _left(theirs.keys, t)])
            mine.values = torch.cat([_left(mine.values, t), _left(theirs.values, t)])
        self._mask = torch.cat([F.pad(self._mask, (t - self._mask.shape[1], 0)), F.pad(mask, (t - mask.shape[1], 0))])
        self._pos = torch.cat([self._pos, pos])

    def _keep(self, keep: list[int]) -> None:
        """Keep the rows at `keep`, and drop the leading cache columns none of them attends to."""
        self.rows = [self.rows[i] for i in keep]
        self._dec = [self._dec[i] for i in keep]
        self._next = [self._next[i] for i in keep]
        self._key = object()
        if not keep:
            self._cache = None
            self._mask = self._mask[:0, :0]
            self._pos = self._pos[:0]
            return
        assert self._cache is not None
        idx = torch.tensor(keep, device=self._mask.device)
        self._cache.batch_select_indices(idx)
        self._mask, self._pos = self._mask[idx], self._pos[idx]
        first = int(self._mask.any(0).long().argmax())  # the first column some row attends to
        if first:
            for layer in _layers(self._cache):
                layer.keys, layer.values = _tensor(layer.keys)[:, :, first:], _tensor(layer.values)[:, :, first:]
            self._mask = self._mask[:, first:]


def _left(x: torch.Tensor | None, t: int) -> torch.Tensor:
    """(B, H, T', D) padded with zeros on the left of the sequence axis to T."""
    x = _tensor(x)
    return F.pad(x, (0, 0, t - x.shape[-2], 0))


def _tensor(x: torch.Tensor | None) -> torch.Tensor:
    assert x is not None, "a cache layer that holds nothing"
    return x


def _layers(cache: DynamicCache) -> list[DynamicLayer]:
    """The cache's layers, each holding every past column (a sliding-window layer drops some)."""
    layers = list(cache.layers)
    if not all(type(layer) is DynamicLayer for layer in layers):
        raise ConfigError("step-level batching needs a full-attention KV cache (no sliding window)")
    return layers  # type: ignore[return-value]
