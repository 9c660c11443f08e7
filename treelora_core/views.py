"""Plain-data views of a learner for reports and APIs: its tree (or adapter layout), a task's
path as block ranges, and task-to-task gradient similarity. JSON-ready, no torch in the output."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .learner import ContinualLearner


def path_segments(learner: ContinualLearner, task: str | None) -> list[dict[str, Any]]:
    """A task's path as runs of consecutive blocks that sum the same adapters:
    [{"lo", "hi", "adapters"}], blocks [lo, hi)."""
    path = learner.path_for(task)
    out: list[dict[str, Any]] = []
    for b in range(learner.bank.n_blocks):
        names = list(path.get(b, ()))
        if out and out[-1]["adapters"] == names and out[-1]["hi"] == b:
            out[-1]["hi"] = b + 1
        elif names:
            out.append({"lo": b, "hi": b + 1, "adapters": names})
    return out


def _users(learner: ContinualLearner) -> dict[str, list[str]]:
    """Adapter name -> tasks whose path uses it."""
    users: dict[str, list[str]] = {}
    tasks: list[str | None] = list(learner.task_names) if learner.strategy.needs_task_id else [None]
    for t in tasks:
        for names in learner.path_for(t).values():
            for n in names:
                lst = users.setdefault(n, [])
                if t is not None and t not in lst:
                    lst.append(t)
    if not learner.strategy.needs_task_id:  # one task-agnostic model: every adapter serves all
        users = {n: list(learner.task_names) for n in users}
    return users


def tree_view(learner: ContinualLearner) -> dict[str, Any]:
    """Nodes with block ranges and member tasks. `treelora` has a real tree (parents, children,
    the task owning each leaf); other strategies list their adapters as parentless nodes."""
    nodes = learner.strategy.tree_nodes()
    if nodes is None:
        users = _users(learner) if learner.task_names else {}
        nodes = []
        for name in sorted(learner.bank.names()):
            blocks = learner.bank.blocks_of(name)
            nodes.append(
                {
                    "id": name,
                    "lo": blocks[0],
                    "hi": blocks[-1] + 1,
                    "parent": None,
                    "children": [],
                    "task": None,
                    "created_by": None,
                    "members": users.get(name, []),
                }
            )
    return {"strategy": learner.strategy.name, "blocks": learner.bank.n_blocks, "nodes": nodes}


def similarities(learner: ContinualLearner) -> dict[str, dict[str, float]]:
    """Similarity between every pair of learned tasks as the strategy measured it (`treelora`:
    weighted probe-gradient similarity); empty for strategies that keep none."""
    return learner.strategy.similarities(learner.task_names)
