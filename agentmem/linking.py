"""Local note enrichment and Zettelkasten evolution, with no LLM in the loop.

Keywords are the note's salient content words, tags its named things (capitalised
words and numbers such as years) plus the user's own tags, and the context a one-line
description. When a new note links to a neighbour, the neighbour *evolves*: it absorbs
the newcomer's keywords it lacks, up to a cap, and nothing else changes.
"""
from __future__ import annotations

import re
import unicodedata
from collections import Counter
from datetime import datetime

# a letter is any script's ("Zoë", "São", "東京"), not only ASCII: an English-only pattern read "café" as "caf"
_LETTER = r"[^\W\d_]"
_WORD = re.compile(rf"{_LETTER}(?:{_LETTER}|['\-])*{_LETTER}|\d{{2,4}}")
_SENTENCE_START = re.compile(r"(?:^|[.!?]\s+|\n)([A-Za-z][\w'\-]*)")
# a number as written: sign, digits and the separators inside it ("-18", "3.5", "2025-03-05", "9:40"); a word
# keeps only 2-4 digits, and "2 cats" or "48213" are numbers too
_NUMBER = re.compile(r"[-+−]?\d+(?:[.,:/-]\d+)*")

STOPWORDS = frozenset(
    """a about above after again against all also am an and any are aren't as at be because been before
    being below between both but by can can't cannot could couldn't did didn't do does doesn't doing don't
    down during each few for from further get got had hadn't has hasn't have haven't having he he'd he'll
    he's her here here's hers herself him himself his how how's i i'd i'll i'm i've if in into is isn't it
    it's its itself just let's like me more most mustn't my myself no nor not now of off on once only or
    other ought our ours ourselves out over own really same shan't she she'd she'll she's should shouldn't
    so some such than that that's the their theirs them themselves then there there's these they they'd
    they'll they're they've this those through to too under until up very was wasn't we we'd we'll we're
    we've were weren't what what's when when's where where's which while who who's whom why why's will with
    won't would wouldn't yeah yes you you'd you'll you're you've your yours yourself yourselves oh okay ok
    hey hi hello thanks thank lot much many one well way going gonna wanna yep sure great good nice cool
    wow awesome totally definitely""".split()
)


def _tokens(text: str) -> list[str]:
    """Word tokens as written, possessive 's dropped."""
    return [t[:-2] if t.lower().endswith("'s") else t for t in _WORD.findall(text)]


def words(text: str) -> list[str]:
    """Lower-cased word tokens (letters of any script, inner apostrophes/hyphens; numbers of 2-4 digits)."""
    return [w.lower() for w in _tokens(text)]


def content_words(text: str) -> list[str]:
    return [w for w in words(text) if w not in STOPWORDS and (len(w) > 2 or w.isdigit())]


def extract_keywords(text: str, limit: int = 8) -> list[str]:
    """Most frequent content words, ties broken by first appearance."""
    counts = Counter(content_words(text))
    first_seen = {w: i for i, w in reversed(list(enumerate(content_words(text))))}
    ranked = sorted(counts, key=lambda w: (-counts[w], first_seen[w]))
    return ranked[:limit]


def extract_tags(text: str, user_tags: tuple[str, ...] = ()) -> list[str]:
    """User tags first, then named things: capitalised words not opening a sentence, and years."""
    sentence_openers = {m.group(1) for m in _SENTENCE_START.finditer(text)}
    found: list[str] = [t.strip().lower() for t in user_tags if t.strip()]
    for token in _tokens(text):
        named = token[0].isupper() and token not in sentence_openers and token.lower() not in STOPWORDS
        year = token.isdigit() and len(token) == 4
        if (named or year) and token.lower() not in found:
            found.append(token.lower())
    return found


def describe(text: str, keywords: list[str], at: datetime, speaker: str | None) -> str:
    """A one-line context: when, who, and what about."""
    who = f" · {speaker}" if speaker else ""
    about = f" · about {', '.join(keywords[:4])}" if keywords else ""
    return f"{at:%Y-%m-%d}{who}{about}"


# words a restatement may add without saying anything new: fillers ("Alice really moved to Lisbon") and the
# auxiliaries be, have and do ("Alice has moved to Lisbon"); "before", "me" or "must" are not among them
AUXILIARIES = frozenset("am is are was were be been being has have had do does did".split())
GRAMMAR = AUXILIARIES | frozenset("""a an the oh okay ok yeah yes well hey hi hello really very just so too also
    actually quite indeed um uh""".split())
