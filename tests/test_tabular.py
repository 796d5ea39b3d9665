import numpy as np
import pandas as pd
import pytest

from common.data.disclosure import DisclosurePolicy
from common.data.tabular import (
    CATEGORICAL,
    NUMERIC,
    Schema,
    SchemaError,
    check_frame,
    encode_frame,
    local_statistics,
    merge_statistics,
    parse_statistics,
)

# Frames of two or three rows: these tests check the statistics' arithmetic, so they share every value (k = 1).
# The disclosure rules (k-anonymity, identifiers withheld) have tests of their own in test_disclosure.py.
OPEN = DisclosurePolicy(min_category_count=1, max_distinct_fraction=1.0)
SITE_A = pd.DataFrame({"age": [30.0, 40.0, None], "city": ["x", "y", "x"], "label": [0, 1, 0]})
SITE_B = pd.DataFrame({"age": [50.0, 60.0], "city": ["z", None], "label": [1, 2]})


def test_merged_statistics_equal_pooled_statistics_without_sharing_rows():
    stats = [local_statistics(SITE_A, "label", policy=OPEN), local_statistics(SITE_B, "label", policy=OPEN)]
    assert "30.0" not in str(stats) and "rows" not in str(stats[0]["columns"])  # sums and counts, not values
    schema = merge_statistics(stats, "label")
    pooled_age = pd.concat([SITE_A, SITE_B])["age"].dropna()
    age = next(c for c in schema.features if c.name == "age")
    assert age.kind == NUMERIC
    assert age.mean == pytest.approx(pooled_age.mean())  # 45
    assert age.std == pytest.approx(pooled_age.std(ddof=0))
    city = next(c for c in schema.features if c.name == "city")
    assert city.kind == CATEGORICAL and city.categories == ("x", "y", "z")  # most frequent first
    assert schema.classes == ("0", "1", "2")
    assert schema.num_features == 1 + 3


def test_encoding_standardises_fills_missing_and_one_hot_encodes():
    schema = merge_statistics([local_statistics(SITE_A, "label", policy=OPEN),
                               local_statistics(SITE_B, "label", policy=OPEN)], "label")
    x, y, dropped = encode_frame(SITE_B, schema)
    # columns sorted by name: age, then city one-hot (x, y, z)
    age_std = schema.features[0].std
    np.testing.assert_allclose(x[:, 0], [(50 - 45) / age_std, (60 - 45) / age_std], rtol=1e-6)
    np.testing.assert_array_equal(x[:, 1:], [[0, 0, 1], [0, 0, 0]])  # missing city -> all zeros
    assert y.tolist() == [1, 2] and dropped == 0
    x_a, _, _ = encode_frame(SITE_A, schema)
    assert x_a[2, 0] == pytest.approx(0.0)  # missing age -> the mean -> 0 after standardising


def test_mismatch_names_the_offending_column():
    schema = merge_statistics([local_statistics(SITE_A, "label", policy=OPEN)], "label")
    with pytest.raises(SchemaError) as missing:
        check_frame(SITE_A.drop(columns=["city"]), schema)
    assert missing.value.column == "city" and "'city'" in str(missing.value)
    with pytest.raises(SchemaError) as wrong_kind:
        check_frame(SITE_A.assign(age=["old", "young", "old"]), schema)
    assert wrong_kind.value.column == "age"


def test_column_missing_at_a_minority_of_nodes_stays_in_the_schema():
    stats = [local_statistics(SITE_A, "label", policy=OPEN)] * 2 + [
        local_statistics(SITE_A.drop(columns=["city"]), "label", policy=OPEN)]
    assert [c.name for c in merge_statistics(stats, "label").features] == ["age", "city"]


def test_small_integer_codes_can_be_declared_categorical():
    frame = pd.DataFrame({"grade": [1, 2, 3, 1], "label": [0, 1, 0, 1]})
    schema = merge_statistics([local_statistics(frame, "label", ["grade"], policy=OPEN)], "label", ["grade"])
    assert schema.features[0].kind == CATEGORICAL and schema.features[0].categories == ("1", "2", "3")


@pytest.mark.parametrize(
    "bad",
    [
        None,
        {"target": "other", "columns": {}, "target_counts": {}},
        {"target": "label", "columns": {"a": {"kind": "numeric", "count": -1, "sum": 0, "sum_sq": 0}},
         "target_counts": {"0": 1}},
        {"target": "label", "columns": {"a": {"kind": "numeric", "count": 1, "sum": float("nan"), "sum_sq": 0}},
         "target_counts": {"0": 1}},
        {"target": "label", "columns": {"a": {"kind": "pickle"}}, "target_counts": {"0": 1}},
    ],
)
def test_untrusted_statistics_are_validated(bad):
    with pytest.raises(SchemaError):
        merge_statistics([bad], "label")


def test_schema_wire_round_trip_and_validation():
    schema = merge_statistics([local_statistics(SITE_A, "label", policy=OPEN),
                               local_statistics(SITE_B, "label", policy=OPEN)], "label")
    assert Schema.from_wire(schema.to_wire()) == schema
    with pytest.raises(SchemaError):
        Schema.from_wire({"target": "label", "classes": ["a"], "features": [{"name": "x"}]})


@pytest.mark.parametrize("hostile", [10**400, -(10**400), 1e301, float("inf"), float("nan"), True, "1"])
@pytest.mark.parametrize("field", ["sum", "sum_sq", "count"])
def test_statistics_numbers_out_of_range_are_a_schema_error_not_a_crash(field, hostile):
    stats = {"target": "y", "target_counts": {"a": 2},
             "columns": {"x": {"kind": "numeric", "count": 2, "sum": 1.0, "sum_sq": 1.0}}}
    stats["columns"]["x"][field] = hostile
    with pytest.raises(SchemaError):
        parse_statistics(stats, "y")
