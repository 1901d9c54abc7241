"""Alembic environment for clipsearch.

clipsearch applies migrations itself when a library is opened (``clipsearch.store``),
passing its open connection in ``config.attributes["connection"]``. Developers can
also run Alembic by hand against a library's database:

    alembic -c migrations/alembic.ini -x db=/path/to/library/library.db upgrade head
"""

from alembic import context
from sqlalchemy import create_engine

from clipsearch.store import Base

config = context.config
target_metadata = Base.metadata


def run_migrations() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        context.configure(connection=connection, target_metadata=target_metadata, render_as_batch=True)
        with context.begin_transaction():
            context.run_migrations()
        return
    db = context.get_x_argument(as_dictionary=True).get("db")
    if not db:
        raise SystemExit("pass the database: alembic -x db=/path/to/library.db ...")
    engine = create_engine(f"sqlite:///{db}")
    with engine.begin() as conn:
        context.configure(connection=conn, target_metadata=target_metadata, render_as_batch=True)
        with context.begin_transaction():
            context.run_migrations()


run_migrations()
