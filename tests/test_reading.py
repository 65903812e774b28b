"""The read path's reinforcement: no recall is recorded at a time before the note it counts was made."""
from __future__ import annotations

from datetime import timedelta

import pytest

from agentmem import InvalidInputError
from tests.conftest import T0


def test_a_recall_at_a_time_before_a_hit_was_made_returns_it_but_does_not_count_it(memory):
    """A recall finds every note the store holds now, those made after its `at` too (as it always has); only those
    that existed at `at` can have been recalled then, so only they are counted. It counted every hit, so a note made
    on the 3rd had a recall of the 2nd, before it existed."""
    chemistry = memory.remember("Ines teaches chemistry in Porto", user_id="ines", at=T0)
    tomatoes = memory.remember("Ines grows tomatoes on her balcony in Porto", user_id="ines", at=T0 + timedelta(days=2))
    hits = memory.recall("What does Ines do in Porto?", user_id="ines", at=T0 + timedelta(days=1))
    returned = {hit.note.id: hit.note for hit in hits}
    assert set(returned) == {chemistry.id, tomatoes.id}
    assert returned[chemistry.id].recall_count == 1 == memory.get(chemistry.id).recall_count
    assert returned[tomatoes.id].recall_count == 0 == memory.get(tomatoes.id).recall_count
    assert memory.get(tomatoes.id).last_recalled == tomatoes.created_at
    later = memory.recall("What does Ines do in Porto?", user_id="ines", at=T0 + timedelta(days=3))
    assert {hit.note.id: hit.note.recall_count for hit in later} == {chemistry.id: 2, tomatoes.id: 1}


def test_reinforce_at_a_time_before_a_note_was_made_is_refused_and_counts_nothing(memory):
    older = memory.remember("Ines teaches chemistry in Porto", user_id="ines", at=T0 - timedelta(days=1))
    note = memory.remember("Ines grows tomatoes on her balcony in Porto", user_id="ines", at=T0)
    with pytest.raises(InvalidInputError, match=note.id):
        memory.reinforce([older.id, note.id], at=T0 - timedelta(hours=1))
    assert memory.get(older.id).recall_count == 0 == memory.get(note.id).recall_count
