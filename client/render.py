"""Rich renderables for the CLI: tables, the tree, the accuracy matrix, predictions. Pure
functions of the SDK's typed objects; user text goes in as `Text`, never as markup."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from rich import box
from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text
from rich.tree import Tree as RichTree

from .types import Adapter, Evaluations, Job, JobEvent, PathSegment, PredictResponse, Stream, Task, Tree

STATE_STYLE = {
    "queued": "yellow",
    "running": "cyan",
    "evaluating": "cyan",
    "succeeded": "green",
    "failed": "red",
    "cancelled": "magenta",
    "pending": "yellow",
    "learned": "green",
}


def when(t: datetime | None) -> str:
    return t.astimezone().strftime("%Y-%m-%d %H:%M:%S") if t else "-"


def short_when(t: datetime | None) -> str:
    return t.astimezone().strftime("%m-%d %H:%M") if t else "-"


def state(s: str) -> Text:
    return Text(s, style=STATE_STYLE.get(s, ""))


def seconds(s: float | None) -> str:
    if s is None:
        return "-"
    s = max(0.0, s)
    if s < 60:
        return f"{s:.1f} s" if s < 10 else f"{s:.0f} s"
    m, sec = divmod(round(s), 60)
    return f"{m} min {sec:02d} s" if m < 60 else f"{m // 60} h {m % 60:02d} min"


def blocks_bar(lo: int, hi: int, n: int | None, width: int = 40) -> Text:
    """Which of the model's `n` blocks [lo, hi) covers, one cell per block (scaled past `width`)."""
    if not n:
        return Text("")
    cells = min(n, width)
    out = Text()
    for c in range(cells):
        b = c * n // cells
        out.append("█" if lo <= b < hi else "·", style="green" if lo <= b < hi else "dim")
    return out


def path_text(segments: list[PathSegment]) -> Text:
    out = Text()
    for i, s in enumerate(segments):
        if i:
            out.append(" → ", style="dim")
        out.append(f"[{s.lo}, {s.hi}) ", style="dim")
        out.append("+".join(s.adapters), style="bold")
    return out or Text("(base model only)", style="dim")


def kv(rows: list[tuple[str, RenderableType | str]]) -> Table:
    t = Table.grid(padding=(0, 2))
    t.add_column(style="dim", no_wrap=True)
    t.add_column()
    for k, v in rows:
        t.add_row(k, v)
    return t


def _table(*cols: str, title: str | None = None) -> Table:
    t = Table(box=box.SIMPLE_HEAD, title=title, title_justify="left", title_style="bold", pad_edge=False)
    for c in cols:
        t.add_column(c, no_wrap=c in ("id", "name", "task"))
    return t


# -- streams and tasks ----------------------------------------------------------------------------
def streams_table(streams: list[Stream]) -> RenderableType:
    if not streams:
        return Text("no streams yet: treelora stream create NAME", style="dim")
    t = _table("name", "base model", "strategy", "version", "training job", "created")
    for s in streams:
        training = s.active_job_id or "-"
        t.add_row(s.name, s.base_model, s.strategy, str(s.tree_version), training, short_when(s.created_at))
    return t


def stream_view(s: Stream, tasks: list[Task]) -> RenderableType:
    train = s.config.get("train", {})
    head = kv(
        [
            ("stream", Text(s.name, style="bold")),
            ("id", s.id),
            ("base model", s.base_model),
            ("strategy", s.strategy),
            ("training", ", ".join(f"{k} {v}" for k, v in train.items() if k in ("epochs", "lr", "batch_size"))),
            ("tree version", str(s.tree_version)),
            ("training job", s.active_job_id or "-"),
            ("created", when(s.created_at)),
        ]
    )
    return Group(head, Text(""), tasks_table(tasks))


def tasks_table(tasks: list[Task]) -> RenderableType:
    if not tasks:
        return Text("no tasks yet: treelora task add STREAM FILE --wait", style="dim")
    t = _table("#", "task", "status", "train", "eval", "metric")
    for k in tasks:
        ev = f"{k.n_eval} {'held out' if k.eval_source == 'holdout' else k.eval_source}"
        pos = "-" if k.position is None else str(k.position)
        status = state(k.status) if k.retired_at is None else Text(f"{k.status}, retired", style="dim")
        t.add_row(pos, k.name, status, str(k.n_train), ev, k.metric)
    return t


# -- jobs -----------------------------------------------------------------------------------------
def progress_line(job: Job) -> str:
    """What a job is doing (`train · step 5/10 · loss 2.31 · ETA 4 s`), or what it came to."""
    if job.state == "succeeded":
        return f"tree version {job.result_version}"
    if job.state == "failed":
        return job.error.code if job.error else "failed"
    if job.state == "cancelled":
        return ""
    p = job.progress
    parts = [p.phase or ""]
    if p.step is not None and p.total:
        parts.append(f"{'task' if p.phase == 'evaluating' else 'step'} {p.step}/{p.total}")
    if p.loss is not None and p.phase == "train":
        parts.append(f"loss {p.loss:.4g}")
    if p.eta_s is not None and p.phase == "train":
        parts.append(f"ETA {seconds(p.eta_s)}")
    return " · ".join(x for x in parts if x)


