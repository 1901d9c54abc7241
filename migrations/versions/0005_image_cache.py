"""A cache of embeddings of images outside the library, by content hash.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-22

``clipsearch eval`` examples, ``classify`` and query files that are not indexed, and web
uploads are encoded once per model; a repeated use reads the vector from here.
"""
import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "image_cache",
        sa.Column("model", sa.String(256), primary_key=True),
        sa.Column("content_hash", sa.String(32), primary_key=True),
        sa.Column("vector", sa.LargeBinary, nullable=False),  # float32
        sa.Column("used_at", sa.BigInteger, nullable=False, index=True),
    )


def downgrade() -> None:
    op.drop_table("image_cache")
