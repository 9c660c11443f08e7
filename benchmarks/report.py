"""Render docs/benchmarks.md from the JSON files the benchmarks wrote.

python -m benchmarks.report
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from .continual import REF_TIME, TARGET_PAIRS

HEAD = (
    "| method | seeds | OP [95% CI] | BWT (GEM) | forgetting [95% CI] | s/task [95% CI] | x per_task | trainable "
    "| stored KiB | routing % |"
)


def _notes(out: list[str], folder: Path, name: str) -> None:
    """Append a hand-written notes file of the folder, where there is one."""
    path = folder / name
    if path.exists():
        out.append(path.read_text())


def _ci(v: float, ci: list[float] | None, fmt: str = ".1f") -> str:
    return f"{v:{fmt}}" if not ci else f"{v:{fmt}} [{ci[0]:{fmt}}, {ci[1]:{fmt}}]"


def _table(methods: dict[str, Any], ratios: dict[str, Any] | None = None) -> list[str]:
    """The methods table; `ratios` (the details' `time_vs_per_task`) gives `x per_task` on the
    seeds a method shares with `per_task_lora`, where the aggregate recorded it."""
    rows = [HEAD, "|" + "---|" * 10]
    for name, m in methods.items():
        same_seeds = (ratios or {}).get(name.split("@")[0])
        ratio = f"{same_seeds['seconds']:.2f}" if same_seeds else "-"  # no seed shared with the reference
        routing = "-" if m["routing_accuracy"] is None else f"{m['routing_accuracy']:.1f}"
        rows.append(
            f"| {name} | {len(m.get('seeds', [])) or '-'} | {_ci(m['op'], m.get('op_ci'))} | {m['bwt_gem']:+.1f} | "
            f"{_ci(m['forgetting'], m.get('forgetting_ci'))} | "
            f"{_ci(m['seconds_per_task'], m.get('seconds_ci'), '.0f')} "
            f"| {ratio} | {m['trainable_params']:,} | {m['stored_bytes'] / 1024:,.0f} | {routing} |"
        )
    return rows


def _stream(out: list[str], folder: Path, name: str, title: str, command: str) -> None:
    path = folder / f"{name}.json"
    if not path.exists():
        out += [f"## {title}", "", f"Not aggregated yet: `{command}`", ""]
        return
    summary = json.loads(path.read_text())
    details = json.loads((folder / f"{name}.details.json").read_text())
    seeds = summary["seeds"]
    out += [
        f"## {title}",
        "",
        f"`{command}`",
        "",
        f"Model {summary['model']}, at most {summary['epochs']} epochs with early stopping on held-out training "
        f"examples (patience 1), profile {summary['profile']}, seeds {seeds} so far ({details['machine']}); "
        f"{details['n_test']} test examples per task. Intervals: 95% bootstrap over seeds and test examples.",
        "",
        "Tasks in order: " + ", ".join(details["tasks"]) + ".",
        "",
    ]
    if details.get("ewc_lambda") is not None:
        out += [f"EWC lambda {details['ewc_lambda']:g}, chosen on validation loss (`ewc-lambda.json`).", ""]
    ratios = details.get("time_vs_per_task") or {}
    out += _table(summary["methods"], ratios)
    out += [
        "",
        "`<method>` rows of routed methods use the router (no task id); `<method>@task_id` the true id. "
        "`x per_task` is seconds per task relative to `per_task_lora` on the seeds both have.",
        "",
    ]
    units = details.get("seconds_in_first_tasks") or {}
    if units:

        def _unit(m: str) -> str:
            r, ci = ratios.get(m, {}).get("first_task_units"), ratios.get(m, {}).get("first_task_units_ci")
            band = f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else ""
            same = f" ({r:.2f}x{band} `{REF_TIME}` on the same seeds)" if r is not None and m != REF_TIME else ""
            return f"`{m}` {sum(units[m].values()) / len(units[m]):.2f}{same}"

        out += [
            "Seconds per task in units of the cell's own first task without its placement (the same work "
            "for these full-adapter methods, so comparable across machines and days; mean over seeds; "
            "a ratio's interval is a bootstrap over its seeds): " + ", ".join(_unit(m) for m in sorted(units)) + ".",
            "",
        ]
    out += [
        'Paired differences in OP and in forgetting (a minus b, same seeds and test examples); "beats" '
        'only where the interval excludes zero (in forgetting, "beats" means a forgets less):',
        "",
        "| a | b | seeds | OP a - b [95% CI] | verdict | forgetting a - b [95% CI] | verdict |",
        "|---|---|---|---|---|---|---|",
    ]
    pairs = details.get("pairs", {})
    for a, b in TARGET_PAIRS:
        p = pairs.get(f"{a} vs {b}")
        if p:
            out.append(
                f"| {a} | {b} | {len(p['seeds'])} | {_ci(p['op_diff'], p['op_diff_ci'])} | {p['verdict']} "
                f"| {_ci(p['forgetting_diff'], p['forgetting_diff_ci'])} | {p['forgetting_verdict']} |"
            )
    out.append("")
    tl = details["runs"].get("treelora", {}).get(str(seeds[0]))
    if tl:
        out += [
            f"`treelora` placements (seed {seeds[0]}):",
            "",
            "| task | relative | similarity | pulls | branch at | warm start | epochs | s "
            "| place/train/validate/finish s |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for r in tl["per_task"]:
            p = r["placement"]
            ph = r.get("phase_seconds") or {}
            out.append(
                f"| {r['task']} | {p.get('relative') or '-'} | {p.get('similarity', '-')} | {p.get('pulls', '-')} | "
                f"{p.get('branch_at', 0)} | {p.get('warm_start', False)} | {r['epochs']} | {r['seconds']} | "
                + "/".join(str(ph.get(k, "-")) for k in ("place", "train", "validate", "finish"))
                + " |"
            )
        out.append("")
    out += [f"![{title}](benchmarks/{name}.png)", ""]


def _section(out: list[str], folder: Path, title: str, command: str, filename: str) -> Any:
    """Head a section with its title and command; its JSON, or None (and "Not run yet.")."""
    out += [f"## {title}", "", f"`{command}`", ""]
    path = folder / filename
    if not path.exists():
        out += ["Not run yet.", ""]
        return None
    return json.loads(path.read_text())


def _tree_columns(tree: dict[str, Any] | None) -> str:
    """A long-stream row's tree cells: ARI against the families | shared blocks within / across."""
    if tree is None:
        return "- | -"
    return f"{tree['ari']} | {tree['shared_depth_within']} / {tree['shared_depth_across']}"


LONG_CMD = "python -m benchmarks.long_stream run --seeds 0 --jobs 2 && python -m benchmarks.long_stream aggregate"


def _long_stream(out: list[str], folder: Path) -> None:
    """The long stream with task families (written by `benchmarks.long_stream`)."""
    data = _section(out, folder, "Long stream: 20 tasks in 4 families", LONG_CMD, "long-stream.json")
    if data is None:
        return
    st = data["setup"]
    fams = sorted(set(data["families"]))
    out += [
        f"{len(data['tasks'])} WordNet tasks in {len(fams)} families ({', '.join(fams)}; see "
        f"`benchmarks/families.py`), arriving interleaved; {st['n_train']} training and {st['n_test']} test "
        f"examples per task, at most {st['epochs']} epochs with the continual benchmark's stopping rule. "
        "OP and forgetting are over all tasks at the end (with routing for methods that need a task id); "
        "seconds are per task, first five tasks against last five; bytes are what the method stores after "
        "the last task; comparisons are the placement's signature comparisons for the last task; routing "
        "is over every task's test prompts. Seeds listed per row. The `treelora[random_relative]` and "
        "`treelora[always_share]` cells (run with `--methods`) were routed by the router of their time "
        "(nearest prototypes), the other rows by the current default (the discriminant): compare their OP "
        "with the task id.",
        "",
        "| method | seeds | OP | OP with task id | forgetting | s/task (N 1-5) | s/task (N 16-20) | stored MB "
        "| comparisons (N=20) | routing % | tree ARI vs families | shared blocks within / across |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for m, by_seed in data["methods"].items():
        runs = list(by_seed.values())

        def mean(f: Any, runs: list[dict[str, Any]] = runs) -> float:
            return float(sum(f(r) for r in runs) / len(runs))

        ra = runs[0]["final_routing_accuracy"]
        out.append(
            f"| {m} | {', '.join(by_seed)} | {mean(lambda r: r['op']):.1f} | {mean(lambda r: r['op_task_id']):.1f} | "
            f"{mean(lambda r: r['forgetting']):.1f} | {mean(lambda r: sum(r['seconds'][:5]) / 5):.0f} | "
            f"{mean(lambda r: sum(r['seconds'][-5:]) / 5):.0f} | {mean(lambda r: r['stored_bytes'][-1]) / 1e6:.1f} | "
            f"{mean(lambda r: r['comparisons'][-1]):.0f} | {'-' if ra is None else f'{ra:.1f}'} | "
            f"{_tree_columns(runs[0]['tree'])} |"
        )
    pairs = data.get("pairs", {})
    if pairs:
        out += [
            "",
            "Paired OP differences after the last task (a minus b; 95% bootstrap over the seeds both have and "
            "the test examples):",
            "",
            "| a | b | seeds | OP a - b [95% CI] | verdict |",
            "|---|---|---|---|---|",
        ]
        for key, p in pairs.items():
            a, b = key.split(" vs ")
            out.append(f"| {a} | {b} | {len(p['seeds'])} | {_ci(p['op_diff'], p['op_diff_ci'])} | {p['verdict']} |")
    sigs = folder / "long-stream-signatures.json"
    rows = json.loads(sigs.read_text()).get("placement") if sigs.exists() else None
    if rows:
        out += [
            "",
            "Placement at scale on the stream's real signatures (`python -m benchmarks.long_stream signatures`): "
            "task N placed among the N-1 before it by flat search (vectorised) and by the paper's LCB search on "
            "its layer-wise K-D tree:",
            "",
            "| N | flat comparisons | tree comparisons | flat us | tree us | same family: flat / tree |",
            "|---|---|---|---|---|---|",
        ]
        for r in rows:
            if r["n"] % 5 == 0:
                fam = "-" if r["flat_same_family"] is None else f"{r['flat_same_family']} / {r['tree_same_family']}"
                out.append(
                    f"| {r['n']} | {r['flat_comparisons']} | {r['tree_comparisons']} | {r['flat_us']} | "
                    f"{r['tree_us']} | {fam} |"
                )
    out += ["", "![long stream](benchmarks/long-stream.png)", ""]
    _notes(out, folder, "long-notes.md")


SEARCH_ROWS = (
    "treelora",
    "treelora[first_below]",
    "treelora[random_relative]",
    "treelora[always_share]",
    "treelora[best_prefix]",
    "treelora[decided]",
    "treelora[settled]",
    "per_task_lora",
)


def _against_treelora(p: dict[str, Any] | None) -> tuple[str, str]:
    """A "treelora vs m" pair read the other way: (OP of m minus treelora's [CI], m's verdict)."""
    if p is None:
        return "-", "-"
    lo, hi = p["op_diff_ci"]
    return _ci(-p["op_diff"], [-hi, -lo]), {"beats": "loses", "loses": "beats"}.get(p["verdict"], "tie")


def _search(out: list[str], folder: Path, suffix: str) -> None:
    """Issue "does the search matter?": `treelora` against the placement rules that skip its
    signature search, on every stream, from the files the other sections read."""
    out += [
        "## Does the search matter?",
        "",
        "`treelora` places a task by comparing its probe-gradient signature with the tree's (LCB search) "
        "and branches at the first block whose cosine with its relative, median-filtered over the block "
        "and its two neighbours, is below the threshold (a single block's dip does not end sharing); "
        "its search stops taking probe pulls early only when every candidate the bound cannot rule out "
        "shares up to the cap (a branch above it, and the first task's signature, take every pull). "
        "`treelora[first_below]` is the former default: the first raw cosine below the threshold ends "
        "sharing, and pulls stop once the best child is separated; the rows after it change one thing "
        "from it. `treelora[random_relative]` picks a uniformly random earlier task and applies the "
        "first-below rule to it; `treelora[always_share]` skips the probe and shares every block but "
        "the last `min_own_blocks` with a random earlier task; `treelora[best_prefix]` branches at the "
        "prefix with the largest summed margin; `treelora[decided]` is `best_prefix` whose search also "
        "stops taking probe pulls once every candidate the bound cannot rule out gives the same branch "
        "block; `treelora[settled]` takes the default's pulls with the raw first-below rule. Same "
        "budget, data, seeds and stopping rule as the tables above; OP with routing (no task id).",
        "",
        "| stream | method | seeds | OP [95% CI] | forgetting [95% CI] | s/task [95% CI] "
        "| OP vs `treelora` [95% CI] | verdict |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, title in ((f"continual{suffix}", "WordNet"), (f"continual-mixed{suffix}", "mixed")):
        path = folder / f"{name}.json"
        if not path.exists():
            continue
        methods = json.loads(path.read_text())["methods"]
        pairs = json.loads((folder / f"{name}.details.json").read_text())["pairs"]
        for m in SEARCH_ROWS:
            if m not in methods:
                continue
            r = methods[m]
            vs, verdict = _against_treelora(pairs.get(f"treelora vs {m}"))
            out.append(
                f"| {title} | {m} | {len(r['seeds'])} | {_ci(r['op'], r['op_ci'])} | "
                f"{_ci(r['forgetting'], r['forgetting_ci'])} | {_ci(r['seconds_per_task'], r['seconds_ci'], '.0f')} "
                f"| {vs} | {verdict} |"
            )
    long_path = folder / ("long-stream.json" if not suffix else f"long-stream{suffix}.json")
    if long_path.exists():
        data = json.loads(long_path.read_text())
        out += [
            "",
            "Long stream (families; intervals over test examples and the seeds listed; s/task is the mean over "
            "all 20 tasks; shared blocks: mean blocks two tasks share, within a family / across families). OP "
            "here is with the task id: it compares the paths each placement rule built (the random_relative and "
            "always_share cells were routed by the router of their time, nearest prototypes; the others by the "
            "discriminant):",
            "",
            "| method | seeds | OP with task id | forgetting | s/task | OP vs `treelora` [95% CI] | verdict "
            "| tree ARI | shared within / across |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for m in SEARCH_ROWS:
            by_seed = data["methods"].get(m)
            if not by_seed:
                continue
            runs = list(by_seed.values())
            vs, verdict = _against_treelora(data.get("pairs", {}).get(f"treelora@task_id vs {m}@task_id"))
            out.append(
                f"| {m} | {', '.join(by_seed)} | {sum(r['op_task_id'] for r in runs) / len(runs):.1f} | "
                f"{sum(r['forgetting'] for r in runs) / len(runs):.1f} | "
                f"{sum(sum(r['seconds']) / len(r['seconds']) for r in runs) / len(runs):.0f} | {vs} | {verdict} | "
                f"{_tree_columns(runs[0]['tree'])} |"
            )
    out.append("")
    _notes(out, folder, "search-notes.md")
    out.append("")


SERVING_CMD = "python -m benchmarks.serving"


def _serving(out: list[str], folder: Path) -> None:
    """The serving benchmark (written by `benchmarks.serving`)."""
    data = _section(out, folder, "Serving", SERVING_CMD, "serving.json")
    if data is None:
        return
    st = data["setup"]
    mixes = data["mixes"]
    out += [
        f"Model {data['model']} on {st['device']} ({st['cpu_count']} cores), one stream of {st['tasks']} learned "
        f"WordNet tasks and one of {st.get('many_tasks', '-')} tasks with random adapters of the real shapes; "
        f"{st['clients']} closed-loop clients over HTTP for {st['seconds']:.0f} s per cell, one prompt per "
        f"request, {st['max_new_tokens']} new tokens (EOS ignored), at most {st['max_batch']} rows per batch; "
        f"the baselines gather batches with the service's rule ({st['batch_window_ms']:.0f} ms gap, at most "
        f"{st['batch_max_wait_ms']:.0f} ms). Every system runs at once in its own process; each cell ran "
        f"{st.get('repeats', 1)} times, the systems' order rotated between repeats. Figures are medians over the "
        "repeats with [smallest, largest]; ratios are between medians of the same run.",
        "",
        "| tasks in mix | system | tokens/s | p50 ms | p99 ms | treelora tokens/s ÷ this | this p99 ÷ base p99 |",
        "|---|---|---|---|---|---|---|",
    ]

    def fig(r: dict[str, Any], k: str, fmt: str) -> str:
        lo_hi = r.get(f"{k}_range")
        return f"{r[k]:{fmt}}" + (f" [{lo_hi[0]:{fmt}}, {lo_hi[1]:{fmt}}]" if lo_hi and lo_hi[0] != lo_hi[1] else "")

    for mix in ("1", "8", "32", "10", "100", "1000"):
        systems = mixes.get(mix, {})
        ours = systems.get("treelora", {}).get("tokens_per_s")
        base_p99 = systems.get("base", {}).get("p99_ms")
        for name, r in systems.items():
            ratio = f"{ours / r['tokens_per_s']:.2f}" if ours and r["tokens_per_s"] else "-"
            p99 = f"{r['p99_ms'] / base_p99:.2f}" if base_p99 else "-"
            label = f"{mix} (random adapters)" if mix in ("10", "100", "1000") else mix
            out.append(
                f"| {label} | {name} | {fig(r, 'tokens_per_s', '.1f')} | {fig(r, 'p50_ms', '.0f')} | "
                f"{fig(r, 'p99_ms', '.0f')} | {ratio} | {p99} |"
            )
    out.append("")
    many = [(m, mixes[m]["treelora"]) for m in ("10", "100", "1000") if "treelora" in mixes.get(m, {})]
    if many:
        out += [
            f"The random-adapter stream under an adapter pool of {st['adapter_cache_bytes'] / 2**30:.2f} GiB (medians "
            "of the repeats; hit rate and cold loads over each cell, the service's resident memory at most):",
            "",
            "| tasks in mix | pool hit rate | cold loads | cold load ms (mean) | pool bytes | service RSS MB |",
            "|---|---|---|---|---|---|",
        ]
        for m, r in many:
            runs = r.get("runs", [r])

            def med(k: str, runs: list[dict[str, Any]] = runs) -> Any:
                vals = sorted(x[k] for x in runs if x.get(k) is not None)
                return vals[len(vals) // 2] if vals else None

            hit, loads, ms = med("pool_hit_rate"), med("cold_loads"), med("cold_load_ms_mean")
            pool, rss = med("pool_bytes"), med("rss_mb_max")
            out.append(
                f"| {m} | {'-' if hit is None else f'{100 * hit:.1f}%'} | {loads} | {'-' if ms is None else ms} | "
                f"{'-' if pool is None else f'{pool / 2**20:.0f} MiB'} | {rss} |"
            )
        out.append("")
    ml = mixes.get("mixed_lengths")
    if ml:
        out += [
            f"Mixed answer lengths ({st.get('mixed_lengths', '')}, the {st['tasks']}-task mix): step-level "
            "batching against request-level batching, the same service otherwise:",
            "",
            "| batching | tokens/s | p50 ms | p99 ms |",
            "|---|---|---|---|",
        ]
        for name, r in ml.items():
            out.append(
                f"| {name} | {fig(r, 'tokens_per_s', '.1f')} | {fig(r, 'p50_ms', '.0f')} | {fig(r, 'p99_ms', '.0f')} |"
            )
        out.append("")
    rm = data.get("router_ms")
    if rm:
        out += [
            "Routing cost (the router alone, flat, median of 20): "
            + "; ".join(
                f"{v['tasks']:.0f} tasks: {v['ms_1_rows']} ms for one prompt, {v['ms_32_rows']} ms for 32"
                for v in rm.values()
            )
            + ".",
            "",
        ]
    ra = data.get("routing_accuracy")
    if ra:
        out += [
            f'Routing without a task id (`task: "auto"`) on every task\'s held-out prompts: flat prototypes '
            f"{ra['flat']}%, tree descent {ra['tree']}%.",
            "",
        ]
    out.append("Routing on the continual benchmark's streams and its confidence: see [Routing](#routing).")
    out.append("")
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
    _notes(out, folder, "serving-notes.md")


ROUTING_CMD = "python -m benchmarks.routing --trace-root ../shared/data/trace-500"


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.1f}"


def _num(v: float | None) -> str:
    return "-" if v is None else f"{v:.3f}"


def _routing(out: list[str], folder: Path) -> None:
    """Routing without a task id and how far its confidence can be trusted (`benchmarks.routing`)."""
    out += ["## Routing", "", f"`{ROUTING_CMD}`", ""]
    path = folder / "routing.json"
    if not path.exists():
        out += ["Not run yet.", ""]
        return
    r = json.loads(path.read_text())
    out += [
        'Every test prompt routed without a task id (`task: "auto"`) by a router built as the learner builds '
        "it, from each task's training prompts; its confidence is calibrated on held-out training prompts "
        "(cross-fitted), never on these test prompts. `wordnet` and `mixed` are the continual benchmark's "
        "streams (quick profile; tree descent where that benchmark's `treelora` run left a tree); `wordnet32` "
        "is 32 WordNet tasks over overlapping label sets with one template, where flat routing errs often "
        "enough to rank right against wrong routes. Confidence figures are of flat routes: expected calibration "
        "error (ECE, 10 bins), AUROC of confidence for right against wrong routes, and the percentages of "
        "right and of wrong routes flagged `low_confidence` at the router's threshold. *Before*: the softmax "
        "share of the prototype router, flagged below 0.5. `long` is the long stream's 20 tasks in 4 "
        "families. The route view is the one of the three (prototypes, centroid, discriminant) that routed "
        "the held-out prompts best; each view's own accuracy follows.",
        "",
        "| stream | tasks | test prompts | route view | flat % | prototypes % | centroid % | discriminant % "
        "| tree % | wrong routes | ECE | AUROC | flagged right % "
        "| flagged wrong % | threshold | before: ECE | before: AUROC | before: flagged right % "
        "| before: flagged wrong % |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for k, v in r.items():
        b = v["before"]
        by_view = v.get("flat_by_view", {})
        views = " | ".join(str(by_view.get(n, "-")) for n in ("prototypes", "centroid", "discriminant"))
        out.append(
            f"| {k} | {v['tasks']} | {v['test_prompts']} | {v.get('route_view', '-')} | {v['flat']} | {views} "
            f"| {v['tree'] if v['tree'] is not None else '-'} "
            f"| {v['wrong_routes']} | {_num(v['ece'])} | {_num(v['auroc'])} | {_pct(v['low_confidence_right'])} "
            f"| {_pct(v['low_confidence_wrong'])} | {v['threshold']:.3f} | {_num(b['ece'])} | {_num(b['auroc'])} "
            f"| {_pct(b['low_confidence_right'])} | {_pct(b['low_confidence_wrong'])} |"
        )
    out += [
        "",
        "On the held-out training prompts the calibration was fitted on (its cross-validated figures, what "
        "`GET /v1/streams/{id}/router` reports):",
        "",
        "| stream | held-out prompts | wrong routes | ECE | AUROC | features |",
        "|---|---|---|---|---|---|",
        *(
            f"| {k} | {h['held_out_prompts']} | {h['wrong_routes']} | {_num(h['ece'])} | {_num(h['auroc'])} "
            f"| {', '.join(h['features'])} |"
            for k, h in ((k, v["held_out"]) for k, v in r.items())
        ),
        "",
        "Alternatives, on the same test prompts (calibrators fitted on the same held-out prompts, each with "
        "the same threshold rule unless the row names a threshold; `router_linear` is the router with its "
        "optional linear head, `router_one_prototype` with one prototype per task, both calibrated the same "
        "way; `nearest_examples` routes by the 10 nearest training prompts, uncalibrated):",
        "",
        "| stream | alternative | flat % | ECE | AUROC | flagged right % | flagged wrong % | threshold |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for k, v in r.items():
        for name, a in v.get("alternatives", {}).items():
            if name.startswith("sentence_encoder"):  # their own table below
                continue
            threshold = f"{a['threshold']:.3f}" if "threshold" in a else "-"
            out.append(
                f"| {k} | {name} | {a.get('flat', v['flat'])} | {_num(a.get('ece'))} | {_num(a.get('auroc'))} "
                f"| {_pct(a.get('low_confidence_right'))} | {_pct(a.get('low_confidence_wrong'))} | {threshold} |"
            )
    encoders = [
        (k, name, a)
        for k, v in r.items()
        for name, a in v.get("alternatives", {}).items()
        if name.startswith("sentence_encoder")
    ]
    if encoders:
        out += [
            "",
            "The same router on a sentence encoder's embeddings (all-MiniLM-L6-v2; `sentence_encoder_and_model`: "
            "beside the model's own), against the default (paired, points, 95% bootstrap over the test prompts):",
            "",
            "| stream | router input | flat % | minus default [95% CI] | verdict | encoder ms / prompt |",
            "|---|---|---|---|---|---|",
            *(
                f"| {k} | {name} | {a['flat']} | {a['vs_default']['diff']:+.1f} "
                f"[{a['vs_default']['ci'][0]:.1f}, {a['vs_default']['ci'][1]:.1f}] | {a['vs_default']['verdict']} "
                f"| {a['encoder_embed_ms_per_prompt']} |"
                for k, name, a in encoders
            ),
        ]
    out += ["", "![routing reliability](benchmarks/routing-reliability.png)", ""]
    _notes(out, folder, "routing-notes.md")


PREFIX_CMD = "python -m benchmarks.prompt_prefix --trace-root ../shared/data/trace-500"


def _prompt_prefix(out: list[str], folder: Path) -> None:
    """Evaluation with and without the shared prompt prefix (written by `benchmarks.prompt_prefix`)."""
    data = _section(out, folder, "Evaluation: the shared prompt prefix", PREFIX_CMD, "prompt-prefix.json")
    if data is None:
        return
    out += [
        "Every test set of a stream scored on the path of a `per_task_lora` adapter trained on the "
        "stream's first task, in one process, both ways alternating, the fastest of "
        f"{data['repeats']} runs each ({data['machine']}). Prefill positions: prompt tokens the model "
        "runs before the first answer token, padding included.",
        "",
        "| stream | task | prompts | s shared | s plain | ratio | prefill positions shared / plain | same answers |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for stream, st in data["streams"].items():
        for r in st["tasks"]:
            out.append(
                f"| {stream} | {r['task']} | {r['prompts']} | {r['seconds_shared']} | {r['seconds_plain']} | "
                f"{r['seconds_shared'] / r['seconds_plain']:.2f} | {r['prefill_positions_shared']} / "
                f"{r['prefill_positions_plain']} | {r['same_answers']} |"
            )
        out.append(
            f"| {stream} | all | {st['answers']} | {st['seconds_shared']} | {st['seconds_plain']} | "
            f"**{st['ratio']:.2f}** | | {st['same_answers']} |"
        )
    out.append("")


def render(folder: Path, suffix: str = "") -> str:
    out = [
        "# Benchmarks",
        "",
        "Every number here comes from the commands shown: all methods on the same model, data, seeds, "
        "epoch budget and early-stopping rule (docs/treelora.md), run as cells (stream x method x seed) "
        "and aggregated with intervals. Scores are percentages.",
        "",
    ]
    _stream(
        out,
        folder,
        f"continual{suffix}",
        "Same-template stream (WordNet supersenses)",
        "python -m benchmarks.continual run --stream wordnet --seeds 0 1 2 --jobs 2 && "
        "python -m benchmarks.continual aggregate --stream wordnet",
    )
    _stream(
        out,
        folder,
        f"continual-mixed{suffix}",
        "Mixed-template stream (TRACE-500)",
        "python -m benchmarks.continual run --stream mixed --seeds 0 1 2 --jobs 2 "
        "--trace-root ../shared/data/trace-500 && "
        "python -m benchmarks.continual aggregate --stream mixed",
    )
    _long_stream(out, folder)
    _search(out, folder, suffix)
    ts = folder / "tree_search.json"
    out += ["## Tree search", "", "`python -m benchmarks.tree_search`", ""]
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
    _notes(out, folder, "notes.md")
    _prompt_prefix(out, folder)
    _serving(out, folder)
    _routing(out, folder)
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--folder", type=Path, default=Path("docs/benchmarks"))
    ap.add_argument("--out", type=Path, default=Path("docs/benchmarks.md"))
    ap.add_argument("--suffix", default="", help="'-smoke' renders the smoke profile's files")
    args = ap.parse_args(argv)
    args.out.write_text(render(args.folder, args.suffix))


if __name__ == "__main__":
    main()
