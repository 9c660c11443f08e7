"""Alembic environment: the URL comes from the caller (`config.attributes["url"]`, as the tests
and `api.migrate` pass it) or from the service settings."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine, pool

from api.models import Base
from api.settings import get_settings

config = context.config
url = config.attributes.get("url") or config.get_main_option("sqlalchemy.url") or get_settings().db_url


def run() -> None:
    if context.is_offline_mode():
        context.configure(url=url, target_metadata=Base.metadata, literal_binds=True, render_as_batch=True)
        with context.begin_transaction():
            context.run_migrations()
        return
    engine = create_engine(url, poolclass=pool.NullPool)
    with engine.connect() as conn:
        context.configure(connection=conn, target_metadata=Base.metadata, render_as_batch=url.startswith("sqlite"))
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


run()
