"""The web page: the streams at `/`, one stream at `/streams/{id}` (tree, accuracy matrix, jobs,
upload, playground, adapters). Server-rendered from the service functions; the page's JavaScript
uses the JSON API for what changes (live progress, uploads, predictions)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates

from treelora_core.strategies import STRATEGIES

from ..auth import PageCallerDep
from ..deps import SessionDep, SettingsDep
from ..enums import TERMINAL
from ..errors import NotFound
from ..params import StreamRef
from ..services import overview, streams, trees
from ..web import views

WEB = Path(__file__).resolve().parents[1] / "web"
STATIC_DIR = WEB / "static"
templates = Jinja2Templates(directory=WEB / "templates")
templates.env.filters.update(bytes=views.human_bytes, when=views.when, eta=views.eta)
templates.env.globals.update(terminal=[str(s) for s in TERMINAL])

router = APIRouter(include_in_schema=False)


def _locked(request: Request) -> HTMLResponse:
    """Authentication is on and the browser sent no key: a page that asks for one. Its script keeps
    the key (localStorage) and loads the page again with it as a bearer header."""
    return templates.TemplateResponse(request, "locked.html", {})


@router.get("/", response_class=HTMLResponse)
def index(request: Request, session: SessionDep, settings: SettingsDep, caller: PageCallerDep) -> HTMLResponse:
    if caller is None:
        return _locked(request)
    context = {
        "streams": overview.stream_summaries(session=session, caller=caller),
        "models": list(settings.model_choices()),
        "default_model": settings.default_model,
        "strategies": STRATEGIES,
    }
    return templates.TemplateResponse(request, "index.html", context)


@router.get("/streams/{stream_id}", response_class=HTMLResponse)
def stream_page(stream_id: StreamRef, request: Request, session: SessionDep, caller: PageCallerDep) -> HTMLResponse:
    if caller is None:
        return _locked(request)
    try:
        stream = streams.get_stream(session=session, stream_id=stream_id, caller=caller)
    except NotFound as exc:
        return templates.TemplateResponse(request, "missing.html", {"message": exc.message}, status_code=404)
    tree = trees.tree(session=session, caller=caller, stream_id=stream.id)
    ev = trees.evaluations(session=session, caller=caller, stream_id=stream.id)
    context: dict[str, Any] = {
        "stream": stream,
        "tree": tree,
        "layout": views.tree_layout(tree),
        "ev": ev,
        "heat": views.heatmap(ev),
        "series": views.metric_series(ev["R"]),
        "adapters": trees.adapters(session=session, caller=caller, stream_id=stream.id),
        "jobs": overview.recent_jobs(session=session, caller=caller, stream_id=stream.id),
    }
    return templates.TemplateResponse(request, "stream.html", context)
