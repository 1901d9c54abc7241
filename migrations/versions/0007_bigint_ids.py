"""Image and tag ids are 64-bit on PostgreSQL, as they always were on SQLite.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-23

A ``SERIAL`` column and its sequence stop at 2**31 - 1. A library of a billion images
with a handful of tags each passes that in ``tags.id`` long before ``images.id``, and
then every tagging run fails. ``BIGINT`` and a ``bigint`` sequence (PostgreSQL 10+) lift
both; rewriting the tables takes a while on a big library, once. SQLite's ``INTEGER
PRIMARY KEY`` is already 64-bit: a no-op there.
"""
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

# (table, column, whether it has a sequence)
_COLUMNS = (("images", "id", True), ("tags", "id", True), ("tags", "image_id", False))


def _retype(kind: str) -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for table, column, sequence in _COLUMNS:
        op.execute(f"ALTER TABLE {table} ALTER COLUMN {column} TYPE {kind}")
        if sequence:
            # From integer's maximum to bigint's and back: PostgreSQL moves a sequence's
            # default maximum along with its type.
            op.execute(f"DO $$ BEGIN EXECUTE format('ALTER SEQUENCE %s AS {kind}', "
                       f"pg_get_serial_sequence('{table}', '{column}')); END $$")


def upgrade() -> None:
    _retype("BIGINT")


def downgrade() -> None:
    _retype("INTEGER")  # fails, changing nothing, if an id no longer fits
