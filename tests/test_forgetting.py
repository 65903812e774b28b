import math

import pytest

from agentmem import forgetting


def test_exponential_retention_is_exp_of_minus_t_over_s():
    assert forgetting.exponential_retention(0.0, 1.0) == 1.0
    assert forgetting.exponential_retention(2.0, 4.0) == pytest.approx(math.exp(-0.5))


def test_stronger_notes_fade_slower():
    # MemoryBank's code computes exp(-t/5*S) = exp(-t*S/5): stronger would fade faster
    weak = forgetting.exponential_retention(3.0, 1.0)
    strong = forgetting.exponential_retention(3.0, forgetting.reinforced_strength(1.0, 1.0))
    assert strong > weak


def test_future_recall_counts_as_now():
    assert forgetting.exponential_retention(-5.0, 1.0) == 1.0


def test_non_positive_strength_is_rejected():
    with pytest.raises(ValueError):
        forgetting.exponential_retention(1.0, 0.0)


def test_actr_spaced_recalls_outlast_a_single_presentation():
    once = forgetting.actr_retention([10.0])
    spaced = forgetting.actr_retention([10.0, 6.0, 3.0])
    assert 0 < once < spaced < 1


def test_actr_retention_falls_with_age():
    assert forgetting.actr_retention([1.0]) > forgetting.actr_retention([30.0])
    assert forgetting.actr_retention([]) == 0.0
