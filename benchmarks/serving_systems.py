"""The baseline inference servers the serving benchmark compares against, each behind the same
small HTTP API (`POST /predict {inputs, task, max_new_tokens, ignore_eos}`), the same batching
policy (`api.serving.gather`: the service's window, wait and row limit) and the same decoding loop
(`treelora_core.serving.decode`), so that only the way adapters are applied differs:

- `base`: the base model with no adapters;
- `peft_switch`: PEFT with every task's adapter loaded; a gathered batch is grouped by task and
  each group decoded after `set_adapter` (a single-adapter server that batches what it can);
- `peft_mixed`: PEFT's mixed-batch inference (`adapter_names=` per row), one batch for all tasks;
- `merged_switch`: per-task merged weights (W + s B A) kept in memory; each task group of a batch
  is decoded after copying its weights in (no adapter arithmetic at all while decoding).

Each task's adapter is its tree path flattened to one PEFT adapter (the service's export).

    python -m benchmarks.serving_systems --system peft_mixed --adapters DIR --port 8101
"""

from __future__ import annotations

import argparse
import queue
import threading
from collections.abc import AsyncIterator
from concurrent.futures import Future
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import uvicorn
from fastapi import FastAPI
from pydantic import BaseModel

from api.inference import widen_threadpool
from api.serving import gather
from treelora_core.models import Formatter, load_base
from treelora_core.serving import GenParams, decode

SYSTEMS = ("base", "peft_switch", "peft_mixed", "merged_switch")


class PredictBody(BaseModel):
    inputs: list[str]
    task: str
    max_new_tokens: int = 16
    ignore_eos: bool = False


@dataclass
class Job:
    prompts: list[str]
    task: str
    params: GenParams
    choices: list[str] = field(default_factory=list)
    future: Future[list[tuple[str, int]]] = field(default_factory=Future)


class Engine:
    def __init__(self, system: str, adapters: Path, max_length: int) -> None:
        self.system = system
        model, self.tok = load_base()
        self.fmt = Formatter(self.tok, max_length=max_length)
        dirs = sorted(p for p in adapters.iterdir() if (p / "adapter_config.json").exists())
        self.model: Any = model
        if system in ("peft_switch", "peft_mixed"):
            from peft import PeftModel

            self.model = PeftModel.from_pretrained(model, str(dirs[0]), adapter_name=dirs[0].name)
            for d in dirs[1:]:
                self.model.load_adapter(str(d), adapter_name=d.name)
            self.model.eval()
        elif system == "merged_switch":
            self.merged = {d.name: self._merged(model, d) for d in dirs}
            self.current: str | None = None

    @staticmethod
    def _merged(model: torch.nn.Module, folder: Path) -> dict[str, torch.Tensor]:
        """W + (alpha / r) B A for every adapted Linear of one task's adapter."""
        import json

        from safetensors.torch import load_file

        cfg = json.loads((folder / "adapter_config.json").read_text())
        scale = cfg["lora_alpha"] / cfg["r"]
        tensors = load_file(str(folder / "adapter_model.safetensors"))
        params = dict(model.named_parameters())
        out = {}
        for key, a in tensors.items():
            if key.endswith("lora_A.weight"):
                name = key[len("base_model.model.") : -len(".lora_A.weight")] + ".weight"
                b = tensors[key.replace("lora_A", "lora_B")]
                out[name] = params[name].detach() + scale * (b @ a)
        return out

    def _switch(self, task: str) -> None:
        if self.current == task:
            return
        params = dict(self.model.named_parameters())
        with torch.no_grad():
            for name, w in self.merged[task].items():
                params[name].copy_(w)
        self.current = task

    def run(self, jobs: list[Job]) -> None:
        if self.system in ("base", "peft_mixed"):
            self._decode(jobs)
            return
        groups: dict[str, list[Job]] = {}
        for j in jobs:
            groups.setdefault(j.task, []).append(j)
        for task, group in groups.items():  # a single-adapter server: one task's rows at a time
            if self.system == "peft_switch":
                self.model.set_adapter(task)
            else:
                self._switch(task)
            self._decode(group)

    def _decode(self, jobs: list[Job]) -> None:
        ids = [self.fmt.encode_prompt(p, min(j.params.max_new_tokens, 64)) for j in jobs for p in j.prompts]
        params = [j.params for j in jobs for _ in j.prompts]
        kw = {"adapter_names": [j.task for j in jobs for _ in j.prompts]} if self.system == "peft_mixed" else {}
        outs = decode(self.model, self.tok, ids, params, **kw)
        k = 0
        for j in jobs:
            j.future.set_result(outs[k : k + len(j.prompts)])
            k += len(j.prompts)


def make_app(
    system: str, adapters: Path, window_ms: float, max_batch: int, max_length: int, max_wait_ms: float = 100.0
) -> FastAPI:
    engine = Engine(system, adapters, max_length)
    jobs: queue.Queue[Job] = queue.Queue()

    def loop() -> None:
        while True:
            batch = gather(jobs, window_ms, max_batch, max_wait_ms)
            try:
                engine.run(batch)
            except Exception as exc:
                for j in batch:
                    if not j.future.done():
                        j.future.set_exception(exc)

    threading.Thread(target=loop, daemon=True).start()

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        widen_threadpool()
        yield

    app = FastAPI(lifespan=lifespan)

    @app.post("/predict")
    def predict(body: PredictBody) -> dict[str, Any]:
        job = Job(body.inputs, body.task, GenParams(max_new_tokens=body.max_new_tokens, ignore_eos=body.ignore_eos))
        jobs.put(job)
        return {"predictions": [{"output": t, "tokens": n} for t, n in job.future.result()]}

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--system", choices=SYSTEMS, required=True)
    ap.add_argument("--adapters", type=Path, required=True, help="one PEFT adapter folder per task, named by task")
    ap.add_argument("--port", type=int, default=8101)
    ap.add_argument("--window-ms", type=float, default=20.0)
    ap.add_argument("--max-wait-ms", type=float, default=100.0)
    ap.add_argument("--max-batch", type=int, default=32)
    ap.add_argument("--max-length", type=int, default=96)
    args = ap.parse_args()
    app = make_app(args.system, args.adapters, args.window_ms, args.max_batch, args.max_length, args.max_wait_ms)
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
