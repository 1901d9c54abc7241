"""Image paths compare in byte order on PostgreSQL too, as they always did on SQLite.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-22

Finding the files under a folder is a range on ``images.path`` (``store.under``):
``path >= '/a/b/' AND path < '/a/b0'``, '0' being the character after '/'. That holds in
byte order only. A PostgreSQL database's default collation (en_US, ICU) orders by
letters first, case and punctuation later, so '/a/B/x.jpg' would fall inside '/a/b/'.
``COLLATE "C"`` is byte order, and on UTF-8 the same order as SQLite's. A no-op on SQLite.
"""
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute('ALTER TABLE images ALTER COLUMN path TYPE TEXT COLLATE "C"')


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute('ALTER TABLE images ALTER COLUMN path TYPE TEXT COLLATE "default"')
