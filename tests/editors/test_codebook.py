"""The codebook's lookup: nearest entry whose ball holds the key, seen under the reader's scopes, with a margin."""
from __future__ import annotations

import torch

from agentmem.editors.codebook import Codebook


def book_of(*entries: tuple[list[float], tuple[int, ...], str | None]) -> Codebook:
    book = Codebook(2, 1, torch.device("cpu"))
    for index, (key, label, scope) in enumerate(entries):
        book.add(torch.tensor(key), torch.zeros(1), 0.5, label, f"e{index}", scope)
    return book


def test_a_key_goes_to_the_nearest_entry_whose_ball_holds_it_in_its_scopes():
    book = book_of(([0.0, 0.0], (1,), None), ([1.0, 0.0], (2,), "user:alice"))
    keys = torch.tensor([[0.1, 0.0], [0.9, 0.0], [5.0, 5.0]])
    assert book.lookup(keys).tolist() == [0, -1, -1]                    # Alice's entry is not Bob's
    assert book.lookup(keys, frozenset({"user:alice"})).tolist() == [0, 1, -1]


def test_a_margin_leaves_a_key_between_two_targets_to_the_base_model():
    book = book_of(([0.0, 0.0], (1,), None), ([0.6, 0.0], (2,), None), ([0.05, 0.0], (1,), None))
    keys = torch.tensor([[0.25, 0.0], [0.0, 0.1]])
    assert book.lookup(keys).tolist() == [2, 0]
    # 0.25 from entry 2 (target 1) and 0.35 from entry 1 (target 2): ambiguous at margin 0.2; entry 0 shares
    # entry 2's target, so it is no rival
    assert book.lookup(keys, margin=0.2).tolist() == [-1, 0]
