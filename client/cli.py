"""`treelora`: the command-line client of the service.

    treelora stream create support --epochs 2
    treelora task add support billing.jsonl --eval billing-eval.jsonl --wait
    treelora tree show support
    treelora eval show support
    treelora predict support "My card was charged twice" --task auto

The service's address: `--url`, else TREELORA_URL, else http://127.0.0.1:8000 (where
`./scripts/serve` listens). TREELORA_API_KEY, when set, is sent as a bearer token. `--json`
prints what the service answered as JSON instead of tables.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import BaseModel
from rich.console import Console, RenderableType
from rich.text import Text

from . import render
from .errors import APIConnectionError, APIError
from .progress import follow
from .sdk import Client, default_base_url
from .types import Job, Stream

out = Console(highlight=False)
err = Console(stderr=True, highlight=False)

app = typer.Typer(
    help="The command-line client of the TreeLoRA continual fine-tuning service.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
stream_app = typer.Typer(help="Create, list, show and delete streams.", no_args_is_help=True)
task_app = typer.Typer(help="Add tasks to a stream (each queues a training job); list, retire.", no_args_is_help=True)
job_app = typer.Typer(help="Training jobs: show, follow, cancel.", no_args_is_help=True)
tree_app = typer.Typer(help="The tree of adapters a stream learned.", no_args_is_help=True)
eval_app = typer.Typer(help="The accuracy matrix R of a stream.", no_args_is_help=True)
adapter_app = typer.Typer(help="The adapter registry; a task's adapter as a PEFT folder.", no_args_is_help=True)
app.add_typer(stream_app, name="stream")
app.add_typer(task_app, name="task")
app.add_typer(job_app, name="job")
app.add_typer(tree_app, name="tree")
app.add_typer(eval_app, name="eval")
app.add_typer(adapter_app, name="adapter")


@dataclass
class State:
    url: str
    json: bool
    _client: Client | None = None

    @property
    def client(self) -> Client:
        if self._client is None:
            self._client = Client(self.url)
        return self._client


def _state(ctx: typer.Context) -> State:
    obj = ctx.find_root().obj
    assert isinstance(obj, State)
    return obj


def _emit(st: State, data: BaseModel | list[Any] | dict[str, Any], view: RenderableType | None) -> None:
    """JSON (with --json) or the rich view."""
    if st.json:
        plain = data.model_dump(mode="json") if isinstance(data, BaseModel) else data
        if isinstance(plain, list):
            plain = [d.model_dump(mode="json") if isinstance(d, BaseModel) else d for d in plain]
        sys.stdout.write(json.dumps(plain, indent=2) + "\n")
    elif view is not None:
        out.print(view)


def _hint(st: State, text: str) -> None:
    if not st.json:
        out.print(Text(text, style="dim"))


@app.callback()
def main_options(
    ctx: typer.Context,
    url: Annotated[
        str | None,
        typer.Option("--url", metavar="URL", help="the service (default: TREELORA_URL or http://127.0.0.1:8000)"),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the service's answers as JSON")] = False,
) -> None:
    """Continual fine-tuning from the terminal: streams, tasks, jobs, the tree, R, predictions."""
    ctx.obj = State(url or default_base_url(), as_json)
    ctx.call_on_close(lambda: ctx.obj._client.close() if ctx.obj._client else None)


StreamArg = Annotated[str, typer.Argument(metavar="STREAM", help="a stream's name or id")]
TaskArg = Annotated[str, typer.Argument(metavar="TASK", help="a learned task's name or id")]


# -- streams --------------------------------------------------------------------------------------
def _parse_set(items: list[str]) -> dict[str, dict[str, Any]]:
    sections: dict[str, dict[str, Any]] = {}
    for item in items:
        key, eq, raw = item.partition("=")
        section, dot, field = key.partition(".")
        if not eq or not dot or not section or not field:
            raise typer.BadParameter(f"{item!r}: use SECTION.FIELD=VALUE, e.g. train.epochs=2", param_hint="--set")
        try:
            value: Any = json.loads(raw)
        except ValueError:
            value = raw
        sections.setdefault(section, {})[field] = value
    return sections


@stream_app.command("create")
def stream_create(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(metavar="NAME", help="letters, digits, '.', '_' or '-'")],
    strategy: Annotated[
        str | None,
        typer.Option(help="treelora (default), treelora_paper, seq_lora, ewc, o_lora, per_task_lora or lora_top"),
    ] = None,
    model: Annotated[str | None, typer.Option("--model", help="a base model the service offers")] = None,
    epochs: Annotated[int | None, typer.Option(help="training epochs per task (train.epochs)")] = None,
    lr: Annotated[float | None, typer.Option(help="learning rate (train.lr)")] = None,
    chat_template: Annotated[
        bool | None, typer.Option("--chat-template/--plain", help="format prompts with the model's chat template")
    ] = None,
    settings: Annotated[
        list[str] | None,
        typer.Option("--set", "-s", metavar="SECTION.FIELD=VALUE", help="any config field, e.g. lora.r=16; repeatable"),
    ] = None,
) -> None:
    """Create a stream: a base model that learns tasks one after another."""
    st = _state(ctx)
    sections = _parse_set(settings or [])
    train = sections.setdefault("train", {})
    if epochs is not None:
        train["epochs"] = epochs
    if lr is not None:
        train["lr"] = lr
    body = {k: v for k, v in sections.items() if v}
    s = st.client.streams.create(name, base_model=model, strategy=strategy, chat_template=chat_template, **body)
    view = Text.assemble("created stream ", (s.name, "bold"), f" ({s.id}): {s.strategy} on {s.base_model}")
    _emit(st, s, view)
    _hint(st, f"next: treelora task add {s.name} FILE.jsonl --wait")


@stream_app.command("list")
def stream_list(ctx: typer.Context, limit: Annotated[int, typer.Option(help="at most this many")] = 100) -> None:
    """The streams, oldest first."""
    st = _state(ctx)
    streams: list[Stream] = []
    for s in st.client.streams.iter():
        if len(streams) >= limit:
            break
        streams.append(s)
    _emit(st, streams, render.streams_table(streams))


@stream_app.command("show")
def stream_show(ctx: typer.Context, stream: StreamArg) -> None:
    """A stream's config and its tasks."""
    st = _state(ctx)
    s = st.client.streams.retrieve(stream)
    tasks = list(st.client.tasks.iter(s.id))
    _emit(st, {**s.model_dump(mode="json"), "tasks": [t.model_dump(mode="json") for t in tasks]}, None)
    if not st.json:
        out.print(render.stream_view(s, tasks))


