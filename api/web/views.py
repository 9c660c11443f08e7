"""What the page's templates draw, computed from the service functions' plain data: the tree's
layout as SVG coordinates, the accuracy matrix as heatmap cells, the continual-learning metrics
after every tree version. Pure functions, no I/O."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from treelora_core.metrics import summarize

# tree drawing, in SVG user units (the SVG scales to its box)
PAD, PLOT_W, LABEL_W, ROW_H, AXIS_H, BAR_H, GAP = 16, 620, 190, 30, 30, 12, 3


def tree_layout(tree: dict[str, Any]) -> dict[str, Any]:
    """Nodes as horizontal bars over the blocks they cover (x) at the middle of the tasks below
    them (y), one row per leaf, children joined to their parent's end by a curve."""
    nodes = {n["id"]: n for n in tree.get("nodes") or []}
    blocks = int(tree.get("blocks") or max((n["hi"] for n in nodes.values()), default=1))
    sims: dict[str, dict[str, float]] = tree.get("similarity") or {}

    def x(b: float) -> float:
        return round(PAD + PLOT_W * b / blocks, 1)

    ys: dict[str, float] = {}
    row = 0

    def place(nid: str) -> float:
        nonlocal row
        kids = [c for c in nodes[nid]["children"] if c in nodes]
        if kids:
            child_ys = [place(c) for c in kids]
            ys[nid] = (child_ys[0] + child_ys[-1]) / 2
        else:
            ys[nid] = PAD + ROW_H * row + ROW_H / 2
            row += 1
        return ys[nid]

    for nid, n in nodes.items():
        if n.get("parent") is None or n["parent"] not in nodes:
            place(nid)
    for nid in nodes:  # a cycle or a dangling child would leave a node unplaced: give it a row
        if nid not in ys:
            ys[nid] = PAD + ROW_H * row + ROW_H / 2
            row += 1
    height = PAD + ROW_H * max(row, 1) + AXIS_H

    out_nodes, edges = [], []
    for nid, n in nodes.items():
        members = list(n.get("members") or [])
        x0, x1, y = x(n["lo"]) + GAP, x(n["hi"]) - GAP, ys[nid]
        leaf = not [c for c in n["children"] if c in nodes]
        label = None
        if leaf:  # a leaf names its task; a shared adapter (strategies without a tree) counts them
            label = n.get("task") or (members[0] if len(members) == 1 else f"{nid} · {len(members)} tasks")
        out_nodes.append(
            {
                "id": nid,
                "lo": n["lo"],
                "hi": n["hi"],
                "x": x0,
                "y": round(y - BAR_H / 2, 1),
                "w": round(max(x1 - x0, 2.0), 1),
                "cy": round(y, 1),
                "members": members,
                "leaf": leaf,
                "label": label,
                "title": node_title(nid, n["lo"], n["hi"], members, sims),
                "sha": (n.get("adapter_sha256") or "")[:12],
            }
        )
        parent = nodes.get(n.get("parent") or "")
        if parent is not None:
            px, py = x(parent["hi"]) - GAP, ys[parent["id"]]
            xm = round((px + x0) / 2, 1)
            edges.append(
                {"child": nid, "d": f"M{px},{round(py, 1)} C{xm},{round(py, 1)} {xm},{round(y, 1)} {x0},{round(y, 1)}"}
            )
    step = max(1, round(blocks / 8))
    ticks = [{"x": x(b), "label": b} for b in range(0, blocks + 1, step)]
    if ticks[-1]["label"] != blocks:
        ticks.append({"x": x(blocks), "label": blocks})
    return {
        "width": PAD + PLOT_W + LABEL_W,
        "height": height,
        "blocks": blocks,
        "label_x": x(blocks) + 8,
        "axis_y": height - AXIS_H + 6,
        "plot_x0": x(0),
        "plot_x1": x(blocks),
        "nodes": out_nodes,
        "edges": edges,
        "ticks": ticks,
    }


def node_title(nid: str, lo: int, hi: int, members: list[str], sims: dict[str, dict[str, float]]) -> str:
    """The hover text: the node's blocks, its tasks, and how similar they are."""
    head = f"{nid} · blocks {lo}–{hi - 1} · {len(members)} task{'s' if len(members) != 1 else ''}"
    if len(members) == 1:
        ranked = sorted(sims.get(members[0], {}).items(), key=lambda kv: -kv[1])[:3]
        tail = ("most similar: " + ", ".join(f"{t} {s:.2f}" for t, s in ranked)) if ranked else ""
        return "\n".join(filter(None, [head, members[0], tail]))
    pairs = [sims.get(a, {}).get(b) for i, a in enumerate(members) for b in members[i + 1 :]]
    vals = [p for p in pairs if p is not None]
    mean = f"mean similarity of its tasks {sum(vals) / len(vals):.2f}" if vals else ""
    shown = ", ".join(members[:12]) + (f" and {len(members) - 12} more" if len(members) > 12 else "")
    return "\n".join(filter(None, [head, shown, mean]))


def heat_color(score: float | None) -> str:
    """A sequential blue scale: pale for 0 %, deep for 100 %."""
    if score is None:
        return ""
    s = min(max(score, 0.0), 100.0) / 100
    return f"background:hsl(221 {round(40 + 40 * s)}% {round(96 - 52 * s)}%);color:{'#fff' if s > 0.55 else '#1e293b'}"


def heatmap(ev: dict[str, Any]) -> list[dict[str, Any]]:
    """Rows of R for the template: one per tree version, a cell per task (None before it existed)."""
    tasks: list[str] = ev["tasks"]
    rows = []
    for t, (scores, meta) in enumerate(zip(ev["R"], ev["rows"], strict=True)):
        cells = [{"value": v, "style": heat_color(v), "diag": i == t, "task": tasks[i]} for i, v in enumerate(scores)]
        rows.append({"version": meta["tree_version"], "task": tasks[t] if t < len(tasks) else "", "cells": cells})
    return rows


def metric_series(R: list[list[float | None]]) -> dict[str, list[float | None]]:
    """OP, BWT and forgetting after each tree version (R cut to the first t tasks)."""
    out: dict[str, list[float | None]] = {"op": [], "bwt": [], "forgetting": []}
    for t in range(1, len(R) + 1):
        try:
            s = summarize([row[:t] for row in R[:t]])
        except Exception:  # an incomplete row: leave a gap in the chart
            s = {"op": None, "bwt_gem": None, "forgetting": None}
        for key, src in (("op", "op"), ("bwt", "bwt_gem"), ("forgetting", "forgetting")):
            v = s[src]
            out[key].append(round(v, 2) if v is not None else None)
    return out


def human_bytes(n: int | None) -> str:
    if n is None:
        return ""
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


def when(t: datetime | None) -> str:
    return t.strftime("%Y-%m-%d %H:%M:%S") if t is not None else ""


def eta(seconds: float | None) -> str:
    if seconds is None:
        return ""
    s = round(seconds)
    return f"{s // 60}m {s % 60:02d}s" if s >= 60 else f"{s}s"
