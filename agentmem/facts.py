"""Turning a note's text into a `Fact` (prompt -> target) that consolidation can edit into the model.

Only a fact can become an edit, so extraction decides what may ever reach the weights. The
default extractor is a handful of rules, no LLM: one short declarative sentence about a third
party ("Alice lives in Lisbon", "The project deadline is March 3"), split after its verb
phrase. Anything else (questions, first or second person, negations, hedges, long or
compound sentences, pronoun subjects) yields no fact, because a wrong fact in the weights is worse than none.
An LLM-backed extractor (`LLMFactExtractor`) can stand in for the rules.
"""
from __future__ import annotations

import logging
import re
from collections.abc import Callable

from pydantic import ValidationError

from .notes import Fact

log = logging.getLogger(__name__)

FactExtractor = Callable[[str], Fact | None]
ChatFunction = Callable[[list[dict[str, str]]], str]

# The verb phrase ends the prompt; the longest alternatives come first so "lives in" beats "lives".
_RELATIONS = (
    r"(?:is|are|was|were) (?:called|named|located in|based in|born in|from|in|at|on|by)",
    r"(?:is|are|was|were)",
    r"(?:lives|lived|works|worked|stays|stayed|studies|studied|grew up|was born|moved|resides|resided) (?:in|at|for|to|on)",
    r"(?:likes|loves|prefers|hates|owns|speaks|plays|drives|uses|teaches|leads|manages|supports|drinks|eats)",
)
_SENTENCE = re.compile(
    r"^(?P<subject>(?:[A-Z][\w'’.-]*|The|A|An)(?: [\w'’.-]+){0,5}?) (?P<relation>" + "|".join(_RELATIONS) + r") (?P<target>.+)$"
)
_PERSONAL = {"i", "me", "my", "mine", "we", "us", "our", "ours", "you", "your", "yours", "i'm", "we're", "you're"}
# a subject that needs context to mean anything cannot stand alone in the weights
_VAGUE = {"it", "this", "that", "these", "those", "he", "she", "they", "there", "here", "what", "who", "everything", "nothing"}
# lowercase words only: "may" hedges, "May 3" is a date
_HEDGES = {"not", "never", "no", "maybe", "probably", "perhaps", "possibly", "might", "may", "could", "would", "should",
           "usually", "sometimes", "allegedly", "apparently"}
_CONNECTIVES = re.compile(r",|;|:| and | or | but | because | although | if | when | which | who | that ", re.I)
MAX_TARGET_WORDS = 5


def extract_fact(text: str) -> Fact | None:
    """The fact one simple declarative sentence states, or None.

    >>> extract_fact("Alice lives in Lisbon.")
    Fact(prompt='Alice lives in', target='Lisbon', rephrases=())
    """
    sentence = " ".join(text.split()).rstrip(".!")
    if not sentence or "?" in sentence or re.search(r"[.!]\s", sentence):
        return None
    match = _SENTENCE.match(sentence)
    if match is None:
        return None
    prompt = f"{match['subject']} {match['relation']}"
    target = match["target"].strip("\"'“”")
    tokens = [w.strip("'’\"") for w in sentence.split()]
    words = {w.casefold() for w in tokens}
    lowercase = {w for w in tokens[1:] if w.islower()} | {tokens[0].casefold()}
    target_words = target.split()
    if (
        words & _PERSONAL
        or match["subject"].split()[0].casefold() in _VAGUE
        or "n't" in sentence or "n’t" in sentence
        or lowercase & _HEDGES
        or len(target_words) > MAX_TARGET_WORDS
        or _CONNECTIVES.search(f" {target} ")
    ):
        return None
    return Fact(prompt=prompt, target=target)


class LLMFactExtractor:
    """A fact extractor backed by any chat function (messages in, text out).

    The model is asked for `prompt | target` or `none`. Its answer is kept only if the
    prompt and the target both occur in the note (so it cannot invent a fact); anything
    else, including an exception from the model, falls back to `fallback` (the rules).
    """

    INSTRUCTION = (
        "Split the statement into a sentence start and the fact that completes it, as 'start | fact'. "
        "The fact is a short name, place, date or value at the end. If the statement is not a plain "
        "fact about someone or something, answer 'none'.\n"
        "Statement: Alice lives in Lisbon.\nAnswer: Alice lives in | Lisbon\n"
        "Statement: I think it might rain.\nAnswer: none\n"
        "Statement: {text}\nAnswer:"
    )

    def __init__(self, chat: ChatFunction, fallback: FactExtractor | None = extract_fact) -> None:
        self.chat = chat
        self.fallback = fallback

    def __call__(self, text: str) -> Fact | None:
        try:
            answer = self.chat([{"role": "user", "content": self.INSTRUCTION.format(text=text)}])
            fact = _parse(answer, text)
        except Exception:  # a broken model must not lose the note
            log.warning("LLM fact extraction failed; using the fallback", exc_info=True)
            fact = None
        if fact is None and self.fallback is not None:
            return self.fallback(text)
        return fact