# words whose note claims less than it does without them: hedges ("almost fired" is not "fired"), reported or
# doubted claims ("Bob thinks Alice moved"), a past no longer true ("my former boss"), and what is only planned,
# able or attempted ("Ana will quit", "Bob is going to quit"); a newcomer that leaves one out says something new
QUALIFIERS = frozenset("""almost nearly hardly scarcely maybe perhaps probably possibly might may could would
    should allegedly supposedly reportedly apparently rumoured rumored former formerly previously ex used once
    if unless whether think thinks thought believe believes believed guess guessed suspect suspects suspected
    doubt doubts doubted claim claims claimed said says heard hope hopes hoped wish wishes wished want wants
    wanted plan plans planned pretend pretends pretended dreamt dreamed will shall can must going supposed about
    try tries tried trying""".split())
# a contraction's parts ("doesn't" is "does not", "I'm" is "am": single letters are no words)
_CONTRACTED = {"n't": "not", "'m": "am", "'re": "are", "'ve": "have", "'ll": "will", "'d": "would"}
_IRREGULAR_NOT = {"wo": "will", "sha": "shall", "ca": "can"}  # "won't", "shan't", "can't"
NEGATIONS = frozenset({"not", "no", "never", "nor", "don't", "doesn't", "didn't", "isn't", "wasn't", "aren't",
                       "weren't", "won't", "can't", "cannot", "couldn't", "shouldn't", "wouldn't", "hasn't",
                       "haven't", "hadn't", "nothing", "nobody", "none"})


def says_nothing_new(stored: str, newcomer: str) -> bool:
    """Whether a newcomer that embeds almost like a stored note is only a restatement of it.

    Embeddings barely see numbers, negation, a changed word or the order of words: "entry 10 in 2010"
    and "entry 11 in 2011", "likes tea" and "does not like tea", "leaves on Monday" and "leaves on
    Tuesday", "pay before Friday" and "pay after Friday", "I owe you" and "you owe me", "Bob called
    Alice" and "Alice called Bob", two lines of different emoji can be near-identical vectors. A
    newcomer repeats the note only with the same numbers in the same order ("3.5 mg" is not "5.3 mg"),
    the same polarity, its words among the note's and in their order (but `GRAMMAR`'s: fillers such as
    "really", and be, have or do, in the note's tense where it has one: "was" is not "is"), every one of the
    note's `QUALIFIERS` ("almost fired" is not "fired"), and no symbol the note lacks; anything else it says
    is kept as a note of its own (a duplicate is not stored: counting "Tuesday" as a repeat of "Monday"
    lost the new fact)."""
    if _NUMBER.findall(stored) != _NUMBER.findall(newcomer):
        return False
    words_stored, words_new = _plain_words(stored), _plain_words(newcomer)
    if bool(NEGATIONS.intersection(words_stored)) != bool(NEGATIONS.intersection(words_new)):
        return False
    if not QUALIFIERS.intersection(words_stored) <= set(words_new):
        return False
    tense = AUXILIARIES.intersection(words_stored)
    if tense and not AUXILIARIES.intersection(words_new) <= tense:
        return False
    remaining = iter(words_stored)  # each word found after the one before it: a subsequence
    in_order = all(word in remaining for word in words_new if word not in GRAMMAR)
    return in_order and set(_symbols(newcomer)) <= set(_symbols(stored))


def _plain_words(text: str) -> list[str]:
    """`words`, with a typographic apostrophe read as "'" ("don’t" hid a negation) and contractions spelled out."""
    plain = []
    for word in words(text.replace("\u2019", "'")):
        ending = next((end for end in _CONTRACTED if word.endswith(end)), None)
        if ending is None:
            plain.append(word)
            continue
        base = word[: -len(ending)]
        base = _IRREGULAR_NOT.get(base, base) if ending == "n't" else base
        plain += [part for part in (base, _CONTRACTED[ending]) if len(part) > 1]
    return plain


def _symbols(text: str) -> list[str]:
    """The text's symbols (emoji, currency, maths: Unicode's S categories), which words leave out."""
    return [char for char in text if unicodedata.category(char).startswith("S")]


def evolve_keywords(own: list[str], newcomer: list[str], cap: int, absorb: int = 3) -> list[str]:
    """A neighbour's keywords after a linked newcomer arrives: it absorbs up to `absorb`
    of the newcomer's keywords it lacks, never beyond `cap`, never dropping its own."""
    missing = [w for w in newcomer if w not in own]
    room = max(cap - len(own), 0)
    return own + missing[: min(absorb, room)]