@stream_app.command("delete")
def stream_delete(
    ctx: typer.Context,
    stream: StreamArg,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="do not ask")] = False,
) -> None:
    """Delete a stream with its tasks, jobs, tree versions and adapters (not while a job runs)."""
    st = _state(ctx)
    if not yes and not typer.confirm(f"delete stream {stream} and everything it learned?"):
        raise typer.Exit(1)
    gone = st.client.streams.delete(stream)
    freed = f"{gone.blobs_deleted} blobs deleted, {gone.blobs_shared + gone.blobs_young} kept"
    _emit(st, gone, Text.assemble("deleted stream ", (gone.name, "bold"), f" ({freed})"))


# -- tasks and jobs -------------------------------------------------------------------------------
def _follow(st: State, job: Job, label: str) -> Job:
    """Follow a job live; on Ctrl-C, say how to find it again and exit 130."""
    try:
        final = follow(st.client, job.id, err if st.json else out, label)
    except KeyboardInterrupt:
        err.print(f"stopped following; the job goes on: treelora job show {job.id} (or job cancel {job.id})")
        raise typer.Exit(130) from None
    return final


def _finish(st: State, job: Job) -> None:
    """The final state of a followed job; a job that did not succeed exits 1."""
    if st.json:
        _emit(st, job, None)
    else:
        line = Text.assemble(("job ", "dim"), job.id, " ", render.state(job.state))
        if job.error is not None:
            line.append(f": {job.error.code}: {job.error.message}", style="red")
        out.print(line)
    if job.state != "succeeded":
        raise typer.Exit(1)


