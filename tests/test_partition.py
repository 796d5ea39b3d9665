import numpy as np
import pytest

from common.partition import holdout_split, iid_partition, parse_partition


def test_iid_partition_is_disjoint_complete_and_reproducible():
    parts = iid_partition(103, 4, seed=7)
    rows = np.concatenate(parts)
    assert sorted(rows.tolist()) == list(range(103))
    assert [len(p) for p in parts] == [26, 26, 26, 25]
    again = iid_partition(103, 4, seed=7)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again, strict=True))
    assert not np.array_equal(parts[0], iid_partition(103, 4, seed=8)[0])


def test_holdout_split_is_stratified_and_disjoint():
    labels = np.repeat(np.arange(5), 20)
    train, holdout = holdout_split(labels, holdout_fraction=0.2, seed=0)
    assert not set(train) & set(holdout)
    assert len(train) + len(holdout) == 100
    assert np.bincount(labels[holdout]).tolist() == [4] * 5


@pytest.mark.parametrize("text", ["3/3", "-1/2", "a/b", "1", "0/0"])
def test_bad_partition_text_is_refused(text):
    with pytest.raises(ValueError):
        parse_partition(text)


def test_partition_text_parses():
    assert parse_partition("2/5") == (2, 5)
