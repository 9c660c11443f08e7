"""A stream with many learned tasks made cheaply: tasks and jobs go through the real service
functions (upload, claim, heartbeat, commit); only the learning is skipped: the tree comes from
`AdapterTree` placements, the scores and similarities from a seeded generator."""

from __future__ import annotations

import hashlib
import random
from typing import Any

from sqlalchemy.orm import Session

from api.services import runs, streams, tasks
from api.services.owners import ADMIN, Caller
from api.settings import Settings
from api.storage import BlobStore
from treelora_core.adapter_tree import AdapterTree


def records(name: str, n: int = 12) -> bytes:
    return "".join(
        f'{{"prompt": "Item {i} of {name}: what is it?", "completion": "{name}"}}\n' for i in range(n)
    ).encode()


def many_task_stream(
    *,
    session: Session,
    settings: Settings,
    store: BlobStore,
    name: str,
    n_tasks: int,
    blocks: int = 30,
    seed: int = 0,
    caller: Caller = ADMIN,
) -> list[str]:
    """Create stream `name` with `n_tasks` learned tasks (one tree version each); its task names."""
    rng = random.Random(seed)
    stream = streams.create_stream(session=session, settings=settings, caller=caller, name=name)
    tree = AdapterTree(0, blocks)
    names: list[str] = []
    R: list[dict[str, float]] = []
    base = {}
    for k in range(n_tasks):
        task_name = f"task-{k:02d}"
        _task, job = tasks.submit_task(
            session=session,
            settings=settings,
            store=store,
            caller=caller,
            stream_id=stream.id,
            name=task_name,
            metric="exact_match",
            train=records(task_name),
            eval_data=None,
        )
        owner = f"page-data-{k}"
        claim = runs.claim(session=session, job_id=job.id, owner=owner, lease_s=60)
        assert claim.job is not None, claim.outcome
        steps = 10
        for step in (5, 10):  # two beats: progress, an epoch's losses
            loss = 2.5 * 0.8**step + rng.random() * 0.05
            progress = {"phase": "train", "epoch": 0, "step": step, "total": steps, "loss": round(loss, 4)}
            events = [("epoch.validated", {**progress, "val_loss": round(loss + 0.1, 4), "train_loss": loss})]
            runs.heartbeat(
                session=session,
                job_id=job.id,
                owner=owner,
                lease_s=60,
                progress=progress,
                events=events,
            )
        if names:
            tree.insert(task_name, relative=rng.choice(names), branch_at=rng.randrange(1, blocks - 2))
        else:
            tree.insert(task_name)
        names.append(task_name)
        nodes = tree.view_nodes()
        paths = {t: [{"lo": n.lo, "hi": n.hi, "adapters": [n.id]} for n in tree.path(t)] for t in names}
        maps = {t: tree.block_map(t) for t in names}
        sim = {
            a: {b: round(sum(maps[a][i] == maps[b][i] for i in range(blocks)) / blocks, 4) for b in names if b != a}
            for a in names
        }
        base[task_name] = 55 + 40 * rng.random()
        scores = {t: round(max(0.0, base[t] - (k - i) * 3 * rng.random()), 2) for i, t in enumerate(names)}
        R.append(scores)
        shas = {n["id"]: hashlib.sha256(f"{name}:{n['id']}:{n['lo']}:{n['hi']}".encode()).hexdigest() for n in nodes}
        adapters = [
            {
                "node": n["id"],
                "block_lo": n["lo"],
                "block_hi": n["hi"],
                "sha256": shas[n["id"]],
                "bytes": 18432 * (n["hi"] - n["lo"]),
                "created_by": job.id,
            }
            for n in nodes
        ]
        report: dict[str, Any] = {"seconds": 1.0, "steps": steps, "val_losses": [], "placement": {}}
        runs.commit_version(
            session=session,
            job_id=job.id,
            owner=owner,
            base_version=k,
            manifest={"adapters": {n: shas[n] for n in shas}},
            tree={"strategy": "treelora", "blocks": blocks, "nodes": nodes},
            similarity=sim,
            paths=paths,
            adapters=adapters,
            scores=scores,
            eval_seconds=0.5,
            report=report,
        )
    return names