def _parse(answer: str, text: str) -> Fact | None:
    """`prompt | target` from the first line of a model's answer, if both parts occur in `text`."""
    line = answer.strip().splitlines()[0] if answer.strip() else ""
    prompt, bar, target = line.partition("|")
    prompt, target = prompt.strip(), target.strip().rstrip(".")
    folded = " ".join(text.split()).casefold()
    if not bar or not prompt or not target or prompt.casefold() not in folded or target.casefold() not in folded:
        return None
    try:
        return Fact(prompt=prompt, target=target)
    except ValidationError:
        return None


def prompt_key(prompt: str) -> str:
    """Facts about the same thing share a key: prompts compared case- and spacing-blind."""
    return " ".join(prompt.casefold().split())



# ---- question forms and neighbours of a fact, from the same parse -------------------------------

_PROMPT = re.compile(r"^(?P<subject>.+?) (?P<relation>" + "|".join(_RELATIONS) + r")$")
# Verb phrase -> question forms ({s}: the subject). Checked in order; the first whose key the relation starts with wins.
_QUESTIONS = (
    ("lives in", ("Where does {s} live?", "What city does {s} live in?", "What city is {s} in?")),
    ("lived in", ("Where did {s} live?", "What city did {s} live in?")),
    ("resides in", ("Where does {s} live?", "What city is {s} in?")),
    ("stays", ("Where does {s} stay?",)),
    ("works", ("Where does {s} work?", "Who does {s} work for?")),
    ("worked", ("Where did {s} work?",)),
    ("studies", ("Where does {s} study?",)),
    ("studied", ("Where did {s} study?",)),
    ("grew up", ("Where did {s} grow up?",)),
    ("was born", ("Where was {s} born?",)),
    ("moved", ("Where did {s} move to?",)),
    ("is called", ("What is {s} called?",)),
    ("is named", ("What is {s} named?",)),
    ("is from", ("Where is {s} from?",)),
    ("is born in", ("Where was {s} born?",)),
    ("is located", ("Where is {s}?",)),
    ("is based", ("Where is {s} based?",)),
    ("is in", ("Where is {s}?",)),
    ("is at", ("Where is {s}?",)),
    ("is", ("What is {s}?",)),
    ("are", ("What are {s}?",)),
    ("was", ("What was {s}?",)),
    ("were", ("What were {s}?",)),
)
# Other relations asked of the same subject: a fact about one of them must not change the others.
_OTHER_RELATIONS = (("lives in", "Where does {s} live?"), ("works at", "Where does {s} work?"),
                    ("likes", "What does {s} like?"), ("was born in", "Where was {s} born?"))
_OTHER_NAMES = ("Maria", "Tomas")


def parse_prompt(prompt: str) -> tuple[str, str] | None:
    """A fact prompt's subject and verb phrase, as the rule-based extractor splits them ("Alice", "lives in")."""
    match = _PROMPT.match(" ".join(prompt.split()))
    return (match["subject"], match["relation"]) if match else None


def fact_subject(prompt: str) -> str | None:
    """What a fact prompt is about, as the rule-based extractor parses it ("The project deadline is" -> "The project
    deadline"), when it reads verbatim in the prompt (an `EditRequest.subject`); else None."""
    parsed = parse_prompt(prompt)
    return parsed[0] if parsed is not None and parsed[0] in prompt else None


def question_forms(fact: Fact) -> tuple[str, ...]:
    """Questions a user would ask for this fact ("Alice lives in" -> "Where does Alice live?", ...); () if unparsed."""
    parsed = parse_prompt(fact.prompt)
    if parsed is None:
        return ()
    subject, relation = parsed
    subject = _mid_sentence(subject)
    for verb, forms in _QUESTIONS:
        if relation == verb or relation.startswith(verb + " "):
            return tuple(form.format(s=subject) for form in forms)
    verb = relation.split()[0]
    base = verb[:-2] if verb.endswith(("ches", "shes", "sses")) else verb[:-1]
    return (f"What does {subject} {base}?",)


def neighbour_prompts(fact: Fact) -> tuple[str, ...]:
    """Prompts near the fact about something else, built from its parse: the same subject with other relations
    and the same relation with another subject, each as a sentence start and as a question. () if unparsed."""
    parsed = parse_prompt(fact.prompt)
    if parsed is None:
        return ()
    subject, relation = parsed
    own = set(question_forms(fact))
    probes = [p for verb, question in _OTHER_RELATIONS if not relation.startswith(verb.split()[0])
              for p in (f"{subject} {verb}", question.format(s=_mid_sentence(subject))) if p not in own][:4]
    name = next((w for w in re.findall(r"[A-Z][\w]*", subject) if w not in ("The", "A", "An")), None)
    other = next(n for n in _OTHER_NAMES if n != name)
    if name is not None:
        swapped = Fact(prompt=fact.prompt.replace(name, other, 1), target=fact.target)
        probes += [swapped.prompt, *question_forms(swapped)[:1]]
    return tuple(dict.fromkeys(probes))


def _mid_sentence(subject: str) -> str:
    """The subject as it reads inside a question ("The project deadline" -> "the project deadline")."""
    first, _, rest = subject.partition(" ")
    return f"{first.lower()} {rest}" if first in ("The", "A", "An") and rest else subject
