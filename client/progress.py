"""Following a job live: a progress bar fed by the job's server-sent events (phase, step/total,
loss, ETA) with its events printed above it; on a console that is not a terminal (a log, a
pipe), one line per change instead."""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TaskID, TextColumn, TimeElapsedColumn
from rich.text import Text

from .render import event_text, seconds
from .sdk import Client
from .types import Job, JobEvent, JobProgress


def _fields(p: JobProgress) -> tuple[str, str]:
    """(count, detail) for a progress: `step 5/10`, `loss 2.31 · ETA 4 s`."""
    count = ""
    if p.step is not None and p.total and p.phase not in ("committing", "done", "failed", "cancelled"):
        count = f"{'task' if p.phase == 'evaluating' else 'step'} {p.step}/{p.total}"
    detail = []
    if p.phase == "train" and p.loss is not None:
        detail.append(f"loss {p.loss:.4g}")
    if p.phase == "validate" and p.val_loss is not None:
        detail.append(f"val loss {p.val_loss:.4g}")
    if p.phase == "evaluating" and p.task:
        detail.append(f"scoring {p.task}")
    if p.phase == "train" and p.eta_s is not None:
        detail.append(f"ETA {seconds(p.eta_s)}")
    return count, " · ".join(detail)


class Follower:
    """Draws one job's live events on `console` (what `on_event` receives)."""

    def __init__(self, console: Console, label: str) -> None:
        self.console, self.label = console, label
        self.live = console.is_terminal
        self.progress: Progress | None = None
        self.bar: TaskID | None = None
        self._last = ""

    def __enter__(self) -> Follower:
        if self.live:
            self.progress = Progress(
                SpinnerColumn(),
                TextColumn("[bold]{task.description}"),
                TextColumn("{task.fields[phase]:<10}"),
                BarColumn(bar_width=30),
                TextColumn("{task.fields[count]:<12}"),
                TextColumn("{task.fields[detail]}"),
                TimeElapsedColumn(),
                console=self.console,
                transient=False,
            )
            self.progress.start()
            self.bar = self.progress.add_task(self.label, total=None, phase="waiting", count="", detail="")
        return self

    def __exit__(self, *exc: object) -> None:
        if self.progress is not None:
            self.progress.stop()

    def on_event(self, ev: JobEvent) -> None:
        p = ev.progress
        if p is None:
            text = event_text(ev)
            if text is not None:
                self.console.print(
                    Text.assemble("  " if self.live else f"{self.label}: ", text), soft_wrap=not self.live
                )
            return
        count, detail = _fields(p)
        phase = p.phase or p.state or ""
        if self.progress is not None and self.bar is not None:
            total = float(p.total) if p.total else None
            completed = float(p.step or 0)
            if phase in ("done", "committing") and total:
                completed = total
            self.progress.update(self.bar, total=total, completed=completed, phase=phase, count=count, detail=detail)
        elif phase not in ("validate", "done", "failed", "cancelled"):  # events say these
            line = " · ".join(x for x in (phase, count, detail) if x)
            if line != self._last:
                self._last = line
                self.console.print(f"{self.label}: {line}", highlight=False, soft_wrap=True)


def follow(client: Client, job_id: str, console: Console, label: str) -> Job:
    """Follow the job until it finishes; its final state."""
    with Follower(console, label) as f:
        return client.jobs.wait(job_id, on_event=f.on_event)