@task_app.command("add")
def task_add(
    ctx: typer.Context,
    stream: StreamArg,
    file: Annotated[
        Path,
        typer.Argument(
            metavar="FILE", help="JSONL of {prompt, completion}", exists=True, dir_okay=False, readable=True
        ),
    ],
    eval_file: Annotated[
        Path | None,
        typer.Option("--eval", help="eval split (else 20% is held out)", exists=True, dir_okay=False, readable=True),
    ] = None,
    name: Annotated[str | None, typer.Option(help="task name (default: the file's name)")] = None,
    metric: Annotated[str | None, typer.Option(help="exact_match (default) or rouge_l")] = None,
    wait: Annotated[bool, typer.Option("--wait", help="follow the training job live until it finishes")] = False,
) -> None:
    """Upload a task; its training job is queued (the file is checked first: a bad record is
    reported with its line)."""
    st = _state(ctx)
    sub = st.client.tasks.create(stream, file, name=name, eval_file=eval_file, metric=metric)
    t = sub.task
    if not st.json:
        out.print(
            Text.assemble(
                "added task ",
                (t.name, "bold"),
                f" ({t.n_train} train, {t.n_eval} eval examples",
                ", eval held out" if t.eval_source == "holdout" else "",
                f"): job {sub.job.id}",
            ),
            soft_wrap=True,
        )
    if not wait:
        _emit(st, sub, None)
        _hint(st, f"follow it: treelora job watch {sub.job.id}")
        return
    _finish(st, _follow(st, sub.job, t.name))


@task_app.command("list")
def task_list(ctx: typer.Context, stream: StreamArg) -> None:
    """A stream's tasks: status, sizes, position in the stream."""
    st = _state(ctx)
    tasks = list(st.client.tasks.iter(stream))
    _emit(st, tasks, render.tasks_table(tasks))


@task_app.command("retire")
def task_retire(ctx: typer.Context, stream: StreamArg, task: TaskArg) -> None:
    """Stop serving a learned task (auto routing skips it); it stays in the tree and in R."""
    st = _state(ctx)
    t = st.client.tasks.retire(stream, task)
    _emit(st, t, Text.assemble("task ", (t.name, "bold"), " retired from serving"))


@task_app.command("unretire")
def task_unretire(ctx: typer.Context, stream: StreamArg, task: TaskArg) -> None:
    """Serve a retired task again."""
    st = _state(ctx)
    t = st.client.tasks.unretire(stream, task)
    _emit(st, t, Text.assemble("task ", (t.name, "bold"), " served again"))


@job_app.command("show")
def job_show(ctx: typer.Context, job_id: Annotated[str, typer.Argument(metavar="ID")]) -> None:
    """A job: state, progress, error, timing, report."""
    st = _state(ctx)
    job = st.client.jobs.retrieve(job_id)
    if st.json:
        _emit(st, job, None)
        return
    stream = st.client.streams.retrieve(job.stream_id)
    task = st.client.tasks.retrieve(job.stream_id, job.task_id)
    out.print(render.job_view(job, task, stream))


@job_app.command("list")
def job_list(
    ctx: typer.Context,
    stream: Annotated[str | None, typer.Option(help="only this stream's jobs (name or id)")] = None,
    state: Annotated[str | None, typer.Option(help="queued, running, evaluating, succeeded, failed, cancelled")] = None,
    limit: Annotated[int, typer.Option(help="at most this many (oldest first)")] = 20,
) -> None:
    """Jobs, oldest first."""
    st = _state(ctx)
    names: dict[str, str] = {}
    stream_id = None
    if stream is not None:
        s = st.client.streams.retrieve(stream)
        stream_id, names[s.id] = s.id, s.name
    jobs = st.client.jobs.list(stream_id=stream_id, state=state, limit=min(limit, 100)).data
    if not st.json:
        for sid in {j.stream_id for j in jobs} - set(names):
            names[sid] = st.client.streams.retrieve(sid).name
        for sid in {j.stream_id for j in jobs}:
            names |= {t.id: t.name for t in st.client.tasks.iter(sid)}
    _emit(st, jobs, render.jobs_table(jobs, names))


@job_app.command("watch")
def job_watch(ctx: typer.Context, job_id: Annotated[str, typer.Argument(metavar="ID")]) -> None:
    """Follow a job live until it finishes (exits 1 unless it succeeded)."""
    st = _state(ctx)
    job = st.client.jobs.retrieve(job_id)
    task = st.client.tasks.retrieve(job.stream_id, job.task_id)
    _finish(st, _follow(st, job, task.name))


@job_app.command("cancel")
def job_cancel(ctx: typer.Context, job_id: Annotated[str, typer.Argument(metavar="ID")]) -> None:
    """Cancel a job: a queued one at once, a running one within seconds."""
    st = _state(ctx)
    job = st.client.jobs.cancel(job_id)
    word = "cancelled" if job.state == "cancelled" else "cancel requested; it stops within seconds"
    _emit(st, job, Text.assemble("job ", (job.id, "bold"), f": {word}"))


