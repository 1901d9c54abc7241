"""Alembic environment for clipsearch.

clipsearch applies migrations itself when a library is opened (``clipsearch.database``),
passing its open connection in ``config.attributes["connection"]`` and the library folder
in ``config.attributes["folder"]``. The same scripts run on SQLite and PostgreSQL.
Developers can also run Alembic by hand against a library's database:

    alembic -c migrations/alembic.ini -x db=/path/to/library/library.db upgrade head
    alembic -c migrations/alembic.ini -x url=postgresql+psycopg://USER@HOST/DBNAME \\
        -x folder=/path/to/library upgrade head
"""

from alembic import context
from sqlalchemy import create_engine

from clipsearch.database import parse_url
from clipsearch.tables import Base

config = context.config
target_metadata = Base.metadata


def run_migrations() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        context.configure(connection=connection, target_metadata=target_metadata, render_as_batch=True)
        with context.begin_transaction():
            context.run_migrations()
        return
    x = context.get_x_argument(as_dictionary=True)
    if x.get("url"):
        url = parse_url(x["url"])
    elif x.get("db"):
        url = f"sqlite:///{x['db']}"
    else:
        raise SystemExit("pass the database: alembic -x db=/path/to/library.db ... "
                         "or -x url=postgresql+psycopg://... -x folder=/path/to/library ...")
    if x.get("folder"):
        config.attributes["folder"] = x["folder"]  # where 0003 reads and writes vector files
    engine = create_engine(url)
    with engine.begin() as conn:
        context.configure(connection=conn, target_metadata=target_metadata, render_as_batch=True)
        with context.begin_transaction():
            context.run_migrations()


run_migrations()
