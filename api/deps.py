"""FastAPI dependencies as `Annotated` aliases: a session per request, settings, store, engine."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.orm import Session

from .db import session_factory
from .inference import Inference
from .settings import Settings
from .storage import BlobStore


def get_settings_dep(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def get_session(request: Request) -> Iterator[Session]:
    with session_factory(request.app.state.settings.db_url)() as session:
        yield session


def get_store(request: Request) -> BlobStore:
    store: BlobStore = request.app.state.store
    return store


def get_inference(request: Request) -> Inference:
    inference: Inference = request.app.state.inference
    return inference


SessionDep = Annotated[Session, Depends(get_session)]
SettingsDep = Annotated[Settings, Depends(get_settings_dep)]
StoreDep = Annotated[BlobStore, Depends(get_store)]
InferenceDep = Annotated[Inference, Depends(get_inference)]
