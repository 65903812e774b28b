"""ZsRE records: which of them a memory could hold together."""
from __future__ import annotations

from agentmem.eval.zsre import Relations, ZsreRecord, consistent


def _record(subject: str, src: str, alt: str, answer: str) -> ZsreRecord:
    return ZsreRecord(subject=subject, answers=(answer,), src=src, alt=alt, rephrase="-", loc="-", loc_ans="-")


def test_a_record_that_restates_an_earlier_fact_with_another_target_is_dropped():
    first = _record("Toodyay Fire Station", "Who is the architect of Toodyay Fire Station?", "Kohn Pedersen Fox",
                    "Ken Duncan")
    restated = _record("Toodyay Fire Station", "What architect designed Toodyay Fire Station?", "Wyndham Lewis",
                       "ken duncan")
    other_fact = _record("Toodyay Fire Station", "When did Toodyay Fire Station open?", "1999", "1898")
    other_subject = _record("Lola Beeth", "What voice type is Lola Beeth?", "alto", "Ken Duncan")
    assert consistent([first, restated, other_fact, other_subject]) == [first, other_fact, other_subject]


def test_records_without_a_subject_or_an_answer_are_all_kept():
    bare = ZsreRecord(src="Alice lives in", alt="Lisbon", rephrase="-", loc="-", loc_ans="-")
    assert consistent([bare, bare]) == [bare, bare]


def test_wordings_asked_of_one_fact_are_one_relation_and_others_stay_apart():
    made = _record("Volvo B12M", "What company made Volvo B12M?", "Ford", "Volvo Buses")
    created = _record("Volvo B12M", "Which corporation was Volvo B12M created by?", "Fiat", "Volvo Buses")
    produced = ZsreRecord(subject="Scania K", src="Who produced Scania K?", alt="Audi", answers=("Scania",),
                          rephrase="What company made Scania K?", loc="-", loc_ans="-")
    mother = _record("Alexander Aris", "Who is the mother of Alexander Aris?", "Mary", "Aung San Suu Kyi")
    father = _record("Alexander Aris", "Who is the father of Alexander Aris?", "John", "Michael Aris")
    cause = _record("Gerald Ganglbauer", "What caused Gerald Ganglbauer's death?", "flu", "Parkinson's disease")
    condition = _record("Gerald Ganglbauer", "What condition does Gerald Ganglbauer have?", "gout", "Parkinson's disease")
    relations = Relations([made, created, produced, mother, father, cause, condition])
    assert relations.same(made, created)                  # one fact, two wordings
    assert relations.same(produced, created)              # a rephrasing links "produced" to "made", "made" to "created"
    assert not relations.same(mother, father)             # same subject, other answers: other relations
    assert relations.same(cause, condition)               # the known limit: two relations, one subject, one answer
    unseen = _record("Oslo", "How old is Oslo?", "9", "1000")
    assert relations.same(unseen, unseen) and not relations.same(unseen, mother)
