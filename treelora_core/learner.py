"""ContinualLearner: a frozen base model, its adapters, one strategy, a router. It trains tasks one
after another, evaluates them, predicts per request and saves/loads itself."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from .batching import PrefixCache, collate, generation_batches, mean_pooled, model_loss
from .config import StreamConfig, strategy_options
from .data import Example, Task
from .errors import Cancelled, Diverged, StateError, UnknownTaskError
from .lora import LoRABank, plans_for_rows
from .metrics import example_scores
from .models import Encoded, Formatter, load_base
from .prompt_prefix import prefilled, prefix_padded, shared_length
from .reports import TaskReport
from .router import PrototypeRouter
from .strategies import make_strategy, strategy_class
from .types import Path

Progress = Callable[[dict[str, Any]], None]


def twice_differentiable(enabled: bool) -> AbstractContextManager[None]:
    """Attention through the math kernel, whose backward can itself be differentiated."""
    return sdpa_kernel(SDPBackend.MATH) if enabled else nullcontext()


@dataclass
class Prediction:
    text: str
    task: str | None  # the task whose path answered (None for a task-agnostic method)
    confidence: float | None  # router confidence for task="auto", else None
    path: Path | None = None


class ContinualLearner:
    """Also the `strategies.base.Context` its strategy sees: bank, device, seed, loss, minibatches."""

    def __init__(self, model: PreTrainedModel, tok: PreTrainedTokenizerBase, cfg: StreamConfig | None = None) -> None:
        self.model, self.tok = model, tok
        self.cfg = cfg or StreamConfig()
        strategy_class(self.cfg.strategy)  # an unknown name fails before the model is touched
        self.device = next(model.parameters()).device  # adapters and batches live beside the base
        self.bank = LoRABank(model, self.cfg.lora)
        self.fmt = Formatter(tok, chat_template=self.cfg.chat_template, max_length=self.cfg.train.max_length)
        self.strategy = make_strategy(self.cfg.strategy, self, strategy_options(self.cfg))
        self.router = PrototypeRouter()
        self.task_names: list[str] = []
        self.metrics: dict[str, str] = {}

    @classmethod
    def from_pretrained(cls, base: str | None = None, cfg: StreamConfig | None = None) -> ContinualLearner:
        model, tok = load_base(base)
        return cls(model, tok, cfg)

    @property
    def seed(self) -> int:
        return self.cfg.train.seed

    # -- batches and losses ---------------------------------------------------------------------
    def encode(self, examples: list[Example]) -> list[Encoded]:
        return [self.fmt.encode(e) for e in examples]

    def loss(self, ids: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return model_loss(self.model, ids, labels)

    def minibatches(
        self, enc: list[Encoded], n: int, batch_size: int | None = None, seed: int = 0
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """`n` seeded minibatches (with wrap-around) for probes, Fisher and signatures."""
        bs = batch_size or self.cfg.train.batch_size
        order = torch.randperm(len(enc), generator=torch.Generator().manual_seed(seed)).tolist()
        order = (order * (1 + n * bs // max(len(order), 1)))[: n * bs]
        return [
            collate([enc[j] for j in order[i * bs : (i + 1) * bs]], self.tok.pad_token_id, self.device)
            for i in range(n)
        ]

    def split(self, task: Task, g: torch.Generator | None = None) -> tuple[list[Encoded], list[Encoded]]:
        """(train, validation) encoded examples of a task's training data: the validation part
        (`val_examples`, at most a fifth) feeds the early-stopping rule and never trains."""
        tc = self.cfg.train
        if g is None:
            g = torch.Generator().manual_seed(tc.seed + self.task_names.index(task.name))
        enc = self.encode(task.train)
        perm = torch.randperm(len(enc), generator=g).tolist()
        n_val = min(tc.val_examples, len(enc) // 5)
        return [enc[j] for j in perm[n_val:]], [enc[j] for j in perm[:n_val]]

    def validation_loss(self, task: Task) -> float:
        """Loss of a learned task's validation split on its own path (the task-agnostic model
        for methods that have one)."""
        _, val = self.split(task)
        name = task.name if self.strategy.needs_task_id else None
        with self.bank.routed_path(self.path_for(name)):
            return self._val_loss(val, PrefixCache(self.model, 0, enabled=False))

    def _val_loss(self, val: list[Encoded], cache: PrefixCache) -> float:
        if not val:
            return math.nan
        total, count = 0.0, 0
        with torch.no_grad():
            for i in range(0, len(val), 16):
                keys = list(range(i, min(i + 16, len(val))))
                items = [val[k] for k in keys]
                ids, labels = collate(items, self.tok.pad_token_id, self.device)
                n = int((labels[:, 1:] != -100).sum())
                total += float(cache.loss(ids, labels, [("val", k) for k in keys], items)) * n
                count += n
        return total / max(count, 1)

    # -- training -------------------------------------------------------------------------------
    def learn(
        self, task: Task, progress: Progress | None = None, should_stop: Callable[[], bool] | None = None
    ) -> TaskReport:
        """Train one task with the strategy, the epoch budget and the shared early-stopping rule:
        after each epoch the loss on `val_examples` held-out training examples is measured, and
        training stops once it has not improved by `min_delta` for `patience` epochs. A non-finite
        loss (checked every step) or non-finite adapter weights (checked at the end) raise
        `Diverged`; the learner's trainable state is then unusable, as after `Cancelled`."""
        if task.name in self.task_names:
            raise StateError(f"task {task.name!r} is already learned")
        tc = self.cfg.train
        t0, c0 = time.perf_counter(), time.thread_time()
        phases = {"place": 0.0, "train": 0.0, "validate": 0.0, "finish": 0.0}
        g = torch.Generator().manual_seed(tc.seed + len(self.task_names))
        train, val = self.split(task, g)
        setup = self.strategy.begin_task(task.name, train)
        phases["place"] = time.perf_counter() - t0
        params = self.bank.set_trainable(setup.trainable)
        opt = torch.optim.AdamW(params, lr=tc.lr, weight_decay=tc.weight_decay)
        cache = PrefixCache(self.model, setup.start_block, enabled=setup.cache_prefix)
        total = math.ceil(len(train) / tc.batch_size) * tc.epochs
        step, best, bad, val_losses, last = 0, math.inf, 0, [], math.nan
        with self.bank.routed_path(setup.path):
            for epoch in range(tc.epochs):
                t1 = time.perf_counter()
                order = torch.randperm(len(train), generator=g).tolist()
                for i in range(0, len(order), tc.batch_size):
                    if should_stop is not None and should_stop():
                        raise Cancelled("training cancelled")
                    idx = order[i : i + tc.batch_size]
                    items = [train[j] for j in idx]
                    ids, labels = collate(items, self.tok.pad_token_id, self.device)
                    with twice_differentiable(setup.double_backward):
                        loss = cache.loss(ids, labels, idx, items)
                    opt.zero_grad(set_to_none=True)
                    self.strategy.penalty(loss).backward()
                    self.strategy.after_backward()
                    opt.step()
                    step, last = step + 1, loss.item()
                    if not math.isfinite(last):
                        raise Diverged(
                            f"training diverged on task {task.name!r}: the loss is {last} at step {step} "
                            f"(epoch {epoch + 1}); lower train.lr or lora.alpha"
                        )
                    if progress:
                        el = time.perf_counter() - t0
                        progress(
                            {
                                "phase": "train",
                                "task": task.name,
                                "epoch": epoch,
                                "step": step,
                                "total": total,
                                "loss": last,
                                "eta_s": el / step * (total - step),
                            }
                        )
                t2 = time.perf_counter()
                v = self._val_loss(val, cache)
                phases["train"] += t2 - t1
                phases["validate"] += time.perf_counter() - t2
                val_losses.append(v)
                if progress:
                    progress(
                        {
                            "phase": "validate",
                            "task": task.name,
                            "epoch": epoch,
                            "val_loss": None if math.isnan(v) else v,  # None: no validation split
                            "step": step,
                            "total": total,
                        }
                    )
                if not math.isnan(v):
                    best, bad = (v, 0) if v < best - tc.min_delta else (best, bad + 1)
                    if bad >= tc.patience > 0:
                        break
            t3 = time.perf_counter()
            self.strategy.end_task(task.name, train)  # still routed, trainable params still live
        if not all(bool(torch.isfinite(p).all()) for p in params):
            raise Diverged(f"training diverged on task {task.name!r}: its adapter weights are not finite")
        self.bank.set_trainable(set())
        self.router.add(task.name, self.embed([e.prompt for e in task.train]))
        self.task_names.append(task.name)
        self.metrics[task.name] = task.metric
        phases["finish"] = time.perf_counter() - t3
        return TaskReport(
            task.name,
            time.perf_counter() - t0,
            len(val_losses),
            step,
            sum(p.numel() for p in params),
            last,
            val_losses,
            setup.info,
            {k: round(v, 2) for k, v in phases.items()},
            time.thread_time() - c0,
        )

    def stored_bytes(self) -> int:
        """Everything kept to serve and continue the stream: the strategy's adapters and extra
        tensors, plus what the router saves to serve (prototypes, means, the pooled scatter,
        a head) where inference needs a route; not its held-out calibration prompts (at most
        `router.heldout_cap` float16 embeddings per task), which only a refit reads."""
        kept = {k: t for k, t in self.router.state().items() if not k.startswith("heldout")}
        router = sum(t.numel() * t.element_size() for t in kept.values())
        return self.strategy.stored_bytes() + (router if self.strategy.needs_task_id else 0)

    # -- inference ------------------------------------------------------------------------------
    def embed(self, prompts: list[str], batch_size: int = 32) -> torch.Tensor:
        """Routing embeddings of the frozen model (see `batching.mean_pooled`): (N, C)."""
        out = []
        with self.bank.routed([]):
            for i in range(0, len(prompts), batch_size):
                enc = [self.fmt.encode_prompt(p) for p in prompts[i : i + batch_size]]
                out.append(mean_pooled(self.model, enc, self.tok.pad_token_id, self.device))
        return torch.cat(out)

    def resolve(self, prompts: list[str], task: str | None) -> list[tuple[str | None, float | None]]:
        """Which task answers each prompt: the given id, the router ('auto'), or none needed."""
        if not self.strategy.needs_task_id and task in (None, "auto"):
            return [(None, None)] * len(prompts)
        if task == "auto":
            return [(n, c) for n, c in self.router.route(self.embed(prompts))]
        if task is None or task not in self.task_names:
            raise UnknownTaskError(f"unknown task {task!r}")
        return [(task, None)] * len(prompts)

    def path_for(self, task: str | None) -> Path:
        return self.strategy.path(task)

    @torch.no_grad()
    def generate(
        self,
        prompts: list[str],
        paths: list[Path],
        *,
        max_new_tokens: int = 8,
        batch_size: int = 32,
        share_prefix: bool = True,
        **gen: Any,
    ) -> list[str]:
        """Greedy (default) or sampled generation; each row uses its own path. Rows are batched by
        path, then in order of prompt length (the answers come back in the given order), so a
        batch pads little and, with `share_prefix`, the tokens its prompts start with are read
        once (`prompt_prefix`): a row's greedy answer does not depend on the rest of its batch."""
        enc = [self.fmt.encode_prompt(p, max_new_tokens) for p in prompts]
        out: list[str] = [""] * len(enc)
        do_sample = gen.pop("do_sample", False)  # once: every batch samples (or not) alike
        for rows in generation_batches(enc, paths, batch_size):
            seqs = [enc[k] for k in rows]
            shared = shared_length(seqs) if share_prefix else 0
            ids, mask = prefix_padded(seqs, shared, self.tok.pad_token_id, self.device)
            generate: Any = self.model.generate
            with self.bank.routed(plans_for_rows([paths[k] for k in rows], self.bank.n_blocks)):
                cache = prefilled(self.model, ids, shared) if shared else None
                seqs_out = generate(
                    input_ids=ids,
                    attention_mask=mask,
                    max_new_tokens=max_new_tokens,
                    do_sample=do_sample,
                    pad_token_id=self.tok.pad_token_id,
                    **({"past_key_values": cache} if cache is not None else {}),
                    **gen,
                )
            texts = self.tok.batch_decode(seqs_out[:, ids.shape[1] :], skip_special_tokens=True)
            for k, text in zip(rows, texts, strict=True):
                out[k] = text
        return out

    def predict(self, prompts: list[str], task: str | None = "auto", **gen: Any) -> list[Prediction]:
        routes = self.resolve(prompts, task)
        paths = [self.path_for(t) for t, _ in routes]
        texts = self.generate(prompts, paths, **gen)
        return [Prediction(tx, t, c, p) for tx, (t, c), p in zip(texts, routes, paths, strict=True)]

    def evaluate(self, task: Task, mode: str = "task_id", max_new_tokens: int | None = None) -> float:
        """Score on `task.test`: mode 'task_id' (true id), 'auto' (router, or the task-agnostic
        model of a method that needs no id) or 'base' (no adapters: zero-shot)."""
        scores = self.evaluate_examples(task, mode, max_new_tokens)
        return sum(scores) / max(len(scores), 1)

    def evaluate_examples(self, task: Task, mode: str = "task_id", max_new_tokens: int | None = None) -> list[float]:
        """Per-example scores (percent) on `task.test`; see `evaluate`."""
        prompts = [e.prompt for e in task.test]
        if mode == "base":
            paths: list[Path] = [{}] * len(prompts)
        else:
            routes = self.resolve(prompts, task.name if mode == "task_id" else "auto")
            paths = [self.path_for(t) for t, _ in routes]
        preds = self.generate(prompts, paths, max_new_tokens=max_new_tokens or self.answer_budget(task))
        return example_scores(preds, [e.completion for e in task.test], task.metric)

    def answer_budget(self, task: Task) -> int:
        """New tokens to generate when scoring a task: room for the longest training answer plus
        the end token, so short answers decode fast (the test answers are never read)."""
        longest = max(len(self.fmt.completion_ids(e.completion)) for e in task.train)
        return min(longest + 1, 64 if task.metric == "rouge_l" else 16)
