"""Which notes each commit to a PostgreSQL store touched (wrote, linked or re-embedded), so that a
replica brings its networkx view of the links up to date by reading those notes' links again, not
every link; and so that a remember whose index search ran before its write section knows which
notes that search may have missed (`touched_since`).

Each replica keeps the view: recall spreads activation along it, and notes read their links
from it. Reloading all of it after any other replica's commit cost O(notes) per write: 4.2 s
at 100k notes, and two replicas remembering 300 texts each into an empty store already spent
more CPU reloading it than encoding (`eval.fleet`).

Every counted commit logs the notes it touched under the `store_version` it moves to. Those
versions are handed out in commit order (the update holds the row's lock until the commit), so
a replica whose view is at version `seen` needs the rows logged above `seen`. Rows more than
`KEPT_VERSIONS` behind the newest are pruned; a view further behind, and a commit that logs
NULL (a bulk load), make the replica reload it all. A forget logs the notes that were linked to
the forgotten one, never its id (`PostgresNoteGraph.delete`); a replica drops the note from its
view once a catch-up leaves it without links and the store without it (`without_forgotten`).
Every commit also logs '', touched or not, so a version with no row at all was committed by an
earlier agentmem that keeps no log (a fleet in a rolling upgrade): that makes the replica reload too.
A rebuild of the vector index logs `INDEX_REBUILT`: the views stay, but a search made outside the
write section before it may have met the index half refilled, and `touched_since` cannot say what it missed.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import networkx as nx

SCHEMA = """
CREATE TABLE IF NOT EXISTS link_changes (version BIGINT NOT NULL, note_id TEXT);
CREATE INDEX IF NOT EXISTS link_changes_version ON link_changes(version);
CREATE INDEX IF NOT EXISTS link_changes_note ON link_changes(note_id);  -- a forget deletes the rows naming it
"""
KEPT_VERSIONS = 1000
INDEX_REBUILT = "*index"  # logged by a commit after the vector index was rebuilt (no note id holds a '*')

# the commit's last statement: move the version, log the touched notes and '' under it, prune
# the rows more than the given number of versions old
COUNT_COMMIT = (
    "WITH moved AS (UPDATE store_version SET n = n + 1 RETURNING n),"
    " logged AS (INSERT INTO link_changes(version, note_id)"
    "  SELECT moved.n, touched.id FROM moved, unnest(array_append(?::text[], '')) AS touched(id)),"
    " pruned AS (DELETE FROM link_changes WHERE version <= (SELECT n FROM moved) - ?)"
    " SELECT n FROM moved"
)

Run = Callable[[str, Sequence[Any]], Sequence[Sequence[Any]]]  # a statement in `?` placeholders, its rows


def load(run: Run) -> nx.Graph:
    """The whole view: every note, every link."""
    graph = nx.Graph()
    graph.add_nodes_from(row[0] for row in run("SELECT id FROM notes", ()))
    graph.add_weighted_edges_from(tuple(row) for row in run("SELECT a, b, weight FROM links", ()))
    return graph


# in one round trip, as of one snapshot: the newest version, how many versions of a range are
# logged, the notes they touched, those of them that still exist, and their links (a touched
# NULL: reload); rows are (kind, note or link end, link end, weight or count)
CHANGES = (
    "WITH logged AS MATERIALIZED (SELECT version, note_id FROM link_changes WHERE version > ? AND version <= ?),"
    " touched AS MATERIALIZED (SELECT DISTINCT note_id AS id FROM logged WHERE note_id IS DISTINCT FROM '')"
    " SELECT 'newest', NULL::text, NULL::text, n::float8 FROM store_version"
    " UNION ALL SELECT 'versions', NULL, NULL, count(DISTINCT version) FROM logged"
    " UNION ALL SELECT 'touched', id, NULL, NULL FROM touched"
    " UNION ALL SELECT 'note', n.id, NULL, NULL::float8 FROM notes n JOIN touched ON n.id = touched.id"
    " UNION ALL SELECT 'link', l.a, l.b, l.weight FROM links l JOIN touched ON l.a = touched.id"
    " UNION ALL SELECT 'link', l.a, l.b, l.weight FROM links l JOIN touched ON l.b = touched.id"
)


def catch_up(graph: nx.Graph, seen: int, version: int, run: Run) -> nx.Graph:
    """The view at version `seen` brought to `version`, in place when the log allows, else reloaded.

    The touched notes are read as they are now, which may already hold commits after `version`;
    the next catch-up reads them again, so the view converges on the store."""
    if seen < 0 or not 0 < version - seen <= KEPT_VERSIONS:  # too far behind, or a store reset under us
        return load(run)
    rows = run(CHANGES, (seen, version))
    newest, versions = (next(row[3] for row in rows if row[0] == kind) for kind in ("newest", "versions"))
    touched = [row[1] for row in rows if row[0] == "touched"]
    if None in touched or versions < version - seen:  # a bulk load, or a commit that kept no log
        return load(run)
    if newest - seen > KEPT_VERSIONS:  # commits since `version` may have pruned what was read
        return load(run)
    linked_before = {other for note_id in touched if note_id in graph for other in graph[note_id]}
    graph.remove_nodes_from(touched)  # with every link they had
    graph.add_nodes_from(row[1] for row in rows if row[0] == "note")
    graph.add_weighted_edges_from(tuple(row[1:]) for row in rows if row[0] == "link")
    return without_forgotten(graph, [n for n in linked_before if n in graph and not graph[n]], run)


def touched_since(seen: int, version: int, run: Run) -> set[str] | None:
    """The notes the commits after version `seen` up to `version` touched; None when the log no
    longer tells (pruned, a bulk load, a commit that kept no log) or the index was rebuilt meanwhile
    (a search made since `seen` may have met it half refilled). Call under the write lock, so
    that no commit moves the version or prunes the log meanwhile."""
    if version == seen:
        return set()
    if not 0 < version - seen <= KEPT_VERSIONS:
        return None
    (versions, touched), = run(
        "SELECT count(DISTINCT version), array_agg(DISTINCT note_id) FROM link_changes WHERE version > ? AND version <= ?",
        (seen, version),
    )
    if versions < version - seen or None in touched or INDEX_REBUILT in touched:
        return None
    return set(touched) - {""}


def without_forgotten(graph: nx.Graph, alone: list[str], run: Run) -> nx.Graph:
    """The view without those of these notes, left without links by a catch-up, that the store
    no longer holds: a forget logs the notes linked to the forgotten one, never its id, so this is
    how the view learns it is gone. A forgotten note that had no links in the view stays in it,
    unreachable, until a reload."""
    if alone:
        kept = {row[0] for row in run("SELECT id FROM notes WHERE id = ANY(?)", (alone,))}
        graph.remove_nodes_from(set(alone) - kept)
    return graph
