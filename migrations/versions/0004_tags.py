"""Tags on images (automatic and manual) and trained few-shot classifiers.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-22

``tags`` holds one row per (image, label, source, label set). ``source`` is
``zero-shot``, ``few-shot`` or ``manual``; a manual row with ``removed`` set is the user
taking a label off an image, which hides automatic tags of that label. ``classifiers``
holds few-shot linear heads as raw float32 bytes and JSON, never pickles.
"""
import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "tags",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("image_id", sa.Integer, sa.ForeignKey("images.id", ondelete="CASCADE"), nullable=False),
        sa.Column("label", sa.Text, nullable=False),
        sa.Column("source", sa.String(16), nullable=False),
        sa.Column("label_set", sa.String(256), nullable=False),
        sa.Column("score", sa.Float, nullable=False),
        sa.Column("removed", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("image_id", "label", "source", "label_set", name="uq_tags_image_label_source_set"),
    )
    # Tag filters look labels up; the unique key serves lookups by image. Replacing a label
    # set's tags scans the table instead of keeping a third index up to date on every insert.
    op.create_index("ix_tags_label", "tags", ["label"])
    op.create_table(
        "classifiers",
        sa.Column("name", sa.String(128), primary_key=True),
        sa.Column("model", sa.String(256), nullable=False),
        sa.Column("labels", sa.Text, nullable=False),  # JSON: names and parents
        sa.Column("weights", sa.LargeBinary, nullable=False),  # float32, labels x dim
        sa.Column("bias", sa.LargeBinary, nullable=False),  # float32, labels
        sa.Column("scale", sa.Float, nullable=False),
        sa.Column("report", sa.Text, nullable=False),  # JSON: how it was trained and how well it did
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("classifiers")
    op.drop_index("ix_tags_label", "tags")
    op.drop_table("tags")
