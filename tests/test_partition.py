import numpy as np
import pytest

from common.data.partition import dominant_class_share, holdout_split, iid_partition, parse_partition, partition


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


LABELS = np.repeat(np.arange(10), 60)


@pytest.mark.parametrize("scheme", ["iid", "dirichlet", "shards", "quantity"])
def test_every_row_lands_in_exactly_one_node_and_seed_reproduces(scheme):
    parts = partition(LABELS, 5, scheme=scheme, seed=3, alpha=0.3)
    assert sorted(np.concatenate(parts).tolist()) == list(range(len(LABELS)))
    assert all(len(p) > 0 for p in parts)
    again = partition(LABELS, 5, scheme=scheme, seed=3, alpha=0.3)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again, strict=True))


def test_dirichlet_with_small_alpha_is_skewed_and_iid_is_not():
    iid = dominant_class_share(LABELS, partition(LABELS, 5, scheme="iid", seed=0))
    skewed = dominant_class_share(LABELS, partition(LABELS, 5, scheme="dirichlet", seed=0, alpha=0.1))
    mild = dominant_class_share(LABELS, partition(LABELS, 5, scheme="dirichlet", seed=0, alpha=100.0))
    assert iid < 0.2  # ten classes: about 0.1 each
    assert skewed > 0.25  # each node is dominated by a few classes
    assert mild < 0.2
    assert skewed > 2 * iid


def test_quantity_skew_changes_sizes_not_class_mix():
    parts = partition(LABELS, 5, scheme="quantity", seed=0, alpha=0.3)
    sizes = sorted(len(p) for p in parts)
    assert sizes[-1] > 3 * sizes[0]
