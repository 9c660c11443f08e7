"""Serving many tasks' paths in one batch, the way multi-LoRA servers (S-LoRA, Punica) do it.

The base model is wrapped once (`LoRABank` with no adapters of its own). Node adapters live in an
`AdapterPool` keyed by content hash, under a byte budget. For a batch, each wrapped Linear gets
the factors of every distinct adapter the batch uses at that block side by side, A_all (K, in)
and B_all (out, K), plus a 0/1 mask of the columns each row's path uses:
    y = W x + ((x A_all^T) * mask) B_all^T,
which for a row is the sum of its own adapters (a block that sums k adapters is one rank-k*r
update, B1 A1 + B2 A2 = [B1 B2][A1; A2]). Two dense GEMMs per Linear whatever the mix of tasks;
each adapter is read once per step however many rows use it, and no per-row copies are made.
A greedy row's output equals the one it gets alone.
"""

from __future__ import annotations

import math
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from typing import NamedTuple

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from .batching import left_pad, mean_pooled
from .errors import ConfigError
from .lora import LoRABank, LoraConfig
from .types import Path

Factors = dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor]]  # (block, target) -> (A, s*B)


@dataclass(frozen=True)
class GenParams:
    max_new_tokens: int = 16
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    ignore_eos: bool = False  # always generate max_new_tokens (load tests, as vLLM's benchmarks do)

    def __post_init__(self) -> None:
        """Parameters that would fail a whole batch (a NaN, a seed torch cannot take) are refused
        here, before they join one."""
        if self.max_new_tokens < 1:
            raise ConfigError("max_new_tokens must be at least 1", param="max_new_tokens")
        if not (math.isfinite(self.temperature) and self.temperature > 0):
            raise ConfigError("temperature must be a finite number above 0", param="temperature")
        if not (math.isfinite(self.top_p) and 0 < self.top_p <= 1):
            raise ConfigError("top_p must be in (0, 1]", param="top_p")
        if self.seed is not None and not 0 <= self.seed < 2**64:  # what torch.Generator.manual_seed takes
            raise ConfigError("seed must be in [0, 2**64)", param="seed")


class Generated(NamedTuple):
    """One row's answer: its text, the tokens generated, and why it ended: "stop" (the end token or
    a stop string) or "length" (`max_new_tokens`)."""

    text: str
    tokens: int
    finish_reason: str


# Hears row `i`'s new text after each decoding step, and its answer once the row has finished
# (with the last piece of text): `emit(i, text, answer or None)`. The pieces add up to the
# answer's text.
Emit = Callable[[int, str, Generated | None], None]
RowEmit = Callable[[str, Generated | None], None]  # one row's `Emit`


class AdapterPool:
    """Adapters by key, least recently used evicted first once over `budget_bytes`; adapters a
    running batch holds are pinned and never evicted."""

    def __init__(self, budget_bytes: int, device: torch.device | str = "cpu") -> None:
        self.budget, self.device = budget_bytes, torch.device(device)
        self._items: OrderedDict[str, Factors] = OrderedDict()
        self._bytes: dict[str, int] = {}
        self._pins: Counter[str] = Counter()
        self._lock = threading.Lock()
        self.hits = self.misses = self.evictions = 0
        self.load_seconds = self.load_seconds_max = 0.0  # reading and placing missing adapters

    @property
    def nbytes(self) -> int:
        return sum(self._bytes.values())

    def __contains__(self, key: str) -> bool:
        return key in self._items

    def acquire(self, keys: set[str], load: Callable[[str], Factors]) -> None:
        """Make `keys` resident and pin them; `load(key)` builds a missing adapter's factors."""
        with self._lock:
            missing = [k for k in keys if k not in self._items]
            self.hits += len(keys) - len(missing)
            self.misses += len(missing)
            self._pins.update(keys)
        try:
            loaded = {}
            for k in missing:
                t0 = time.perf_counter()
                loaded[k] = {bt: (a.to(self.device), b.to(self.device)) for bt, (a, b) in load(k).items()}
                took = time.perf_counter() - t0
                self.load_seconds += took
                self.load_seconds_max = max(self.load_seconds_max, took)
        except BaseException:
            self.release(keys)
            raise
        with self._lock:
            for k, f in loaded.items():
                self._items[k] = f
                self._bytes[k] = sum(a.numel() * a.element_size() + b.numel() * b.element_size() for a, b in f.values())
            for k in keys:
                self._items.move_to_end(k)
            self._evict()

    def release(self, keys: set[str]) -> None:
        with self._lock:
            self._pins.subtract(keys)
            self._pins += Counter()  # drop zero counts
            self._evict()

    def _evict(self) -> None:
        for k in list(self._items):
            if self.nbytes <= self.budget:
                return
            if not self._pins[k]:
                del self._items[k], self._bytes[k]
                self.evictions += 1

    def factors(self, key: str) -> Factors:
        return self._items[key]

    @contextmanager
    def holding(self, keys: set[str], load: Callable[[str], Factors]) -> Iterator[None]:
        self.acquire(keys, load)
        try:
            yield
        finally:
            self.release(keys)


