"""The PostgreSQL note store's faults against a real PostgreSQL 15: secrets in URLs, malformed URLs,
roles with fewer rights, databases holding other tables, and a server that stops answering."""
from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import threading
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import psycopg
import pytest

from agentmem import Memory, Note
from agentmem.errors import InvalidInputError, StoreUnavailableError
from agentmem.stores import store as store_protocol
from agentmem.stores.location import local_folder
from agentmem.stores.postgres import PostgresNoteGraph
from agentmem.stores.postgres_connection import direct_connection, redacted

T = datetime(2024, 1, 1, tzinfo=timezone.utc)
SECRET = "Wr0ngSecretXyz"


def note(note_id: str) -> Note:
    return Note(id=note_id, text=f"note {note_id}", created_at=T, updated_at=T, last_recalled=T)


def with_user(url: str, user: str, password: str | None = None) -> str:
    """The URL with another user (and password) in place of `postgres`."""
    return url.replace("postgres@", f"{user}{':' + password if password else ''}@", 1)


def make_role(postgres_server, name: str) -> None:
    with psycopg.connect(postgres_server.url("postgres"), autocommit=True) as conn:
        if conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (name,)).fetchone() is None:
            conn.execute(f"CREATE ROLE {name} LOGIN")


# ---- F1, F2: a URL's secrets are never shown; a URL libpq would misread is refused -----------

def test_a_password_in_the_url_s_query_is_shown_in_no_message(postgres_server, postgres_url):
    with pytest.raises(StoreUnavailableError) as refused:
        PostgresNoteGraph(postgres_server.url("no_such_database") + f"?password={SECRET}")
    assert SECRET not in str(refused.value) and "password=***" in str(refused.value)
    store = PostgresNoteGraph(f"{postgres_url}?sslmode=disable&password={SECRET}")  # the server trusts loopback
    try:
        assert SECRET not in store.path and store.path.endswith("?sslmode=disable&password=***")
    finally:
        store.close()
    assert redacted(f"postgresql://u:{SECRET}@h:5432/db?pass%77ord={SECRET}&sslpassword={SECRET}") == (
        "postgresql://u:***@h:5432/db?pass%77ord=***&sslpassword=***"
    )


@pytest.mark.parametrize("authority", [
    f"postgres:Wr0@{SECRET}@127.0.0.1:{{port}}",  # an unencoded @ in the password
    f"postgres:Wr0/{SECRET}@127.0.0.1:{{port}}",  # an unencoded / in the password
    "postgres@127.0.0.1:54x32",  # a port typo
])
def test_a_url_libpq_would_misread_is_refused_naming_none_of_it(postgres_server, embedder, tmp_path, monkeypatch,
                                                                   authority):
    monkeypatch.setenv("AGENTMEM_HOME", str(tmp_path))
    url = f"postgresql://{authority.format(port=postgres_server.port)}/store"
    for attempt in (lambda: local_folder(url), lambda: PostgresNoteGraph(url), lambda: Memory(url, embedder=embedder)):
        with pytest.raises(InvalidInputError, match="malformed PostgreSQL URL: percent-encode") as refused:
            attempt()
        shown = "".join(traceback.format_exception(refused.value))  # chained exceptions included
        assert "Wr0" not in shown and "54x32" not in shown
    assert redacted(url) == "postgresql://(a malformed URL, not shown)"
    assert list(tmp_path.iterdir()) == []  # no local folder made


def test_a_percent_encoded_password_opens_and_is_masked(postgres_url):
    url = postgres_url.replace("postgres@", f"postgres:Wr0%40{SECRET}%2F@", 1)
    store = PostgresNoteGraph(url)
    try:
        assert store.path == postgres_url.replace("postgres@", "postgres:***@", 1)
    finally:
        store.close()
    assert local_folder(url) == local_folder(postgres_url)


# ---- F4: a role that only reads and writes the store's tables opens an existing store -------

def test_a_role_with_only_select_insert_update_delete_opens_and_uses_an_existing_store(
        postgres_server, postgres_url, embedder, tmp_path, monkeypatch):
    monkeypatch.setenv("AGENTMEM_HOME", str(tmp_path))
    with Memory(postgres_url, embedder=embedder) as owner:
        owner.remember("the owner made this store in Lisbon", user_id="u")
    make_role(postgres_server, "app_dml")
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute("GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO app_dml")
        assert not conn.execute("SELECT has_schema_privilege('app_dml', 'public', 'CREATE')").fetchone()[0]
    with Memory(with_user(postgres_url, "app_dml"), embedder=embedder) as app:
        assert [hit.note.text for hit in app.recall("Lisbon", user_id="u")] == ["the owner made this store in Lisbon"]
        made = app.remember("the application role can write too", user_id="u")
        assert app.get(made.id).text == "the application role can write too"
        app.forget(made.id)


