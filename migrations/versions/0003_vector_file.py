"""Exact vectors move from SQLite blobs to an append-only float16 file; a text-embedding cache.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-22

Each image gets ``row``: its row in ``vectors.<generation>.f16`` in the library folder
(see ``clipsearch/vectorstore.py``). The float32 blobs of ``embeddings`` are written
there, rounded to float16, and the table is dropped. The file format is written out
here rather than imported, so that this migration keeps working whatever the package
later does.
"""
from pathlib import Path

import numpy as np
import sqlalchemy as sa
from alembic import context, op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def _folder(conn) -> Path:
    """The library folder: given by clipsearch (or ``alembic -x folder=``), else the SQLite
    file's own (a PostgreSQL URL names no folder)."""
    folder = context.config.attributes.get("folder")
    if folder:
        return Path(folder)
    if conn.dialect.name != "sqlite":
        raise RuntimeError("pass the library folder: alembic -x url=... -x folder=PATH ...")
    return Path(conn.engine.url.database).parent


def upgrade() -> None:
    with op.batch_alter_table("images") as batch:
        batch.add_column(sa.Column("row", sa.BigInteger, nullable=True))
    op.create_table(
        "text_cache",
        sa.Column("model", sa.String(256), primary_key=True),
        sa.Column("text", sa.Text, primary_key=True),
        sa.Column("vector", sa.LargeBinary, nullable=False),
        sa.Column("used_at", sa.BigInteger, nullable=False, index=True),
    )
    conn = op.get_bind()
    rows = conn.execute(sa.text("SELECT image_id, vector FROM embeddings ORDER BY image_id")).all()
    if rows:
        folder = _folder(conn)
        ids = np.array([r[0] for r in rows], np.int64)
        matrix = np.frombuffer(b"".join(r[1] for r in rows), np.float32).reshape(len(rows), -1)
        with open(folder / "vectors.1.f16", "wb") as f:
            f.write(matrix.astype(np.float16).tobytes())
        conn.execute(sa.text("UPDATE images SET row = :row WHERE id = :id"),
                     [{"row": n, "id": int(i)} for n, i in enumerate(ids)])
    op.drop_table("embeddings")


def downgrade() -> None:
    op.create_table(
        "embeddings",
        sa.Column("image_id", sa.Integer, sa.ForeignKey("images.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("vector", sa.LargeBinary, nullable=False),
    )
    conn = op.get_bind()
    generation = conn.execute(sa.text("SELECT value FROM meta WHERE key = 'vectors_generation'")).scalar() or 1
    dim = conn.execute(sa.text("SELECT value FROM meta WHERE key = 'dim'")).scalar()
    data = _folder(conn) / f"vectors.{generation}.f16" if dim else None
    if data is not None and data.exists():
        matrix = np.fromfile(data, np.float16).reshape(-1, int(dim))
        for image_id, row in conn.execute(sa.text("SELECT id, row FROM images WHERE row IS NOT NULL")).all():
            conn.execute(sa.text("INSERT INTO embeddings (image_id, vector) VALUES (:i, :v)"),
                         {"i": image_id, "v": matrix[row].astype(np.float32).tobytes()})
    op.drop_table("text_cache")
    with op.batch_alter_table("images") as batch:
        batch.drop_column("row")
