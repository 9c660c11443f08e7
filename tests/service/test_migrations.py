"""Alembic: upgrade from empty, downgrade to base, upgrade again, on PostgreSQL and SQLite; the
migrated schema matches the ORM tables."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, inspect

from api.migrate import downgrade, upgrade
from api.models import Base

from .conftest import fresh_database


def tables(url: str) -> set[str]:
    engine = create_engine(url)
    names = set(inspect(engine).get_table_names()) - {"alembic_version"}
    engine.dispose()
    return names


def schema_diff(url: str) -> list[object]:
    engine = create_engine(url)
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    engine.dispose()
    return list(diff)


@pytest.mark.parametrize("backend", ["postgresql", "sqlite"])
def test_upgrade_downgrade_upgrade(backend: str, pg_server_url: str, tmp_path: Path) -> None:
    url = fresh_database(pg_server_url) if backend == "postgresql" else f"sqlite:///{tmp_path / 'm.db'}"
    assert tables(url) == set()
    upgrade(url)
    assert tables(url) == set(Base.metadata.tables)
    assert schema_diff(url) == []
    downgrade(url)
    assert tables(url) == set()
    upgrade(url)
    assert tables(url) == set(Base.metadata.tables)
    assert schema_diff(url) == []