def job_view(job: Job, task: Task | None = None, stream: Stream | None = None) -> RenderableType:
    rows: list[tuple[str, RenderableType | str]] = [("job", Text(job.id, style="bold")), ("state", state(job.state))]
    if not job.done:
        rows.append(("progress", progress_line(job) or "-"))
    if stream is not None:
        rows.append(("stream", f"{stream.name} ({stream.id})"))
    rows.append(("task", f"{task.name} ({task.id})" if task else job.task_id))
    if job.error is not None:
        rows.append(("error", Text(f"{job.error.code}: {job.error.message}", style="red")))
    if job.cancel_requested and not job.done:
        rows.append(("cancel", "requested"))
    rows.append(("attempt", str(job.attempt)))
    if job.result_version is not None:
        rows.append(("tree version", str(job.result_version)))
    rows.append(("created", when(job.created_at)))
    if job.started_at:
        rows.append(("started", f"{when(job.started_at)} (waited {seconds(_dt(job.created_at, job.started_at))})"))
    if job.finished_at:
        ran = seconds(_dt(job.started_at or job.created_at, job.finished_at))
        rows.append(("finished", f"{when(job.finished_at)} (ran {ran})"))
    if job.report:
        rows.append(("report", report_text(job.report)))
    return kv(rows)


def _dt(a: datetime, b: datetime) -> float:
    return (b - a).total_seconds()


def report_text(r: dict[str, Any]) -> str:
    parts = []
    if "seconds" in r:
        parts.append(f"learned in {seconds(r['seconds'])}")
    if "steps" in r:
        parts.append(f"{r['steps']} steps, {r.get('epochs_run', '?')} epochs")
    if "trainable_params" in r:
        parts.append(f"{r['trainable_params']:,} trainable params")
    if r.get("final_train_loss") is not None:
        parts.append(f"final loss {r['final_train_loss']:.4g}")
    place = [f"{k} {_scalar(v)}" for k, v in (r.get("placement") or {}).items() if isinstance(v, str | int | float)]
    if place:
        parts.append("placement: " + ", ".join(place))
    return " · ".join(parts)


def _scalar(v: str | float) -> str:
    if isinstance(v, bool):
        return "yes" if v else "no"
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def jobs_table(jobs: list[Job], names: dict[str, str] | None = None) -> RenderableType:
    if not jobs:
        return Text("no jobs", style="dim")
    names = names or {}
    t = _table("id", "stream", "task", "state", "progress", "created")
    for j in jobs:
        t.add_row(
            j.id,
            names.get(j.stream_id, j.stream_id),
            names.get(j.task_id, j.task_id),
            state(j.state),
            progress_line(j),
            short_when(j.created_at),
        )
    return t


def event_text(ev: JobEvent) -> Text | None:
    """One stored event as a line (None for those not worth a line)."""
    d = ev.data
    if ev.type == "job.queued":
        return None  # said when the task was added
    if ev.type == "job.started":
        return Text(f"started on {d.get('worker', '?')} (attempt {d.get('attempt', '?')})", style="dim")
    if ev.type == "epoch.validated":
        loss = d.get("val_loss")
        v = f"{loss:.4g}" if isinstance(loss, int | float) else "-"
        return Text(f"epoch {int(d.get('epoch', 0)) + 1} · val loss {v} · step {d.get('step')}/{d.get('total')}")
    if ev.type == "task.learned":
        return Text(report_text(d))
    if ev.type == "job.succeeded":
        scores = ", ".join(f"{k} {v:.1f}" for k, v in (d.get("scores") or {}).items())
        return Text(f"succeeded · tree version {d.get('tree_version')} · scores {scores}", style="green")
    if ev.type == "job.failed":
        return Text(f"failed · {d.get('code')}: {d.get('message')}", style="red")
    if ev.type == "job.phase":
        return None  # the progress shows the phase
    if ev.type == "job.worker_lost":
        then = "queued again" if d.get("then") == "queued" else str(d.get("then"))
        return Text(f"worker lost (attempt {d.get('attempt')}): {then}", style="yellow")
    if ev.type == "job.cancel_requested":
        return Text("cancel requested", style="magenta")
    if ev.type == "job.cancelled":
        return Text("cancelled", style="magenta")
    return Text(f"{ev.type} {d}", style="dim")


