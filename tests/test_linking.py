from datetime import datetime, timezone

from agentmem import linking


def test_keywords_skip_stopwords_and_rank_by_frequency():
    keywords = linking.extract_keywords("The garden is lovely; the garden roses bloom in May.")
    assert keywords[0] == "garden"
    assert "the" not in keywords and "is" not in keywords


def test_words_are_read_in_any_script():
    assert linking.content_words("Zoë's café in São Tomé, naïve x-ray") == ["zoë", "café", "são", "tomé", "naïve", "x-ray"]
    assert linking.extract_tags("Yesterday Zoë met Émile") == ["zoë", "émile"]


def test_tags_keep_user_tags_then_named_things_and_years():
    tags = linking.extract_tags("Yesterday Alice flew to Lisbon's airport in 2024.", ("Travel",))
    assert tags[0] == "travel"
    assert {"alice", "lisbon", "2024"} <= set(tags)
    assert "yesterday" not in tags  # opens the sentence: not evidence of a name


def test_describe_is_one_line_with_date_speaker_and_topic():
    context = linking.describe("x", ["chess", "sunday"], datetime(2024, 5, 1, tzinfo=timezone.utc), "bob")
    assert context == "2024-05-01 · bob · about chess, sunday"


def test_evolution_absorbs_new_keywords_up_to_the_cap_and_keeps_its_own():
    own = ["alice", "lisbon"]
    assert linking.evolve_keywords(own, ["lisbon", "tram", "rides", "river", "fado"], cap=12) == [
        "alice", "lisbon", "tram", "rides", "river"
    ]
    assert linking.evolve_keywords(own, ["tram", "rides"], cap=3) == ["alice", "lisbon", "tram"]
    assert linking.evolve_keywords(own, ["alice"], cap=12) == own


def test_a_restatement_says_nothing_new_and_a_changed_fact_does():
    assert linking.says_nothing_new("Alice moved to Lisbon in 2024", "Alice moved to Lisbon in 2024.")
    assert linking.says_nothing_new("Alice moved to Lisbon in 2024", "Alice really moved to Lisbon in 2024")
    assert linking.says_nothing_new("Eve's flight to Paris leaves on Monday morning", "Eve's flight leaves Monday")
    assert not linking.says_nothing_new("Eve's flight to Paris leaves on Monday morning",
                                        "Eve's flight to Paris leaves on Tuesday morning")
    assert not linking.says_nothing_new("Alice moved to Lisbon in 2024", "Alice relocated to Lisbon in 2024")
    assert not linking.says_nothing_new("entry 10 about the harbour in 2010", "entry 11 about the harbour in 2011")
    assert not linking.says_nothing_new("Bob likes green tea", "Bob does not like green tea")
    assert not linking.says_nothing_new("Bob likes green tea", "Carol grows green peppers")


def test_a_changed_relation_order_or_symbol_says_something_new():
    """Each pair merged into one note (the second lost), though its vectors are near-identical."""
    for stored, newcomer in [("I owe you 50 euros", "You owe me 50 euros"),
                             ("Pay the invoice before Friday", "Pay the invoice after Friday"),
                             ("The key is above the door", "The key is below the door"),
                             ("Bob called Alice", "Alice called Bob"),
                             ("Alice is taller than Bob", "Bob is taller than Alice"),
                             ("😀😀😀😀", "😢😢😢😢"), ("🍕🍕", "🍣🍣"), ("a" * 200, "😀" * 200)]:
        assert not linking.says_nothing_new(stored, newcomer), newcomer
    assert linking.says_nothing_new("😀 party at Sam's tonight", "party at Sam's tonight 😀")
    assert linking.says_nothing_new("Alice moved to Lisbon in 2024", "Yeah, Alice just moved to Lisbon in 2024")
    assert not linking.says_nothing_new("Alice can swim", "Alice must swim")


def test_a_newcomer_without_the_notes_qualifier_or_in_another_tense_says_something_new():
    """Each newcomer was merged into the stored note and lost: it may leave words out, but not the word that made
    the note claim less, and it may add be, have or do only in the note's own tense."""
    for stored, newcomer in [("I was almost fired today", "I was fired today"),
                             ("Bob thinks Alice moved to Lisbon", "Alice moved to Lisbon"),
                             ("Sam is my former boss", "Sam is my boss"),
                             ("Ana might quit her job", "Ana quit her job"),
                             ("Alice was in Lisbon", "Alice is in Lisbon"),
                             ("Bob didn't call", "Bob doesn't call"), ("Ana will quit her job", "Ana quit her job"),
                             ("Bob is going to quit", "Bob quit")]:
        assert not linking.says_nothing_new(stored, newcomer), newcomer
    for stored, newcomer in [("I was almost fired today", "I was almost fired today!"),
                             ("Sam is my former boss", "Sam really is my former boss"),
                             ("Alice was in Lisbon", "Alice was in Lisbon")]:
        assert linking.says_nothing_new(stored, newcomer), newcomer


def test_contractions_and_typographic_apostrophes_read_as_their_words():
    """A curly apostrophe hid "don’t" from the negation check; "I'm" and "I am" are one statement."""
    for stored, newcomer in [("I am vegetarian", "I'm vegetarian"), ("I'm vegetarian", "I am vegetarian"),
                             ("Alice doesn't like tea", "Alice does not like tea"),
                             ("Alice moved to Lisbon", "Alice has moved to Lisbon"),
                             ("I’m moving to Lisbon", "I'm moving to Lisbon"), ("I won't go", "I will not go")]:
        assert linking.says_nothing_new(stored, newcomer), newcomer
    for stored, newcomer in [("I don’t eat meat", "I eat meat"), ("Alice can’t swim", "Alice can swim")]:
        assert not linking.says_nothing_new(stored, newcomer), newcomer


def test_every_number_counts_however_many_digits_it_has():
    """Words keep only numbers of 2-4 digits: a corrected gate code or count was taken for a restatement."""
    assert not linking.says_nothing_new("My gate code is 48213.", "My gate code is 48219.")
    assert not linking.says_nothing_new("Zed owns 2 cats", "Zed owns 3 cats")
    assert not linking.says_nothing_new("Dana's flight lands at 9:40", "Dana's flight lands at 9:45")
    for stored, corrected in [("Maya's dose is 3.5 mg daily", "Maya's dose is 5.3 mg daily"),
                              ("The review is on 2025-03-05", "The review is on 2025-05-03"),
                              ("The freezer runs at -18 degrees", "The freezer runs at 18 degrees"),
                              ("Zed has 2 cats and 3 dogs", "Zed has 3 cats and 2 dogs")]:
        assert not linking.says_nothing_new(stored, corrected), corrected   # the same digits, another number
    assert linking.says_nothing_new("My gate code is 48213.", "my gate code is 48213")
