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

from ..deps import SessionDep, SettingsDep
from ..enums import TERMINAL
from ..errors import NotFound
from ..services import overview, streams, trees
from ..web import views

WEB = Path(__file__).resolve().parents[1] / "web"
STATIC_DIR = WEB / "static"
templates = Jinja2Templates(directory=WEB / "templates")
templates.env.filters.update(bytes=views.human_bytes, when=views.when, eta=views.eta)
templates.env.globals.update(terminal=[str(s) for s in TERMINAL])

router = APIRouter(include_in_schema=False)


@router.get("/", response_class=HTMLResponse)
def index(request: Request, session: SessionDep, settings: SettingsDep) -> HTMLResponse:
    context = {
        "streams": overview.stream_summaries(session=session),
        "models": list(settings.model_choices()),
        "default_model": settings.default_model,
        "strategies": STRATEGIES,
    }
    return templates.TemplateResponse(request, "index.html", context)


@router.get("/streams/{stream_id}", response_class=HTMLResponse)
def stream_page(stream_id: str, request: Request, session: SessionDep) -> HTMLResponse:
    try:
        stream = streams.get_stream(session=session, stream_id=stream_id)
    except NotFound as exc:
        return templates.TemplateResponse(request, "missing.html", {"message": exc.message}, status_code=404)
    tree = trees.tree(session=session, stream_id=stream.id)
    ev = trees.evaluations(session=session, stream_id=stream.id)
    context: dict[str, Any] = {
        "stream": stream,
        "tree": tree,
        "layout": views.tree_layout(tree),
        "ev": ev,
        "heat": views.heatmap(ev),
        "series": views.metric_series(ev["R"]),
        "adapters": trees.adapters(session=session, stream_id=stream.id),
        "jobs": overview.recent_jobs(session=session, stream_id=stream.id),
    }
    return templates.TemplateResponse(request, "stream.html", context)
