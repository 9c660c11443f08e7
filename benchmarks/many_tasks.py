"""A stream of many tasks with random adapters of the real shapes, for serving-cost tests.

Nothing is learned (accuracy is not measured with it): the tree has the shape the WordNet streams
grow, a root node on the first blocks, a node per family on the middle ones and each task's own
node on the last `own` blocks, and every node's factors are random, with the base model's real
Linear shapes and the stream's rank. Each task's router prototypes come from a few random
embeddings around a random direction (the router's cost depends on the number of tasks, not on
what they are). The version is committed through the service's own functions (a stream, one
job, `commit_version`) as one version holding every task: the first task is submitted as a
job, the others' rows are written beside it as learned by that version (no job of their own).

    python -m benchmarks.many_tasks --data-dir DIR --tasks 1000     # into an embedded service's folder
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path
from typing import Any

import safetensors.torch as st
import torch

from api.db import session_factory
from api.enums import TaskState
from api.migrate import upgrade
from api.models import Task, new_id
from api.services import runs, streams, tasks
from api.services.owners import ADMIN
from api.settings import Settings
from api.storage import BlobStore, make_store
from treelora_core.adapter_tree import AdapterTree
from treelora_core.config import config_from_dict
from treelora_core.models import blocks, load_base
from treelora_core.persist import FORMAT
from treelora_core.router import PrototypeRouter


def linear_shapes(model_path: str | None, targets: tuple[str, ...]) -> tuple[int, dict[str, tuple[int, int]]]:
    """The base model's number of blocks and (in, out) features of each target Linear."""
    model, _ = load_base(model_path)
    block = dict(blocks(model)[0].named_modules())
    linear = {n.rsplit(".", 1)[-1]: m for n, m in block.items() if isinstance(m, torch.nn.Linear)}
    return len(blocks(model)), {t: (linear[t].in_features, linear[t].out_features) for t in targets}


def random_adapter(lo: int, hi: int, shapes: dict[str, tuple[int, int]], r: int, gen: torch.Generator) -> bytes:
    """A node's blob as `LoRABank.state` writes it: '{block}.{target}.A' (r, in), '.B' (out, r)."""
    tensors = {}
    for b in range(lo, hi):
        for t, (i, o) in shapes.items():
            tensors[f"{b}.{t}.A"] = torch.randn(r, i, generator=gen) / i**0.5
            tensors[f"{b}.{t}.B"] = torch.randn(o, r, generator=gen) * 1e-3
    return st.save(tensors)


def register(
    settings: Settings,
    store: BlobStore,
    name: str,
    n_tasks: int,
    *,
    families: int = 10,
    own: int = 10,
    shared: int = 10,
    seed: int = 0,
    base_model: str | None = None,
) -> list[str]:
    """Create stream `name` on `base_model` (None: the default) holding `n_tasks` tasks in
    `families` families (see the module); their names. The stream must not exist yet."""
    with session_factory(settings.db_url)() as session:
        stream = streams.create_stream(
            session=session, settings=settings, caller=ADMIN, name=name, base_model=base_model
        )
        cfg = config_from_dict(stream.config)
        n_blocks, shapes = linear_shapes(settings.model_choices().get(stream.base_model), cfg.lora.target_modules)
        names = [f"t{k:04d}" for k in range(n_tasks)]
        tree = AdapterTree(0, n_blocks)
        heads: list[str] = []  # each family's first task
        for k, task in enumerate(names):
            if k == 0:
                tree.insert(task)
            elif k < families:
                tree.insert(task, relative=names[0], branch_at=shared)
            else:
                tree.insert(task, relative=heads[k % families], branch_at=n_blocks - own)
            if k < families:
                heads.append(task)
        gen = torch.Generator().manual_seed(seed)
        nodes = tree.view_nodes()
        shas, sizes = {}, {}
        for n in nodes:
            data = random_adapter(n["lo"], n["hi"], shapes, cfg.lora.r, gen)
            shas[n["id"]], sizes[n["id"]] = store.put(data), len(data)
        router = PrototypeRouter()
        rng = random.Random(seed)  # how spread each task's prompts are
        width = next(iter(shapes.values()))[0]
        for task in names:
            direction = torch.randn(width, generator=gen)
            router.add(task, direction + 0.5 * torch.randn(8, width, generator=gen) * rng.uniform(0.5, 1.5), False)
        router.calibrate()  # once: refitting after each of N tasks costs N times one refit
        extras = store.put(st.save({f"router/{k}": v.contiguous() for k, v in router.state().items()}))
        first, job = tasks.submit_task(
            session=session,
            settings=settings,
            store=store,
            caller=ADMIN,
            stream_id=stream.id,
            name=names[0],
            metric="exact_match",
            train=b'{"prompt": "registered", "completion": "by the benchmark"}\n',
            eval_data=b'{"prompt": "registered", "completion": "by the benchmark"}\n',
        )
        claim = runs.claim(session=session, job_id=job.id, owner="many-tasks", lease_s=600)
        assert claim.job is not None, claim.outcome
        session.add_all(  # the other tasks, learned by the same version (no job of their own)
            Task(
                id=new_id("tsk"),
                stream_id=stream.id,
                name=task,
                metric=first.metric,
                status=TaskState.LEARNED,
                position=1,
                train_sha256=first.train_sha256,
                eval_sha256=first.eval_sha256,
                n_train=first.n_train,
                n_eval=first.n_eval,
                eval_source=first.eval_source,
                bytes=first.bytes,
            )
            for task in names[1:]
        )
        manifest: dict[str, Any] = {
            "format": FORMAT,
            "config": stream.config,
            "tasks": names,
            "metrics": {},
            "router": router.names,
            "router_calibration": router.calibration_json(),
            "adapters": shas,
            "extras": extras,
        }
        runs.commit_version(
            session=session,
            job_id=job.id,
            owner="many-tasks",
            base_version=0,
            manifest=manifest,
            tree={"strategy": "treelora", "blocks": n_blocks, "nodes": nodes},
            similarity={},
            paths={t: [{"lo": n.lo, "hi": n.hi, "adapters": [n.id]} for n in tree.path(t)] for t in names},
            adapters=[
                {
                    "node": n["id"],
                    "block_lo": n["lo"],
                    "block_hi": n["hi"],
                    "sha256": shas[n["id"]],
                    "bytes": sizes[n["id"]],
                    "created_by": job.id,
                }
                for n in nodes
            ],
            scores={},
            eval_seconds=0.0,
            report={"seconds": 0.0, "registered": n_tasks},
        )
    return names


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", type=Path, required=True, help="the embedded service's TREELORA_DATA_DIR")
    ap.add_argument("--tasks", type=int, default=1000)
    ap.add_argument("--stream", default="many-tasks")
    args = ap.parse_args(argv)
    settings = Settings(data_dir=args.data_dir)
    args.data_dir.mkdir(parents=True, exist_ok=True)
    upgrade(settings.db_url)
    register(settings, make_store(settings), args.stream, args.tasks)


if __name__ == "__main__":
    main()
