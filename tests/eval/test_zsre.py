"""ZsRE records: which of them a memory could hold together."""
from __future__ import annotations

from agentmem.eval.zsre import ZsreRecord, consistent


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
