import pydantic
import pytest

from agentmem.config import MemoryConfig


def test_a_misspelt_field_is_refused_instead_of_left_at_its_default():
    with pytest.raises(pydantic.ValidationError, match="link_treshold"):
        MemoryConfig(link_treshold=0.5)


def test_a_field_spelt_right_is_taken():
    assert MemoryConfig(link_threshold=0.5).link_threshold == 0.5
