"""Connecting to a PostgreSQL note store: its URL read as libpq reads it, shown without its secrets,
connections bounded in time and checked before they are lent, and psycopg's failures as agentmem's
typed errors.

Kept apart from the store (`postgres`) because more than the store connects: the CLI asks whether
a database holds a store, and a server keeps its consolidation jobs in the store's database
(`server.job_log`); each needs the same URL checks, bounds and errors without opening a store.
"""
from __future__ import annotations

import selectors
from typing import Any
from urllib.parse import unquote

import psycopg
import psycopg_pool
from psycopg.conninfo import conninfo_to_dict

from ..errors import AgentMemError, InvalidInputError, StoreClosedError, StoreCorruptedError, StoreUnavailableError

SECRET_PARAMETERS = ("password", "sslpassword")  # what a message never shows of a URL
MALFORMED = (
    "malformed PostgreSQL URL: percent-encode special characters in the password (@ as %40, / as %2F, : as %3A,"
    " ? as %3F, # as %23, % as %25) and give the port as a number; the URL is not shown, it may hold a password"
)
# Every connection's bounds, unless the URL sets its own: connecting waits at most 10 s, and a
# connection whose peer stops acknowledging (a host down, a network path that drops packets)
# fails its call after 30 s of unacknowledged data (tcp_user_timeout, in ms) or after 25 s of
# silence on an idle or waiting connection (keepalives: 10 s idle, then 3 probes 5 s apart).
# A server process that is stopped while its host's kernel still acknowledges is not covered.
CONNECTION_BOUNDS = {
    "connect_timeout": "10", "keepalives": "1", "keepalives_idle": "10", "keepalives_interval": "5",
    "keepalives_count": "3", "tcp_user_timeout": "30000",
}


def url_parameters(url: str) -> dict[str, Any]:
    """The URL's connection parameters as libpq reads them. A URL that libpq would misread is refused
    (InvalidInputError, naming none of it): an unencoded `@` or `/` in the password makes part of it
    the host, port or database name, which every message would then show."""
    scheme, _, rest = url.partition("://")
    before_query = rest.partition("?")[0]
    authority, _, path = before_query.partition("/")
    if authority.count("@") > 1 or "@" in path:
        raise InvalidInputError(MALFORMED)
    try:
        parameters = conninfo_to_dict(url)
    except psycopg.Error:
        raise InvalidInputError(MALFORMED) from None  # libpq's message may quote the URL
    for port in str(parameters.get("port") or "").split(","):
        if port and not (port.isascii() and port.isdigit() and 0 < int(port) < 65536):
            raise InvalidInputError(MALFORMED)
    return parameters


def redacted(url: str) -> str:
    """The URL without its secrets, for messages: a password in the user part (up to the last `@`)
    or given as a query parameter (`?password=`, `sslpassword=`) shows as ***; a URL that
    `url_parameters` refuses shows as its scheme only."""
    try:
        url_parameters(url)
    except InvalidInputError:
        return f"{url.partition('://')[0]}://(a malformed URL, not shown)"
    head, question, query = url.partition("?")
    scheme, _, rest = head.partition("://")
    authority, slash, path = rest.partition("/")
    if "@" in authority:
        user_part, _, host = authority.rpartition("@")
        user, colon, _ = user_part.partition(":")
        authority = f"{user}{':***' if colon else ''}@{host}"
    pairs = []
    for pair in query.split("&") if question else ():
        key, equals, value = pair.partition("=")
        pairs.append(f"{key}=***" if unquote(key).strip().lower() in SECRET_PARAMETERS else pair)
    return f"{scheme}://{authority}{slash}{path}{question}{'&'.join(pairs)}"


def connection_options(url: str) -> dict[str, str]:
    """`CONNECTION_BOUNDS` but those the URL sets itself."""
    given = url_parameters(url)
    return {key: value for key, value in CONNECTION_BOUNDS.items() if key not in given}


def direct_connection(url: str) -> psycopg.Connection:
    """One connection outside any pool; a server that refuses it is a typed error naming what to check."""
    options = connection_options(url)
    try:
        return psycopg.connect(url, autocommit=True, **options)
    except psycopg.Error as exc:
        raise StoreUnavailableError(
            f"cannot connect to the note store at {redacted(url)} ({str(exc).strip()}): check the server is running"
            " and the URL (user, host, port, database) is right"
        ) from exc


def holds_store(url: str) -> bool:
    """Whether the database holds an agentmem store, found without creating one (opening a store does)."""
    with direct_connection(url) as conn:
        try:
            if conn.execute("SELECT to_regclass('meta')").fetchone()[0] is None:
                return False
            return conn.execute("SELECT 1 FROM meta WHERE key = 'store_id'").fetchone() is not None
        except psycopg.Error as exc:  # e.g. a role that may connect but not read the store's tables
            raise StoreUnavailableError(f"cannot read the note store at {redacted(url)}: {str(exc).strip()}") from exc


def typed_error(exc: Exception, store: str) -> AgentMemError:
    """A failure of psycopg or of its pool on the store named `store`, as agentmem's typed error."""
    if isinstance(exc, psycopg.IntegrityError):
        return InvalidInputError(f"the note store refused the write: {exc}")
    if isinstance(exc, (psycopg.errors.NumericValueOutOfRange, psycopg.errors.ProgramLimitExceeded)):  # too big
        return InvalidInputError(f"the note store cannot hold this value: {exc}")
    if isinstance(exc, psycopg_pool.PoolClosed):  # a read in a helper thread that outlived `close`
        return StoreClosedError(f"the note store at {store} is closed")
    if isinstance(exc, (psycopg.OperationalError, psycopg_pool.PoolTimeout)):
        return StoreUnavailableError(
            f"the note store at {store} cannot be reached ({exc}): check the server is running and reachable")
    if isinstance(exc, psycopg.errors.InsufficientPrivilege):
        return StoreUnavailableError(
            f"the note store at {store} refused the role a right ({exc.diag.message_primary}): a role that uses"
            " a store needs SELECT, INSERT, UPDATE and DELETE on the store's tables (GRANT SELECT, INSERT, UPDATE,"
            " DELETE ON ALL TABLES IN SCHEMA ... TO the role)")
    if isinstance(exc, psycopg.DatabaseError):
        return StoreCorruptedError(f"the note store at {store} failed a statement: {exc}")
    return StoreUnavailableError(f"the note store at {store}: {exc}")  # an interface error: a closed connection


def alive(conn: psycopg.Connection) -> None:
    """The pool's check of a connection it lends (raises if it is dead, and the pool takes another):
    after a server restart or a terminated session, its idle connections are dead, and each would
    fail the call that borrowed it. An idle connection has nothing to read unless the server wrote
    to it (its goodbye) or closed it, so only then is it tried with a round trip (an empty statement):
    trying every one added a round trip to every borrow (40-50 us on loopback, more across a network)."""
    with selectors.DefaultSelector() as selector:  # not select.select, which refuses descriptors past 1023
        selector.register(conn.fileno(), selectors.EVENT_READ)
        if selector.select(timeout=0):
            psycopg_pool.ConnectionPool.check_connection(conn)


def rollback(conn: psycopg.Connection) -> None:
    """End the connection's open transaction, if it still has one to end."""
    if not conn.closed and conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
        conn.execute("ROLLBACK")
