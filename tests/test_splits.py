"""`specllm.splits`: the test and validation splits are fixed by a hash of the id."""

from __future__ import annotations

from specllm.config import SplitConfig
from specllm.splits import hash_fraction, is_validation, split_of


def test_validation_is_a_fixed_fifth_of_the_ids_and_independent_of_the_test_split():
    ids = [f"spec-{i}" for i in range(4000)]
    val = [is_validation(i, SplitConfig()) for i in ids]
    assert val == [is_validation(i, SplitConfig()) for i in ids]  # the same on every call
    assert 0.18 < sum(val) / len(ids) < 0.22
    test = [split_of(i, SplitConfig()) == "test" for i in ids]
    # drawn with its own salt: as many validation ids among the test ones as elsewhere
    share_in_test = sum(v for v, t in zip(val, test) if t) / sum(test)
    assert 0.15 < share_in_test < 0.25
    assert sum(is_validation(i, SplitConfig(val_fraction=0.5)) for i in ids) > 1800
    assert not any(is_validation(i, SplitConfig(val_fraction=0.0)) for i in ids)
    assert 0 <= hash_fraction("x", "salt") < 1
