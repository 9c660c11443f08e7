"""The tree *of* layer-wise adapters (strategy `treelora`), as a plain serialisable object.

A node covers the contiguous blocks [lo, hi) and names the adapter that holds their LoRA weights.
The virtual root covers nothing; every root-to-leaf path covers [start, end) exactly once; each
task owns one leaf. Inserting a task that shares blocks [start, b) with a relative splits the
relative's node that contains b (the split moves weights between names, it changes no maths).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from .errors import StateError

ROOT = "root"


@dataclass
class Node:
    id: str
    lo: int
    hi: int
    parent: str | None
    children: list[str] = field(default_factory=list)
    task: str | None = None  # the task owning this leaf
    created_by: str | None = None  # the task whose training created the weights


@dataclass
class Split:
    """What an insert did: `moved` = (old node, new node, blocks) whose weights change name."""

    leaf: str
    branch_at: int
    moved: tuple[str, str, range] | None = None


class AdapterTree:
    def __init__(self, start: int, end: int) -> None:
        if not 0 <= start < end:
            raise StateError("need 0 <= start < end")
        self.start, self.end = start, end
        self.nodes: dict[str, Node] = {ROOT: Node(ROOT, start, start, None)}
        self.leaves: dict[str, str] = {}  # task -> leaf node id
        self.version = 0
        self._next = 0

    def _new_id(self) -> str:
        self._next += 1
        return f"n{self._next}"

    def path(self, task: str) -> list[Node]:
        """Nodes from the top branch down to the task's leaf (the virtual root excluded)."""
        if task not in self.leaves:
            raise KeyError(task)
        out, node = [], self.nodes[self.leaves[task]]
        while node.id != ROOT:
            out.append(node)
            assert node.parent is not None
            node = self.nodes[node.parent]
        return out[::-1]

    def block_map(self, task: str) -> dict[int, str]:
        return {b: n.id for n in self.path(task) for b in range(n.lo, n.hi)}

    def members(self, node_id: str) -> list[str]:
        """Tasks whose path passes through this node."""
        node = self.nodes[node_id]
        if node.task is not None:
            return [node.task]
        return [t for c in node.children for t in self.members(c)]

    def insert(self, task: str, *, relative: str | None = None, branch_at: int | None = None) -> Split:
        """Give `task` a leaf covering [b, end) that follows `relative`'s path on [start, b)."""
        if task in self.leaves:
            raise StateError(f"task {task!r} is already in the tree")
        b = self.start if relative is None or branch_at is None else branch_at
        if not self.start <= b < self.end:
            raise StateError(f"branch block {b} outside [{self.start}, {self.end})")
        parent, moved = ROOT, None
        if b > self.start:
            assert relative is not None
            node = next(n for n in self.path(relative) if n.lo <= b < n.hi or n.hi == b)
            if node.hi == b:  # the branch starts right after this node
                parent = node.id
            elif node.lo == b:
                assert node.parent is not None
                parent = node.parent
            else:  # split: node keeps [lo, b), a new node takes [b, hi) with its children/task
                lower = Node(self._new_id(), b, node.hi, node.id, node.children, node.task, node.created_by)
                for c in lower.children:
                    self.nodes[c].parent = lower.id
                if lower.task is not None:
                    self.leaves[lower.task] = lower.id
                self.nodes[lower.id] = lower
                node.hi, node.children, node.task = b, [lower.id], None
                parent, moved = node.id, (node.id, lower.id, range(b, lower.hi))
        leaf = Node(self._new_id(), b, self.end, parent, task=task, created_by=task)
        self.nodes[leaf.id] = leaf
        self.nodes[parent].children.append(leaf.id)
        self.leaves[task] = leaf.id
        self.version += 1
        return Split(leaf.id, b, moved)

    def view_nodes(self) -> list[dict[str, Any]]:
        """Every node but the virtual root as plain data (block range, parent, children, owner,
        creator, member tasks): what tree views, routing and reports read."""
        return [
            {
                "id": n.id,
                "lo": n.lo,
                "hi": n.hi,
                "parent": None if n.parent == ROOT else n.parent,
                "children": list(n.children),
                "task": n.task,
                "created_by": n.created_by,
                "members": self.members(n.id),
            }
            for n in self.nodes.values()
            if n.parent is not None
        ]

    @classmethod
    def replay(cls, placements: list[dict[str, Any]], names: list[str], n_blocks: int) -> AdapterTree:
        """The tree that a run's placements (`relative`, `branch_at` per task, in order) built."""
        tree = cls(0, n_blocks)
        for name, p in zip(names, placements, strict=True):
            b = p.get("branch_at", 0)
            tree.insert(name, relative=p.get("relative") if b > 0 else None, branch_at=b)
        return tree

    def to_json(self) -> dict[str, Any]:
        return {
            "start": self.start,
            "end": self.end,
            "version": self.version,
            "next": self._next,
            "leaves": dict(self.leaves),
            "nodes": [asdict(n) for n in self.nodes.values()],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> AdapterTree:
        tree = cls(data["start"], data["end"])
        tree.version, tree._next, tree.leaves = data["version"], data["next"], dict(data["leaves"])
        tree.nodes = {n["id"]: Node(**n) for n in data["nodes"]}
        return tree

    def check(self) -> None:
        """Invariant: every task's path covers [start, end) exactly once, in order."""
        for task in self.leaves:
            blocks = [b for n in self.path(task) for b in range(n.lo, n.hi)]
            if blocks != list(range(self.start, self.end)):
                raise AssertionError(f"path of {task} covers {blocks}")
