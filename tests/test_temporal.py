from datetime import datetime, timezone

from agentmem import temporal

NOW = datetime(2023, 8, 20, tzinfo=timezone.utc)


def test_when_questions_are_recognised():
    assert temporal.asks_when("When did Caroline go to the support group?")
    assert temporal.asks_when("How long has Melanie been painting?")
    assert temporal.asks_when("What year did they move?")
    assert not temporal.asks_when("What did Caroline research?")


def test_time_expressions_in_notes():
    assert temporal.mentions_time("I went to a support group yesterday")
    assert temporal.mentions_time("We met three years ago")
    assert temporal.mentions_time("The trip was in June")
    assert not temporal.mentions_time("I may paint a sunrise")  # 'may' the verb is no month
    assert not temporal.mentions_time("Painting helps me relax")


def test_named_periods():
    assert temporal.named_period("What happened in May 2023?", NOW) == (
        datetime(2023, 5, 1, tzinfo=timezone.utc), datetime(2023, 6, 1, tzinfo=timezone.utc))
    assert temporal.named_period("Where did she travel in December, 2022?", NOW)[1] == datetime(2023, 1, 1, tzinfo=timezone.utc)
    assert temporal.named_period("What did he do in 2021?", NOW) == (
        datetime(2021, 1, 1, tzinfo=timezone.utc), datetime(2022, 1, 1, tzinfo=timezone.utc))
    start, end = temporal.named_period("what did I eat last week", NOW)
    assert end == NOW and (end - start).days == 7
    assert temporal.named_period("What is my cat called?", NOW) is None


def test_time_matcher_prefers_notes_of_the_named_period_then_dated_notes_for_when_questions():
    may = datetime(2023, 5, 8, tzinfo=timezone.utc)
    assert temporal.time_matcher("What happened in May 2023?", NOW)("anything", may) == 1.0
    assert temporal.time_matcher("What happened in June 2023?", NOW)("anything", may) == 0.0
    assert temporal.time_matcher("When did she adopt the dog?", NOW)("We adopted him last week", may) == 1.0
    assert temporal.time_matcher("When did she adopt the dog?", NOW)("We adopted a dog", may) == 0.0
    assert temporal.time_matcher("Which dog did she adopt?", NOW)("We adopted him last week", may) == 0.0