# -- what a stream learned ------------------------------------------------------------------------
Version = Annotated[int | None, typer.Option(help="a tree version (default: the latest)")]


@tree_app.command("show")
def tree_show(ctx: typer.Context, stream: StreamArg, version: Version = None) -> None:
    """The tree: nodes with their block ranges, the task owning each leaf, task similarity."""
    st = _state(ctx)
    tree = st.client.streams.tree(stream, version=version)
    _emit(st, tree, render.tree_view(stream, tree))


@eval_app.command("show")
def eval_show(ctx: typer.Context, stream: StreamArg) -> None:
    """R: the score on every task after each version, with OP, BWT and forgetting."""
    st = _state(ctx)
    ev = st.client.streams.evaluations(stream)
    _emit(st, ev, render.eval_view(ev))


@app.command("predict")
def predict(
    ctx: typer.Context,
    stream: StreamArg,
    texts: Annotated[list[str], typer.Argument(metavar="TEXT", help="prompts ('-' reads one from stdin)")],
    task: Annotated[str, typer.Option(help="a task name or id, or auto to route by content")] = "auto",
    max_new_tokens: Annotated[int, typer.Option(help="answer length limit in tokens")] = 16,
    routing: Annotated[str | None, typer.Option(help="for auto: flat (nearest prototype) or tree")] = None,
) -> None:
    """Answer prompts with a task's adapters, or with the task chosen by routing (auto)."""
    st = _state(ctx)
    inputs = [sys.stdin.read().rstrip("\n") if t == "-" else t for t in texts]
    opts: dict[str, Any] = {"max_new_tokens": max_new_tokens}
    if routing is not None:
        opts["routing"] = routing
    resp = st.client.streams.predict(stream, inputs, task=task, **opts)
    _emit(st, resp, render.predictions_view(resp, inputs, task))


@adapter_app.command("export")
def adapter_export(
    ctx: typer.Context,
    stream: StreamArg,
    task: TaskArg,
    output: Annotated[Path, typer.Option("--output", "-o", help="folder to write (created if missing)")],
    force: Annotated[bool, typer.Option(help="write into a folder that is not empty")] = False,
) -> None:
    """Write a task's path as one standard PEFT LoRA adapter folder."""
    st = _state(ctx)
    if output.exists() and (not output.is_dir() or (any(output.iterdir()) and not force)):
        raise typer.BadParameter(f"{output} is not an empty folder (--force writes into it)", param_hint="-o")
    files = st.client.tasks.export_adapter(stream, task, output)
    data = {"output": str(output), "files": [str(f) for f in files]}
    names = ", ".join(f.name for f in files)
    view = Text.assemble("wrote ", (str(output), "bold"), f": {names}")
    _emit(st, data, view)
    _hint(st, f'load it: peft.PeftModel.from_pretrained(base_model, "{output}")')


@adapter_app.command("list")
def adapter_list(ctx: typer.Context, stream: StreamArg, version: Version = None) -> None:
    """The adapter registry of a tree version: node, blocks, bytes, sha256, the job that trained it."""
    st = _state(ctx)
    adapters = st.client.streams.adapters(stream, version=version)
    blocks = st.client.streams.tree(stream, version=version).blocks if adapters and not st.json else None
    _emit(st, adapters, render.adapters_table(adapters, blocks))


def _print_error(e: APIError) -> None:
    msg = Text("error: ", style="bold red")
    msg.append(e.message)
    details = [f"{k} {v}" for k, v in (("status", e.status), ("code", e.code), ("param", e.param)) if v is not None]
    if e.line is not None:
        details.append(f"line {e.line}")
    if details:
        msg.append(f"  ({', '.join(details)})", style="dim")
    err.print(msg, soft_wrap=True)
    if isinstance(e, APIConnectionError):
        hint = "is the service running? ./scripts/serve starts it; --url or TREELORA_URL points to it"
        err.print(Text(hint, "dim"), soft_wrap=True)


def main() -> None:
    """The `treelora` console script: a service error prints its message and exits 1."""
    try:
        app()
    except APIError as e:
        _print_error(e)
        sys.exit(1)


if __name__ == "__main__":
    main()
