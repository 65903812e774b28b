"""Where a memory lives: a folder gives the SQLite store, a postgresql:// URL the PostgreSQL one."""
from __future__ import annotations

from pathlib import Path

import pytest

from agentmem.errors import InvalidInputError, StoreUnavailableError
from agentmem.stores.graph import NoteGraph
from agentmem.stores.location import is_postgres_url, local_folder, open_note_store
from agentmem.stores.postgres import PostgresNoteGraph


def test_a_folder_opens_the_sqlite_store_inside_it(tmp_path):
    store = open_note_store(tmp_path / "new" / "memdata")
    assert isinstance(store, NoteGraph) and (tmp_path / "new" / "memdata" / "notes.sqlite3").is_file()
    store.close()
    assert local_folder(tmp_path / "memdata") == tmp_path / "memdata"


def test_a_file_where_the_store_folder_would_be_is_the_callers_mistake(tmp_path):
    """`--path /etc/passwd` said "cannot create the store folder ...: File exists", as if the disk had failed."""
    file = tmp_path / "notes.txt"
    file.write_text("mine")
    for location in (file, file / "memdata"):
        with pytest.raises(InvalidInputError, match="is, or is inside, a file: a store is a folder"):
            open_note_store(location)
    assert file.read_text() == "mine" and sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_a_url_opens_the_postgres_store_and_a_local_folder_of_its_own(postgres_server, tmp_path, monkeypatch):
    monkeypatch.setenv("AGENTMEM_HOME", str(tmp_path))
    first, second = postgres_server.create_database(), postgres_server.create_database()
    store = open_note_store(first)
    assert isinstance(store, PostgresNoteGraph) and is_postgres_url(first)
    store.close()
    assert local_folder(first).parent == tmp_path / "postgres" and local_folder(first) != local_folder(second)
    assert local_folder("postgresql://u:secret@db.example:5433/mem").name == "db.example-5433-mem"


@pytest.mark.parametrize("location", ["postgresql:/nohost/db", "postgres:db", Path("postgresql://u@h/db")])
def test_a_malformed_url_is_refused_before_any_folder_is_made(location, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for call in (open_note_store, local_folder):
        with pytest.raises(InvalidInputError):
            call(location)
    assert list(tmp_path.iterdir()) == []


def test_a_relative_store_path_once_the_working_folder_is_gone_is_a_typed_error(tmp_path, monkeypatch):
    gone = tmp_path / "gone"
    gone.mkdir()
    monkeypatch.chdir(gone)
    gone.rmdir()
    with pytest.raises(StoreUnavailableError, match="cannot find the store folder memdata"):
        open_note_store("memdata")

