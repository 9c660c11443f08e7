"""api_keys, and streams.owner: every stream belongs to the key that created it ("admin" for the
admin key and for streams made with authentication off, as every existing stream was); stream
names become unique per owner

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02 10:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import api.models

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

# names for the unique constraints, also for SQLite, whose 0001 constraint on streams.name has none
NAMING = {"uq": "uq_%(table_name)s_%(column_0_name)s"}


def _name_constraint() -> str:
    """The unique constraint 0001 put on streams.name: PostgreSQL named it itself."""
    return "streams_name_key" if op.get_bind().dialect.name == "postgresql" else "uq_streams_name"


def upgrade() -> None:
    op.create_table(
        "api_keys",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("prefix", sa.String(length=16), nullable=False),
        sa.Column("secret_sha256", sa.String(length=64), nullable=False),
        sa.Column("created_at", api.models.UTCDateTime(), nullable=False),
        sa.Column("revoked_at", api.models.UTCDateTime(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("secret_sha256"),
    )
    with op.batch_alter_table("streams", schema=None, naming_convention=NAMING) as batch_op:
        batch_op.add_column(sa.Column("owner", sa.String(length=40), server_default="admin", nullable=False))
        batch_op.drop_constraint(_name_constraint(), type_="unique")
        batch_op.create_unique_constraint("uq_streams_owner", ["owner", "name"])
        batch_op.create_index(batch_op.f("ix_streams_owner"), ["owner"], unique=False)


def downgrade() -> None:
    # fails (unique violation) if two owners have streams of one name: rename or delete one first
    with op.batch_alter_table("streams", schema=None, naming_convention=NAMING) as batch_op:
        batch_op.drop_index(batch_op.f("ix_streams_owner"))
        batch_op.drop_constraint("uq_streams_owner", type_="unique")
        batch_op.create_unique_constraint(_name_constraint(), ["name"])
        batch_op.drop_column("owner")
    op.drop_table("api_keys")
