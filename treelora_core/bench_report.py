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


SERVING_CMD = "python -m api.bench_serving"


def _serving(out: list[str], folder: Path) -> None:
    """The serving benchmark (written by the service's `api.bench_serving`)."""
    out += ["## Serving", "", f"`{SERVING_CMD}`", ""]
    path = folder / "serving.json"
    if not path.exists():
        out += ["Not run yet.", ""]
        return
    data = json.loads(path.read_text())
    st = data["setup"]
    out += [
        f"Model {data['model']} on {st['device']} ({st['cpu_count']} cores), one stream of {st['tasks']} learned "
        f"WordNet tasks; {st['clients']} closed-loop clients over HTTP for {st['seconds']:.0f} s per cell, one "
        f"prompt per request, {st['max_new_tokens']} new tokens (EOS ignored), batches of at most "
        f"{st['max_batch']} rows gathered with a {st['batch_window_ms']:.0f} ms gap rule (at most "
        f"{st['batch_max_wait_ms']:.0f} ms) by every batching system. Systems run one at a time on the same "
        "machine; ratios are this service's figure over the other system's.",
        "",
        "| tasks in mix | system | tokens/s | p50 ms | p99 ms | requests | errors | treelora tokens/s ÷ this |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for mix, systems in data["mixes"].items():
        ours = systems.get("treelora", {}).get("tokens_per_s")
        for name, r in systems.items():
            ratio = f"{ours / r['tokens_per_s']:.2f}" if ours and r["tokens_per_s"] else "-"
            out.append(
                f"| {mix} | {name} | {r['tokens_per_s']:.1f} | {r['p50_ms']:.0f} | {r['p99_ms']:.0f} | "
                f"{r['requests']} | {r['errors']} | {ratio} |"
            )
    out.append("")
    ra = data.get("routing_accuracy")
    if ra:
        out += [
            f'Routing without a task id (`task: "auto"`) on every task\'s held-out prompts: flat prototypes '
            f"{ra['flat']}%, tree descent {ra['tree']}%.",
            "",
        ]
    rt = folder / "routing.json"
    if rt.exists():
        r = json.loads(rt.read_text())
        out += [
            "The continual benchmark's streams (`python -m treelora_core.bench_routing`; each stream's tree "
            "replayed from its `treelora` run, prototypes from the training prompts):",
            "",
            "| stream | tasks | test prompts | flat % | tree % |",
            "|---|---|---|---|---|",
            *(f"| {k} | {v['tasks']} | {v['test_prompts']} | {v['flat']} | {v['tree']} |" for k, v in r.items()),
            "",
        ]
    ld = data.get("load")
    if ld:
        out += [
            f"Load test: {ld['clients']} clients for {ld['seconds']:.0f} s on the {st['tasks']}-task mix: "
            f"{ld['requests']} requests, {ld['errors']} errors, {ld['tokens_per_s']:.1f} tokens/s, p50 "
            f"{ld['p50_ms']:.0f} ms, p99 {ld['p99_ms']:.0f} ms; resident memory of the service (API and worker "
            f"processes) {ld['rss_mb_first']:.0f} MB at the start, {ld['rss_mb_max']:.0f} MB at most, "
            f"{ld['rss_mb_last']:.0f} MB at the end.",
            "",
        ]
    out += ["![serving](benchmarks/serving.png)", ""]
    notes = folder / "serving-notes.md"
    if notes.exists():
        out += [notes.read_text()]


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
    _serving(out, folder)
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--folder", type=Path, default=Path("docs/benchmarks"))
    ap.add_argument("--out", type=Path, default=Path("docs/benchmarks.md"))
    args = ap.parse_args(argv)
    args.out.write_text(render(args.folder))


if __name__ == "__main__":
    main()
