"""The ZsRE editing records (MEND's split, as used by the GRACE and WISE papers)."""
from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

from networkx.utils import UnionFind
from pydantic import BaseModel, ConfigDict, ValidationError

from ..errors import InvalidInputError

DEFAULT_EDIT_FILE = Path("../shared/data/zsre/zsre_mend_edit.json")
# Disjoint from the edit set: its `loc` questions are the unrelated prompts editors calibrate against.
DEFAULT_TRAIN_FILE = Path("../shared/data/zsre/zsre_mend_train-1k.json")


class ZsreRecord(BaseModel):
    """One edit: `src` -> `alt`; `rephrase` tests generalization, `loc` -> `loc_ans` tests locality.

    `subject` (optional) names what the question is about: ZsRE asks about some subjects more
    than once with different targets, which makes their rephrasings ambiguous. `answers` (optional)
    are the question's true answers, before the edit.
    """

    model_config = ConfigDict(extra="ignore", frozen=True)

    subject: str = ""
    answers: tuple[str, ...] = ()
    src: str
    alt: str
    rephrase: str
    loc: str
    loc_ans: str


def load_zsre(path: str | Path = DEFAULT_EDIT_FILE, limit: int | None = None) -> list[ZsreRecord]:
    """The first `limit` records of a ZsRE file (all of them by default)."""
    path = Path(path)
    try:
        rows = json.loads(path.read_text())
        records = [ZsreRecord(**row) for row in rows[:limit]]
    except (OSError, ValueError, TypeError, ValidationError) as exc:
        raise InvalidInputError(f"cannot read ZsRE records from {path}: {exc}") from exc
    return records


def ambiguous(records: Sequence[ZsreRecord]) -> list[bool]:
    """Per record: whether another record has the same subject and another target.

    Edited together, such records make each other's rephrasings ambiguous: "Who designed X?"
    may be asked of either edit, and at most one target can come out.
    """
    targets: dict[str, set[str]] = defaultdict(set)
    for record in records:
        targets[record.subject].add(record.alt.strip())
    return [bool(r.subject) and len(targets[r.subject]) > 1 for r in records]


def consistent(records: Sequence[ZsreRecord]) -> list[ZsreRecord]:
    """The records in order, without those that restate an earlier record's fact with another made-up target.

    ZsRE gives one fact (a subject and its true answer) several edit records, each with its own random
    target: "Who is the architect of Toodyay Fire Station?" -> Kohn Pedersen Fox, and "What architect
    designed Toodyay Fire Station?" -> Wyndham Lewis. Edited together they contradict each other, as no
    user's memory would; a record counts as restating when its subject and first true answer match an
    earlier kept record's. Records without a subject or an answer are all kept.
    """
    seen: set[tuple[str, str]] = set()
    kept = []
    for record in records:
        fact = (record.subject.casefold(), record.answers[0].casefold() if record.answers else "")
        if all(fact):
            if fact in seen:
                continue
            seen.add(fact)
        kept.append(record)
    return kept


def unrelated_prompts(path: str | Path = DEFAULT_TRAIN_FILE, limit: int | None = None) -> list[str]:
    """The `loc` questions of a ZsRE file: prompts unrelated to any edit, for editors to calibrate against."""
    return [record.loc for record in load_zsre(path, limit)]


def asked(record: ZsreRecord, question: str | None = None) -> str:
    """What a question about the record's subject asks, the subject taken out ("Who designed {}?")."""
    return (record.src if question is None else question).replace(record.subject, "{}")


class Relations:
    """Which ZsRE questions ask the same relation, as far as the file itself shows.

    ZsRE carries no relation ids, and one relation is worded many ways ("What company made X?",
    "Which corporation was X created by?"). Two wordings count as one relation when the file asks
    them of one fact: a record's question and its rephrasing, or two records with the same subject
    and the same first true answer (the fact `consistent` keys on); links chain. Wordings never linked
    so count as other relations, as before.

    Two relations that share an answer for one subject are joined too (cause of death and medical
    condition, both "Parkinson's disease"; distributor and production company of one film), and so is
    a rephrasing that asks something else. Of the consolidation benchmark's other-relation neighbours
    at N=500 on the edit file this drops 5 with `--consistent`, each the same relation in other words,
    and 7 without, 2 of which ask another relation ("made" and "released"). It reports what it drops.
    """

    def __init__(self, records: Sequence[ZsreRecord]) -> None:
        self._groups = UnionFind()
        by_fact: dict[tuple[str, str], str] = {}
        for record in records:
            if not record.subject or record.subject not in record.src:
                continue
            wording = asked(record)
            if record.subject in record.rephrase:
                self._groups.union(wording, asked(record, record.rephrase))
            if record.answers:
                fact = (record.subject.casefold(), record.answers[0].casefold())
                self._groups.union(by_fact.setdefault(fact, wording), wording)

    def same(self, first: ZsreRecord, second: ZsreRecord) -> bool:
        """Whether the two records' questions ask the same relation: the same wording, or wordings linked
        by a rephrasing or a shared fact."""
        return self._groups[asked(first)] == self._groups[asked(second)]   # an unseen wording is its own group