# -- the tree, R, adapters ------------------------------------------------------------------------
def tree_view(stream: str, tree: Tree) -> RenderableType:
    head = Text.assemble(
        (stream, "bold"), f" · {tree.strategy} · tree version {tree.version}", f" · {tree.blocks or '?'} blocks"
    )
    if not tree.nodes:
        return Group(head, Text("nothing learned yet", style="dim"))
    root = RichTree(head, guide_style="dim")
    by_id = {n.id: n for n in tree.nodes}
    width = max(len(n.id) for n in tree.nodes)

    def label(nid: str) -> Text:
        n = by_id[nid]
        out = Text.assemble((n.id.ljust(width), "bold"), "  ", blocks_bar(n.lo, n.hi, tree.blocks))
        out.append(f"  [{n.lo}, {n.hi})", style="dim")
        if n.task:
            out.append("  task ", style="dim")
            out.append(n.task, style="bold cyan")
        elif n.members:
            out.append("  shared by ", style="dim")
            out.append(", ".join(n.members))
        return out

    def add(parent: RichTree, nid: str) -> None:
        branch = parent.add(label(nid))
        for c in by_id[nid].children:
            if c in by_id:
                add(branch, c)

    for n in tree.nodes:
        if n.parent is None or n.parent not in by_id:
            add(root, n.id)
    parts: list[RenderableType] = [root]
    if tree.similarity:
        parts += [Text(""), Text("task similarity (probe gradients)", style="bold"), similarity_table(tree.similarity)]
    return Group(*parts)


def similarity_table(sim: dict[str, dict[str, float]]) -> Table:
    names = list(sim)
    t = Table(box=box.SIMPLE_HEAD, pad_edge=False)
    t.add_column("similarity", style="dim")
    for n in names:
        t.add_column(n, justify="right")
    for a in names:
        t.add_row(a, *("·" if a == b else f"{sim[a].get(b, float('nan')):.2f}" for b in names))
    return t


def eval_view(ev: Evaluations) -> RenderableType:
    if not ev.R:
        return Text("no evaluations yet: the first task's job writes the first row", style="dim")
    title = Text("R: score (%) on each task (columns) after each version (rows)", style="bold")
    t = Table(box=box.SIMPLE_HEAD, pad_edge=False)
    t.add_column("version")
    t.add_column("learned", no_wrap=True)
    for name in ev.tasks:
        t.add_column(name, justify="right", no_wrap=True)
    for k, row in enumerate(ev.R):
        version = str(ev.rows[k].tree_version) if k < len(ev.rows) else str(k + 1)
        learned = ev.tasks[k] if k < len(ev.tasks) else ""
        cells = []
        for i, v in enumerate(row):
            if v is None:
                cells.append(Text("·", style="dim"))
                continue
            diag = ev.R[i][i] if i < len(ev.R) else None
            style = "bold" if i == k else ("red" if diag is not None and v < diag - 0.5 else "")
            cells.append(Text(f"{v:.1f}", style=style))
        t.add_row(version, learned, *cells)
    if ev.forgetting_per_task:
        t.add_section()
        t.add_row("", Text("forgetting", style="dim"), *(_f(ev.forgetting_per_task.get(n)) for n in ev.tasks))
    summary = Text.assemble(
        ("OP ", "dim"),
        (_num(ev.op), "bold"),
        ("   BWT ", "dim"),
        (_num(ev.bwt), "bold"),
        ("   forgetting ", "dim"),
        (_num(ev.forgetting), "bold"),
    )
    note = Text(
        "OP: mean score after the last version · BWT: mean change on earlier tasks since each was learned", style="dim"
    )
    return Group(title, t, summary, note)


def _num(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}"


def _f(v: float | None) -> Text:
    return Text("" if v is None else f"{v:.1f}", style="dim")


def adapters_table(adapters: list[Adapter], blocks: int | None = None) -> RenderableType:
    if not adapters:
        return Text("no adapters yet", style="dim")
    t = _table("node", "blocks", "", "bytes", "sha256", "trained by")
    for a in adapters:
        t.add_row(
            a.node,
            f"[{a.block_lo}, {a.block_hi})",
            blocks_bar(a.block_lo, a.block_hi, blocks),
            f"{a.bytes:,}",
            a.sha256[:12],
            a.created_by,
        )
    return t


def predictions_view(resp: PredictResponse, inputs: list[str], asked: str) -> RenderableType:
    parts: list[RenderableType] = []
    for prompt, p in zip(inputs, resp.predictions, strict=False):
        if len(inputs) > 1:
            parts.append(Text.assemble(("› ", "dim"), (prompt, "italic")))
        parts.append(Text(p.output.strip() or "(empty answer)", style="bold"))
        how = Text(p.task or "?", style="bold cyan")
        if asked == "auto":
            how.append(" (routed", style="dim")
            if p.confidence is not None:
                how.append(f", confidence {p.confidence:.2f}", style="dim")
            how.append(")", style="dim")
            if p.low_confidence:
                how.append("  low confidence", style="yellow")
        rows: list[tuple[str, RenderableType | str]] = [("task", how), ("path", path_text(p.path))]
        rows.append(("tokens", f"{p.tokens} · tree version {resp.tree_version}"))
        parts += [kv(rows), Text("")]
    return Group(*parts[:-1]) if parts else Text("")
