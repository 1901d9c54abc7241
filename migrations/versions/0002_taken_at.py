"""When each photo was taken, from EXIF, for date filters and sorting.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22
"""
import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # EXIF DateTimeOriginal as epoch nanoseconds; NULL when the file has none, in which
    # case queries fall back to the file's mtime.
    with op.batch_alter_table("images") as batch:
        batch.add_column(sa.Column("taken_ns", sa.BigInteger, nullable=True))
    op.create_index("ix_images_taken_ns", "images", ["taken_ns"])


def downgrade() -> None:
    op.drop_index("ix_images_taken_ns", "images")
    with op.batch_alter_table("images") as batch:
        batch.drop_column("taken_ns")