def test_a_role_without_create_on_the_schema_gets_an_unavailable_store_naming_the_right(postgres_server, postgres_url):
    make_role(postgres_server, "app_nocreate")
    url = with_user(postgres_url, "app_nocreate")
    with pytest.raises(StoreUnavailableError, match="may not make a new store .* needs CREATE on the schema"):
        PostgresNoteGraph(url)
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        assert conn.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'").fetchone()[0] == 0
    PostgresNoteGraph(postgres_url).close()  # the owner makes it; a store of an earlier release (no schema mark):
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute("COMMENT ON TABLE notes IS NULL")
        conn.execute("GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO app_nocreate")
    with pytest.raises(StoreUnavailableError, match="up to date .* open it once as the role that owns its tables"):
        PostgresNoteGraph(url)
    PostgresNoteGraph(postgres_url).close()  # the owner brings it up to date, and then the role opens it
    PostgresNoteGraph(url).close()


def test_a_missing_right_on_a_table_is_an_unavailable_store_not_a_damaged_one(postgres_server, postgres_url):
    PostgresNoteGraph(postgres_url).close()
    make_role(postgres_server, "app_reader")
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute("GRANT SELECT ON ALL TABLES IN SCHEMA public TO app_reader")
    reader = PostgresNoteGraph(with_user(postgres_url, "app_reader"))
    try:
        assert reader.count() == 0
        with pytest.raises(StoreUnavailableError, match="SELECT, INSERT, UPDATE and DELETE on the store's tables"):
            with reader.transaction():
                reader.insert(note("a"), np.ones(4))
    finally:
        reader.close()


# ---- F5: a database holding other tables of the store's names ---------------------------------

def test_a_database_holding_other_tables_of_the_store_s_names_is_refused_and_left_as_it_was(postgres_url):
    def tables(conn: psycopg.Connection) -> list[tuple[str, str]]:
        return conn.execute("SELECT schemaname::text, tablename::text FROM pg_tables"
                            " WHERE schemaname NOT IN ('pg_catalog', 'information_schema') ORDER BY 1, 2").fetchall()

    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE customers (id int PRIMARY KEY, name text)")
        conn.execute("CREATE TABLE notes (id serial PRIMARY KEY, body text, author text)")
        conn.execute("INSERT INTO notes(body, author) VALUES ('the app''s own note', 'bob')")
        conn.execute("CREATE TABLE history (id serial PRIMARY KEY, event text)")
        before = tables(conn)
    with pytest.raises(InvalidInputError, match=r"other tables named history, notes.*csearch_path%3D"):
        PostgresNoteGraph(postgres_url)
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        assert tables(conn) == before
        assert conn.execute("SELECT body, author FROM notes").fetchall() == [("the app's own note", "bob")]
        conn.execute("CREATE SCHEMA agentmem")
    store = PostgresNoteGraph(postgres_url + "?options=-csearch_path%3Dagentmem")  # the way out the message names
    try:
        with store.transaction():
            store.insert(note("a"), np.ones(4))
        assert store.all_ids() == {"a"}
    finally:
        store.close()
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        assert [t for t in tables(conn) if t[0] == "public"] == before
        assert conn.execute("SELECT count(*) FROM agentmem.notes").fetchone()[0] == 1


def test_a_foreign_meta_table_alone_is_refused(postgres_url):
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE meta (key text PRIMARY KEY, value text NOT NULL)")
        conn.execute("INSERT INTO meta VALUES ('app', 'settings')")
    with pytest.raises(InvalidInputError, match="other tables named meta"):
        PostgresNoteGraph(postgres_url)
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        assert conn.execute("SELECT * FROM meta").fetchall() == [("app", "settings")]


# ---- F3: a server that stops answering fails the call in bounded time --------------------------

def test_connections_carry_keepalives_and_a_tcp_user_timeout_unless_the_url_sets_them(postgres_url):
    expected = {"keepalives": "1", "keepalives_idle": "10", "keepalives_interval": "5", "keepalives_count": "3",
                "tcp_user_timeout": "30000", "connect_timeout": "10"}
    store = PostgresNoteGraph(postgres_url)
    try:
        with store._session() as conn:  # a pooled connection
            assert expected.items() <= conn.info.get_parameters().items()
    finally:
        store.close()
    with direct_connection(postgres_url + "?tcp_user_timeout=5000") as conn:
        parameters = conn.info.get_parameters()
        assert parameters["tcp_user_timeout"] == "5000" and parameters["keepalives_idle"] == "10"