def factors_from_state(state: dict[str, torch.Tensor], scaling: float) -> Factors:
    """`LoRABank.state` tensors ('{block}.{target}.A' / '.B') -> factors with B pre-scaled."""
    out: Factors = {}
    for key, a in state.items():
        if key.endswith(".A"):
            b, t, _ = key.rsplit(".", 2)
            out[(int(b), t)] = (a.float(), state[key[:-1] + "B"].float() * scaling)
    return out


class Server:
    """One frozen base model serving rows on any paths (not thread-safe: one batch at a time)."""

    def __init__(
        self, model: PreTrainedModel, tok: PreTrainedTokenizerBase, target_modules: tuple[str, ...], pool: AdapterPool
    ) -> None:
        self.model, self.tok, self.pool = model, tok, pool
        self.bank = LoRABank(model, LoraConfig(target_modules=target_modules))  # wrappers only
        self.device = next(model.parameters()).device
        self._routed: object = None  # the key of the rows `route` set, if they are still set

    # -- per-row factors ------------------------------------------------------------------------
    def _set_rows(self, paths: list[Path]) -> None:
        for (block, target), mod in self.bank.modules.items():
            names = [p.get(block, ()) for p in paths]
            keys = list(dict.fromkeys(k for n in names for k in n))  # distinct adapters, first-seen order
            if not keys:
                mod.route()
                continue
            fs = [self.pool.factors(k)[(block, target)] for k in keys]
            cols: dict[str, tuple[int, int]] = {}
            start = 0
            for k, (a, _) in zip(keys, fs, strict=True):
                cols[k] = (start, start + a.shape[0])
                start += a.shape[0]
            a_all = torch.cat([a for a, _ in fs])  # the pool keeps factors on the model's device
            b_all = torch.cat([b for _, b in fs], dim=1)
            mask = None
            if any(n != names[0] for n in names) or len(names[0]) != len(keys):
                mask = torch.zeros(len(paths), 1, start, device=self.device)
                for row, n in enumerate(names):
                    for k in n:
                        mask[row, 0, cols[k][0] : cols[k][1]] = 1.0
            mod.route(stack=(a_all, b_all, mask))

    def _clear(self) -> None:
        self._routed = None
        for mod in self.bank.modules.values():
            mod.route()

    @contextmanager
    def rows(self, paths: list[Path]) -> Iterator[None]:
        self._set_rows(paths)
        try:
            yield
        finally:
            self._clear()

    def route(self, paths: list[Path], key: object) -> None:
        """Route rows on `paths` until the next call or `rows()`; `key` names this set of rows,
        so that a caller decoding the same rows step after step routes them once."""
        if self._routed is not key:
            self._set_rows(paths)
            self._routed = key

    # -- embeddings (routing), generation, scoring ----------------------------------------------

    def embed(self, prompts: list[list[int]]) -> torch.Tensor:
        """Routing embeddings of encoded prompts (see `batching.mean_pooled`), from the frozen
        model (rows a step-level batch routed are set again at its next step): (N, C)."""
        if self._routed is not None:
            self._clear()
        return mean_pooled(self.model, prompts, self.tok.pad_token_id, self.device)

    @torch.no_grad()
    def generate(
        self, prompts: list[list[int]], paths: list[Path], params: list[GenParams], emit: Emit | None = None
    ) -> list[Generated]:
        """An answer per row; each row follows its own path and parameters (`emit`: see `Emit`)."""
        with self.rows(paths):
            return decode_rows(self.model, self.tok, prompts, params, emit)

    @torch.no_grad()
    def score(self, prompts: list[list[int]], completions: list[list[int]], paths: list[Path]) -> list[float]:
        """Log-likelihood of each row's completion tokens after its prompt, on its path."""
        seqs = [p + c for p, c in zip(prompts, completions, strict=True)]
        ids, mask = left_pad(seqs, self.tok.pad_token_id, self.device)
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        t = ids.shape[1]
        # logits (a vocabulary per position) only where completions are predicted, the last k
        # positions (left padding), and their log-softmax one row at a time: memory grows with the
        # longest completion, not with the prompts
        k = min(t, 1 + max(len(c) for c in completions))
        with self.rows(paths):
            logits = self.model(input_ids=ids, attention_mask=mask, position_ids=pos, logits_to_keep=k).logits
        out = []
        for i, c in enumerate(completions):
            logp = torch.log_softmax(logits[i, k - 1 - len(c) : k - 1].float(), -1)
            out.append(float(logp.gather(-1, ids[i, t - len(c) :, None]).sum()))
        return out


def held_back(text: str, stop: tuple[str, ...]) -> int:
    """Characters at the end of `text` not to stream yet: a character still being decoded (a token
    that ends inside a UTF-8 sequence decodes to U+FFFD) or what may be the start of a stop
    string (streamed text is never taken back)."""
    n = len(text) - len(text.rstrip("\ufffd"))
    for s in stop:
        n = max(n, next((k for k in range(min(len(s) - 1, len(text)), 0, -1) if text.endswith(s[:k])), 0))
    return n


