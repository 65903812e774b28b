"""Changes to stored notes (`agentmem.changing`): which fact an update leaves. The changes themselves run
through `Memory` (tests/test_memory.py, tests/test_forget.py, on both stores)."""
from datetime import datetime, timezone

import pytest

from agentmem import Fact, Note
from agentmem.changing import Revision
from agentmem.facts import extract_fact

T = datetime(2026, 1, 1, tzinfo=timezone.utc)
LISBON = Fact(prompt="Alice lives in", target="Lisbon")
PORTO = Fact(prompt="Alice lives in", target="Porto")
HOME_TOWN = Fact(prompt="Alice's home town is", target="Lisbon")


def note(fact: Fact | None) -> Note:
    return Note(id="n1", text="Alice lives in Lisbon", fact=fact, created_at=T, updated_at=T, last_recalled=T)


@pytest.mark.parametrize("revision, before, after", [
    (Revision(tags=["x"]), LISBON, (False, None)),  # no new text: the fact stays
    (Revision(text="Alice lives in Porto", extracted=PORTO), LISBON, (True, PORTO)),  # the extractor's: follows the text
    (Revision(text="Alice lives in Porto", extracted=PORTO), None, (True, PORTO)),
    (Revision(text="Alice lives in Porto", extracted=PORTO), HOME_TOWN, (False, None)),  # given by hand: kept
    (Revision(text="Alice lives in Porto", fact_given=True, fact=HOME_TOWN), LISBON, (True, HOME_TOWN)),
    (Revision(fact_given=True, fact=None), HOME_TOWN, (True, None)),  # removed on request
    (Revision(text="A lovely day", extracted=None), LISBON, (True, None)),  # the new text states none
])
def test_an_update_keeps_a_fact_given_by_hand_and_renews_the_extractor_s(revision, before, after):
    assert revision.fact_after(note(before), extract_fact) == after