class NamespacedPostgres:
    """A PostgreSQL 15 server in a network namespace of its own, reached over a veth pair, so the test
    can make its address a black hole (packets dropped, nothing answered, no reset) and back."""

    def __init__(self) -> None:
        tag = os.getpid() % 100000
        self.ns, self.host_if, self.peer_if = f"amns{tag}", f"amh{tag}", f"amp{tag}"
        net = 10 + tag % 200
        self.host_ip, self.peer_ip = f"10.213.{net}.1", f"10.213.{net}.2"
        self.folder = Path(tempfile.mkdtemp(prefix="agentmem-pgns-"))
        self.data = self.folder / "data"
        self.bin = Path(os.environ.get("AGENTMEM_PG_BIN", "/usr/lib/postgresql/15/bin"))
        self.process: subprocess.Popen | None = None
        try:
            self._ip(["netns", "add", self.ns])
            self._ip(["link", "add", self.host_if, "type", "veth", "peer", "name", self.peer_if])
            self._ip(["link", "set", self.peer_if, "netns", self.ns])
            self._ip(["addr", "add", f"{self.host_ip}/30", "dev", self.host_if])
            self._ip(["link", "set", self.host_if, "up"])
            self._ip(["addr", "add", f"{self.peer_ip}/30", "dev", self.peer_if], ns=True)
            self._ip(["link", "set", self.peer_if, "up"], ns=True)
            shutil.chown(self.folder, "postgres")
            subprocess.run(["runuser", "-u", "postgres", "--", str(self.bin / "initdb"), "-D", str(self.data), "-U",
                            "postgres", "--auth=trust", "-E", "UTF8", "--locale=C.UTF-8"],
                           check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            with open(self.data / "pg_hba.conf", "a") as hba:
                hba.write(f"host all all {self.host_ip}/32 trust\n")
            self.process = subprocess.Popen(
                ["ip", "netns", "exec", self.ns, "runuser", "-u", "postgres", "--", str(self.bin / "postgres"),
                 "-D", str(self.data), "-p", "5432", "-k", str(self.folder), "-c", f"listen_addresses={self.peer_ip}",
                 "-c", "fsync=off"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )
            deadline = time.monotonic() + 60
            while True:
                try:
                    psycopg.connect(self.url("postgres"), connect_timeout=2).close()
                    break
                except psycopg.OperationalError:
                    if time.monotonic() > deadline or self.process.poll() is not None:
                        raise
                    time.sleep(0.2)
            with psycopg.connect(self.url("postgres"), autocommit=True) as conn:
                conn.execute("CREATE DATABASE store")
        except BaseException:
            self.stop()
            raise

    def _ip(self, args: list[str], ns: bool = False) -> None:
        subprocess.run(["ip", "netns", "exec", self.ns, "ip", *args] if ns else ["ip", *args], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def url(self, database: str) -> str:
        return f"postgresql://postgres@{self.peer_ip}:5432/{database}"

    def black_hole(self, on: bool) -> None:
        """Remove the server's address (its packets are dropped, unanswered), or give it back."""
        self._ip(["addr", "del" if on else "add", f"{self.peer_ip}/30", "dev", self.peer_if], ns=True)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            subprocess.run(["runuser", "-u", "postgres", "--", str(self.bin / "pg_ctl"), "stop", "-D", str(self.data),
                            "-m", "immediate"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        subprocess.run(["ip", "link", "del", self.host_if], stderr=subprocess.DEVNULL)
        subprocess.run(["ip", "netns", "del", self.ns], stderr=subprocess.DEVNULL)
        shutil.rmtree(self.folder, ignore_errors=True)


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("ip") is None,
                    reason="needs root and iproute2 (network namespaces)")
def test_a_call_to_a_server_behind_a_black_hole_fails_in_bounded_time_and_the_next_succeeds():
    server = NamespacedPostgres()
    store = None
    try:
        store = PostgresNoteGraph(server.url("store"))  # the default bounds: no timeout in the URL
        with store.transaction():
            store.insert(note("a"), np.ones(4))
        outcome: list[BaseException | int] = []

        def call() -> None:
            try:
                outcome.append(store.count())
            except BaseException as exc:  # reported below
                outcome.append(exc)

        server.black_hole(True)
        try:
            started = time.monotonic()
            caller = threading.Thread(target=call, daemon=True)
            caller.start()
            caller.join(timeout=90)
            elapsed = time.monotonic() - started
        finally:
            server.black_hole(False)
        assert not caller.is_alive(), "the call still blocks after 90 s"
        assert len(outcome) == 1 and isinstance(outcome[0], StoreUnavailableError), outcome
        assert elapsed < 60, elapsed
        deadline = time.monotonic() + 60
        while True:  # the pool replaces the dead connection
            try:
                assert store.count() == 1
                break
            except StoreUnavailableError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(1)
    finally:
        if store is not None:
            store.close()
        server.stop()


# ---- a connection lost right after a write's commit ------------------------------------------

@pytest.mark.parametrize("verb", ["remember", "remember_many", "update", "forget"])
def test_a_write_whose_connection_is_lost_after_its_commit_returns(postgres_url, embedder, tmp_path, monkeypatch, verb):
    """The server ends the session right after the COMMIT (a restart, a cut network): the write is in the store,
    so the call must not raise; unlocking the advisory lock on the dead session raised StoreUnavailableError."""
    monkeypatch.setenv("AGENTMEM_HOME", str(tmp_path / "home"))
    committed = PostgresNoteGraph.transaction
    armed = []

    @contextlib.contextmanager
    def session_ends_after_the_commit(self, bookkeeping=False, meanwhile=None):
        with committed(self, bookkeeping, meanwhile):
            yield
        if armed and not bookkeeping:
            armed.clear()
            with psycopg.connect(postgres_url, autocommit=True) as admin:
                admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                              " WHERE datname = current_database() AND pid <> pg_backend_pid()")

    with Memory(postgres_url, embedder=embedder) as mem:
        kept = mem.remember("The harbour lighthouse is painted red", user_id="u", at=T)
        monkeypatch.setattr(PostgresNoteGraph, "transaction", session_ends_after_the_commit)
        armed.append(True)
        if verb == "remember":
            mem.remember("The buoy by the pier is green", user_id="u", at=T)
        elif verb == "remember_many":
            mem.remember_many(["The buoy by the pier is green", "The ferry leaves at noon"], user_id="u", at=T)
        elif verb == "update":
            mem.update(kept.id, text="The harbour lighthouse is painted black", at=T)
        else:
            mem.forget(kept.id)
        assert not armed  # the session did end after the commit
        texts = sorted(n.text for n in mem.notes(user_id="u"))
    assert texts == {
        "remember": ["The buoy by the pier is green", "The harbour lighthouse is painted red"],
        "remember_many": ["The buoy by the pier is green", "The ferry leaves at noon",
                          "The harbour lighthouse is painted red"],
        "update": ["The harbour lighthouse is painted black"],
        "forget": [],
    }[verb]


# ---- a process stuck inside a write section --------------------------------------------------

def test_a_write_lock_held_too_long_by_another_process_is_a_typed_error_and_the_next_wait_is_unbounded_again(
        postgres_url, monkeypatch):
    monkeypatch.setattr(store_protocol, "WRITE_LOCK_WAIT_S", 1)
    stuck, waiting = PostgresNoteGraph(postgres_url), PostgresNoteGraph(postgres_url)
    try:
        held, release = threading.Event(), threading.Event()

        def hold_the_lock():
            with stuck.lock():
                held.set()
                release.wait(30)

        holder = threading.Thread(target=hold_the_lock)
        holder.start()
        held.wait(30)
        started = time.monotonic()
        with pytest.raises(StoreUnavailableError, match="held the write lock"):
            with waiting.lock():
                pass
        assert time.monotonic() - started < 10
        release.set()
        holder.join(30)
        with waiting.lock():  # the lock is free again, and the session's lock_timeout is as it was
            assert waiting.connection.execute("SHOW lock_timeout").fetchone()[0] == "0"
    finally:
        stuck.close()
        waiting.close()


def test_a_table_an_upgrade_adds_is_granted_as_the_notes_are(postgres_server, postgres_url):
    """A role granted the store's tables before an upgrade that adds one could not use it: `serve` would not start."""
    PostgresNoteGraph(postgres_url).close()
    make_role(postgres_server, "app_upgrade")
    with psycopg.connect(postgres_url, autocommit=True) as conn:   # a store of the release before the jobs' table
        conn.execute("DROP TABLE consolidation_jobs")
        conn.execute("COMMENT ON TABLE notes IS NULL")
        conn.execute("GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO app_upgrade")
    PostgresNoteGraph(postgres_url).close()   # the owner brings it up to date
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        rights = [conn.execute("SELECT has_table_privilege('app_upgrade', 'consolidation_jobs', %s)",
                               (right,)).fetchone()[0] for right in ("SELECT", "INSERT", "UPDATE", "DELETE")]
        assert rights == [True] * 4
        truncate = conn.execute("SELECT has_table_privilege('app_upgrade', 'consolidation_jobs', 'TRUNCATE')")
        assert not truncate.fetchone()[0]   # only what it had on notes
    PostgresNoteGraph(with_user(postgres_url, "app_upgrade")).close()
