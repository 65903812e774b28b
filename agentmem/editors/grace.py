"""GRACE: a codebook of key -> value replacements at one layer (Hartvigsen et al., 2023).

The codebook mechanics (replacement from the last prompt token on, decided per row at prefill
and kept through the KV cache) are in `codebook`. GRACE's key is the wrapped module's input at
the last prompt token of an edited prompt; its balls follow GRACE's rules (see `_apply`).

Radii are absolute distances between keys, so they only mean something against this model's
own key scale: unless `epsilon` is given, it is `epsilon_scale` x the median nearest-neighbour
distance between the keys of `CALIBRATION_PROMPTS`, measured when the editor is created.
Measured on SmolLM2-135M at the default layer (25 of 30): that median is 7.3, so epsilon is
3.6; a ZsRE rephrase lies a median 5.9 from its question's key, while 99% of unrelated ZsRE
`loc` questions lie more than 12.8 from the nearest of 1000 edited questions. Half the median
keeps unrelated prompts out (locality 1.0 at 1000 edits) and lets some rephrases in; doubling
it gained almost no generalization (0.29 -> 0.30 at 100 edits), since close edits split radii.

Scopes: an edit of one user's scope never splits or supersedes another user's entries (no
lookup sees both); a shared edit and a scoped one can collide and are split as usual.
GRACE keys on the raw prompt's activation: under a chat template the key is the template's
last token, so GRACE's edits fire on completion prompts, not in chat.
"""
from __future__ import annotations

import torch
from pydantic import Field

from ..errors import InvalidInputError
from ..models import LanguageModel
from .base import EditRequest
from .codebook import SAME_KEY, CodebookConfig, CodebookEditor

# Unrelated one-line questions: the spread of their keys sets the default radius.
CALIBRATION_PROMPTS = (
    "What is the capital of Australia?",
    "Who painted the Mona Lisa?",
    "How many legs does a spider have?",
    "When did the Second World War end?",
    "What language is spoken in Brazil?",
    "Which planet is closest to the Sun?",
    "Who wrote Pride and Prejudice?",
    "What is the boiling point of water?",
    "Which team won the 2010 FIFA World Cup?",
    "What is the chemical symbol for gold?",
    "Who was the first president of the United States?",
    "What is the largest ocean on Earth?",
    "In which country is the city of Kyoto?",
    "What instrument did Miles Davis play?",
    "How long is a marathon?",
    "Which company makes the iPhone?",
    "What is the main ingredient of guacamole?",
    "Who discovered penicillin?",
    "What is the tallest mountain in Africa?",
    "Which river flows through Cairo?",
    "What is the currency of Japan?",
    "Who composed the Four Seasons?",
    "What gas do plants absorb from the air?",
    "Which sport is played at Wimbledon?",
    "What is the square root of 144?",
    "Who directed the film Jaws?",
    "Which element has atomic number 1?",
    "What is the official language of Egypt?",
    "Where was Albert Einstein born?",
    "What genre of music is Metallica known for?",
    "Which animal is the largest mammal?",
    "What year did the Berlin Wall fall?",
)


class GraceConfig(CodebookConfig):
    """Where GRACE sits and how it trains; `epsilon=None` calibrates the initial radius to the model."""

    epsilon: float | None = Field(default=None, gt=0)
    epsilon_scale: float = Field(default=0.5, gt=0)


class GraceEditor(CodebookEditor):
    """GRACE on one linear module; see the module docstring for how keys, radii and values work."""

    kind = "grace"
    config_class = GraceConfig
    config: GraceConfig

    def __init__(self, lm: LanguageModel, config: GraceConfig | None = None) -> None:
        super().__init__(lm, config)
        if self.config.epsilon is None:
            epsilon = self._calibrated_epsilon()
            self.config = self.config.model_copy(update={"epsilon": epsilon})

    def _apply(self, request: EditRequest) -> int:
        """Place the edit in the codebook and train its value.

        Each edit gets its own entry, at its own key. If its ball would overlap the nearest
        entry's: when that entry's value already produces the target here, the new entry shares
        the value (GRACE's widening, kept as a ball per key so that later splits and rollbacks
        never cut another edit's key out); the same prompt with another target switches the old
        entry off; otherwise both radii are split to half the distance. The other entry is resized only once
        the value is trained, so an edit that fails leaves the codebook as it was.
        """
        prompt_ids, target_ids = self.lm.encode_pair(request.prompt, request.target)
        prepared = self._prepare(prompt_ids + target_ids[:-1], len(prompt_ids) - 1)
        key, label, book, radius = prepared.inputs[0], tuple(target_ids), self.layer.codebook, self.config.epsilon
        scope = request.scope
        resize: tuple[int, float] | None = None  # (row, its new radius)
        if len(book):  # only entries some lookup sees together with this one can collide with it
            rows, distances = book.nearest(key[None], book.meeting(scope))
            row, distance = int(rows[0]), float(distances[0])
            if distance <= float(book.radii[row]) + radius:  # the new ball would overlap the nearest one
                if book.labels[row] == label and self._predicts(prepared, book.values[row], target_ids):
                    book.add(key, book.values[row], radius, label, request.id, scope)
                    return 0
                if distance <= SAME_KEY * float(key.norm()) and book.scopes[row] == scope:
                    resize = (row, -1.0)
                else:
                    resize = (row, min(float(book.radii[row]), distance / 2))
                    radius = min(radius, distance / 2)
        value, steps = self._train([prepared], target_ids)
        if resize is not None:
            self._resize(request.id, *resize)
        book.add(key, value, radius, label, request.id, scope)
        return steps

    def _prompt_key(self, prompt: str) -> torch.Tensor:
        ids = self.lm.tokenizer(prompt).input_ids
        return self._prepare(ids, len(ids) - 1).inputs[0]

    def _calibrated_epsilon(self) -> float:
        keys = torch.stack([self._prompt_key(prompt) for prompt in CALIBRATION_PROMPTS])
        distances = torch.cdist(keys, keys).fill_diagonal_(float("inf"))
        median = float(distances.min(dim=1).values.median())
        if not median > 0:
            self.remove()
            raise InvalidInputError("cannot calibrate GRACE's radius on this model: pass GraceConfig(epsilon=...)")
        return self.config.epsilon_scale * median
