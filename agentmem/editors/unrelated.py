"""The unrelated prompts that ship with the package: what an editor built with defaults keeps its edits away from.

Editors that learn where an edit must not reach (the semantic editor's ball radii, WISE's
router margins) calibrate against unrelated prompts. Built with no `unrelated=`, they use
this set: several hundred varied questions and sentence starts, whose provenance the data
file's header states (`data/unrelated.txt`).
"""
from __future__ import annotations

from functools import lru_cache
from importlib import resources


@lru_cache(maxsize=1)
def default_unrelated_prompts() -> tuple[str, ...]:
    """The shipped unrelated prompts, in file order ("#" lines are the provenance header)."""
    text = resources.files(__package__).joinpath("data", "unrelated.txt").read_text(encoding="utf-8")
    return tuple(line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#"))
