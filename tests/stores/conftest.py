import pytest

from agentmem.stores import NoteGraph
from agentmem.stores.postgres import PostgresNoteGraph


@pytest.fixture(params=["sqlite", "postgres"])
def sql_store(request, tmp_path):
    """An empty note store on each SQL store: SQLite in a file, and a database on a real PostgreSQL 15."""
    if request.param == "sqlite":
        graph = NoteGraph(tmp_path / "graph.sqlite")
    else:
        graph = PostgresNoteGraph(request.getfixturevalue("postgres_url"))
    yield graph
    graph.close()