class RowDecoder:
    """One row's decoding state: the tokens it generated, what it streamed, its sampler, and
    whether it has finished (`push` takes each new token). Shared by request-level batches
    (`decode_rows`) and step-level ones (`step_batch.StepBatch`)."""

    def __init__(self, tok: PreTrainedTokenizerBase, params: GenParams, emit: RowEmit | None = None) -> None:
        self.tok, self.params, self.emit = tok, params, emit
        self.gen = torch.Generator().manual_seed(params.seed) if params.do_sample and params.seed is not None else None
        self.out: list[int] = []
        self.sent = 0  # characters of the text streamed so far
        self.answer: Generated | None = None

    def text(self) -> str:
        return str(self.tok.decode(self.out, skip_special_tokens=True))

    def push(self, t: int) -> Generated | None:
        """Take the next token; the answer once the row has finished (then `answer` too)."""
        p = self.params
        so_far = ""
        if t == self.tok.eos_token_id and not p.ignore_eos:
            self.answer = Generated(self.text(), len(self.out), "stop")
        else:
            self.out.append(t)
            so_far = self.text() if p.stop or self.emit is not None else ""
            hit = [so_far.index(s) for s in p.stop if s in so_far]
            if hit:
                self.answer = Generated(so_far[: min(hit)], len(self.out), "stop")
            elif len(self.out) >= p.max_new_tokens:
                self.answer = Generated(so_far or self.text(), len(self.out), "length")
        if self.emit is not None:
            if self.answer is not None:
                self.emit(self.answer.text[self.sent :], self.answer)
            elif (upto := len(so_far) - held_back(so_far, p.stop)) > self.sent:
                self.emit(so_far[self.sent : upto], None)
                self.sent = upto
        return self.answer

    def finish(self) -> Generated:
        """The answer, or what was generated so far when decoding had to stop ("length")."""
        return self.answer or Generated(self.text(), len(self.out), "length")


def pick(logits: torch.Tensor, rows: Sequence[RowDecoder]) -> list[int]:
    """The next token of each row from its last logits (N, V): greedy argmax, or temperature +
    top-p sampling with the row's own seeded sampler."""
    out = logits.argmax(-1)
    for i, row in enumerate(rows):
        p = row.params
        if not p.do_sample:
            continue
        z = logits[i].double().cpu()  # the max is subtracted first: any temperature > 0 stays finite
        probs = torch.softmax((z - z.max()) / p.temperature, -1).float()
        if p.top_p < 1.0:
            sorted_p, order = probs.sort(descending=True)
            cut = sorted_p.cumsum(0) - sorted_p > p.top_p  # keep the smallest prefix reaching top_p
            sorted_p[cut] = 0.0
            probs = torch.zeros_like(probs).scatter(0, order, sorted_p)
        out[i] = int(torch.multinomial(probs, 1, generator=row.gen))
    return [int(t) for t in out]


@torch.no_grad()
def decode_rows(
    model: torch.nn.Module,
    tok: PreTrainedTokenizerBase,
    prompts: list[list[int]],
    params: list[GenParams],
    emit: Emit | None = None,
    **forward_kw: object,
) -> list[Generated]:
    """Batched decoding with a KV cache, left padding and per-row parameters, until the longest
    row has finished (request-level batching); `emit` streams each row's text as the steps
    finish. `forward_kw` goes to every forward call (PEFT's `adapter_names`, say)."""
    device = next(model.parameters()).device
    n = len(prompts)
    ids, mask = left_pad(prompts, tok.pad_token_id, device)
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    rows = [RowDecoder(tok, p, None if emit is None else partial(emit, i)) for i, p in enumerate(params)]
    limit = max(p.max_new_tokens for p in params)
    res = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True, logits_to_keep=1, **forward_kw)
    for step in range(limit):
        nxt = pick(res.logits[:, -1], rows)
        for r, t in zip(rows, nxt, strict=True):
            if r.answer is None:
                r.push(t)
        if all(r.answer is not None for r in rows) or step == limit - 1:
            break
        mask = torch.cat([mask, mask.new_ones((n, 1))], dim=1)
        pos = pos[:, -1:] + 1
        res = model(
            input_ids=torch.tensor(nxt, device=device).unsqueeze(1),
            attention_mask=mask,
            position_ids=pos,
            past_key_values=res.past_key_values,
            use_cache=True,
            **forward_kw,
        )
    return [r.finish() for r in rows]


def decode(
    model: torch.nn.Module,
    tok: PreTrainedTokenizerBase,
    prompts: list[list[int]],
    params: list[GenParams],
    **forward_kw: object,
) -> list[tuple[str, int]]:
    """(text, generated tokens) per row of `decode_rows`: what the baselines compare."""
    return [(g.text, g.tokens) for g in decode_rows(model, tok, prompts, params, None, **forward_kw)]
