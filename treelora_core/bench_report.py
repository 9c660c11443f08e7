"""Render docs/benchmarks.md from the JSON files the benchmarks wrote.

python -m treelora_core.bench_report
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

HEAD = "| method | OP | BWT (GEM) | forgetting | s/task | x per_task | trainable | stored KiB | routing % |"


def _table(summary: dict[str, Any]) -> list[str]:
    methods = summary["methods"]
    ref = methods.get("per_task_lora@task_id", {}).get("seconds_per_task")
    rows = [HEAD, "|" + "---|" * 9]
    for name, m in methods.items():
        ratio = f"{m['seconds_per_task'] / ref:.2f}" if ref else "-"
        routing = "-" if m["routing_accuracy"] is None else f"{m['routing_accuracy']:.1f}"
        rows.append(
            f"| {name} | {m['op']:.1f} | {m['bwt_gem']:+.1f} | {m['forgetting']:.1f} | "
            f"{m['seconds_per_task']:.0f} | {ratio} | {m['trainable_params']:,} | "
            f"{m['stored_bytes'] / 1024:,.0f} | {routing} |"
        )
    return rows


def _stream(out: list[str], folder: Path, name: str, title: str, command: str) -> None:
    path = folder / f"{name}.json"
    if not path.exists():
        out += [f"## {title}", "", f"Not run yet: `{command}`", ""]
        return
    summary = json.loads(path.read_text())
    details = json.loads((folder / f"{name}.details.json").read_text())
    tasks = ", ".join(
        f"{t['name']} ({t['metric']}, {t['n_train']} train / {t['n_test']} test)" for t in details["tasks"]
    )
    out += [
        f"## {title}",
        "",
        f"`{command}`",
        "",
        f"Model {summary['model']}, {summary['epochs']} epochs budget, profile {summary['profile']}, seed "
        f"{details['seed']}, one run ({details['wall_seconds'] / 60:.0f} min wall, {details['machine']}).",
        "",
        f"Tasks in order: {tasks}.",
        "",
        "Zero-shot scores: " + ", ".join(f"{z:.0f}" for z in details["zero_shot"]) + ".",
        "",
    ]
    out += _table(summary)
    out += [
        "",
        "`<method>` rows of routed methods use the router (no task id); `<method>@task_id` the true id. "
        "`x per_task` is seconds per task relative to `per_task_lora`.",
        "",
    ]
    if details.get("ablations"):
        out += ["Ablation of `treelora_paper` (paper Table 5 style):", "", HEAD, "|" + "---|" * 9]
        full = summary["methods"].get("treelora_paper")
        abl = {"treelora_paper (full: LCB search + penalty)": full, **details["ablations"]}
        out += _table({"methods": {k: v for k, v in abl.items() if v}})[2:]
        out.append("")
    tl = details["runs"].get("treelora")
    if tl:
        out += [
            "`treelora` placements:",
            "",
            "| task | relative | similarity | pulls | branch at | warm start | s | place/train/validate/finish s |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for r in tl["per_task"]:
            p = r["placement"]
            ph = r.get("phase_seconds") or {}
            out.append(
                f"| {r['task']} | {p.get('relative') or '-'} | {p.get('similarity', '-')} | {p.get('pulls', '-')} | "
                f"{p.get('branch_at', 0)} | {p.get('warm_start', False)} | {r['seconds']} | "
                + "/".join(str(ph.get(k, "-")) for k in ("place", "train", "validate", "finish"))
                + " |"
            )
        out.append("")
    out += [f"![{title}](benchmarks/{name}.png)", ""]


def render(folder: Path) -> str:
    out = [
        "# Benchmarks",
        "",
        "Every number here comes from the commands shown, in one run per stream: all methods, the same "
        "model, data, seeds and epoch budget, and the same early-stopping rule (docs/treelora.md). "
        "Scores are percentages.",
        "",
    ]
    _stream(
        out,
        folder,
        "continual",
        "Same-template stream (WordNet supersenses)",
        "python -m treelora_core.bench --stream wordnet --profile quick",
    )
    _stream(
        out,
        folder,
        "continual-mixed",
        "Mixed-template stream (TRACE-500)",
        "python -m treelora_core.bench --stream mixed --profile quick --trace-root ../shared/data/trace-500",
    )
    ts = folder / "tree_search.json"
    out += ["## Tree search", "", "`python -m treelora_core.bench_tree`", ""]
    if ts.exists():
        data = json.loads(ts.read_text())
        out += [
            f"{data['layers']} layers x {data['dim']} dims, tasks in {data['clusters']} clusters, "
            f"{data['queries']} noisy queries per size; LCB best-first search on the K-D tree vs flat search.",
            "",
            "| tasks | depth | tree comparisons | flat comparisons | ratio | tree ms | flat ms (vectorised) "
            "| exact % |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for r in data["rows"]:
            out.append(
                f"| {r['n_tasks']} | {r['tree_depth']} | {r['tree_comparisons']} | {r['flat_comparisons']} | "
                f"{r['comparison_ratio']} | {r['tree_ms']} | {r['flat_ms']} | {r['exact_nearest_pct']} |"
            )
        out.append("")
    notes = folder / "notes.md"
    if notes.exists():
        out += [notes.read_text()]
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--folder", type=Path, default=Path("docs/benchmarks"))
    ap.add_argument("--out", type=Path, default=Path("docs/benchmarks.md"))
    args = ap.parse_args(argv)
    args.out.write_text(render(args.folder))


if __name__ == "__main__":
    main()
