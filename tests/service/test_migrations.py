"""Alembic: upgrade from empty, downgrade to base, upgrade again, on PostgreSQL and SQLite; the
migrated schema matches the ORM tables."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.exc import IntegrityError

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


@pytest.mark.parametrize("backend", ["postgresql", "sqlite"])
def test_task_retirement_migration_keeps_existing_rows(backend: str, pg_server_url: str, tmp_path: Path) -> None:
    """0002 adds `tasks.retired_at` (null: served) to a database that already holds tasks, and
    its downgrade drops the column and keeps the rows."""
    url = fresh_database(pg_server_url) if backend == "postgresql" else f"sqlite:///{tmp_path / 'm.db'}"
    upgrade(url, "0001")
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(
            text(
                "insert into streams (id, name, base_model, strategy, config, tree_version, created_at)"
                " values ('str_1', 's', 'm', 'treelora', '{}', 0, '2026-01-01T00:00:00+00:00')"
            )
        )
        conn.execute(
            text(
                "insert into tasks (id, stream_id, name, metric, status, train_sha256, eval_sha256, n_train,"
                " n_eval, eval_source, bytes, created_at) values ('tsk_1', 'str_1', 't', 'exact_match',"
                " 'learned', 'a', 'b', 1, 1, 'holdout', 2, '2026-01-01T00:00:00+00:00')"
            )
        )
    engine.dispose()
    upgrade(url)
    assert "retired_at" in {c["name"] for c in inspect_columns(url, "tasks")}
    assert rows(url, "select id, retired_at from tasks") == [("tsk_1", None)]
    assert schema_diff(url) == []
    downgrade(url, "0001")
    assert "retired_at" not in {c["name"] for c in inspect_columns(url, "tasks")}
    assert rows(url, "select id, name from tasks") == [("tsk_1", "t")]


def inspect_columns(url: str, table: str) -> list[dict[str, object]]:
    engine = create_engine(url)
    cols = list(inspect(engine).get_columns(table))
    engine.dispose()
    return cols  # type: ignore[return-value]


def rows(url: str, sql: str) -> list[tuple[object, ...]]:
    engine = create_engine(url)
    with engine.connect() as conn:
        out = [tuple(r) for r in conn.execute(text(sql))]
    engine.dispose()
    return out


@pytest.mark.parametrize("backend", ["postgresql", "sqlite"])
def test_api_keys_migration_gives_existing_streams_to_the_admin(
    backend: str, pg_server_url: str, tmp_path: Path
) -> None:
    """0003 adds `api_keys` and `streams.owner` ("admin" for the streams already there) and makes
    stream names unique per owner; its downgrade keeps the rows."""
    url = fresh_database(pg_server_url) if backend == "postgresql" else f"sqlite:///{tmp_path / 'm.db'}"
    upgrade(url, "0002")
    insert = (
        "insert into streams (id, name, {owner}base_model, strategy, config, tree_version, created_at)"
        " values ('{id}', 's', {value}'m', 'treelora', '{{}}', 0, '2026-01-01T00:00:00+00:00')"
    )
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text(insert.format(owner="", id="str_1", value="")))
    engine.dispose()
    upgrade(url)
    assert "api_keys" in tables(url) and schema_diff(url) == []
    assert rows(url, "select id, owner from streams") == [("str_1", "admin")]
    engine = create_engine(url)
    with engine.begin() as conn:  # another owner may use the name; the same owner may not
        conn.execute(text(insert.format(owner="owner, ", id="str_2", value="'key_a', ")))
    with pytest.raises(IntegrityError), engine.begin() as conn:
        conn.execute(text(insert.format(owner="owner, ", id="str_3", value="'key_a', ")))
    with engine.begin() as conn:
        conn.execute(text("delete from streams where id = 'str_2'"))
    engine.dispose()
    downgrade(url, "0002")
    assert "api_keys" not in tables(url)
    assert rows(url, "select id, name from streams") == [("str_1", "s")]
