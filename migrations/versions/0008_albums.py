"""Albums: saved searches whose members follow the library, and what users said of members.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-03

``albums`` holds one row per saved search: its name, the search as JSON (terms as
written, filters, cutoff, limit and order) and the query vector its terms made, as raw
float32 bytes (never a pickle), with the model that made it. Members are not stored:
they are the search's answer at the time of asking. ``album_members`` holds only what a
user decided about an image, ``pinned`` (kept in whatever the search says) or not
(removed for good); deleting an album or an image deletes its rows.
"""
import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

# 64-bit ids as in 0007; SQLite's INTEGER PRIMARY KEY is its 64-bit rowid already.
ID = sa.BigInteger().with_variant(sa.Integer, "sqlite")


def upgrade() -> None:
    op.create_table(
        "albums",
        sa.Column("id", ID, primary_key=True),
        sa.Column("name", sa.String(200), nullable=False, unique=True),
        sa.Column("search", sa.Text, nullable=False),  # JSON (albums.py)
        sa.Column("vector", sa.LargeBinary, nullable=False),  # float32, the query vector
        sa.Column("model", sa.String(256), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "album_members",
        sa.Column("album_id", ID, sa.ForeignKey("albums.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("image_id", ID, sa.ForeignKey("images.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("pinned", sa.Boolean, nullable=False),  # False: removed from the album
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    # Deleting an image cascades here: without an index on image_id that is a scan per image.
    op.create_index("ix_album_members_image_id", "album_members", ["image_id"])


def downgrade() -> None:
    op.drop_index("ix_album_members_image_id", "album_members")
    op.drop_table("album_members")
    op.drop_table("albums")
