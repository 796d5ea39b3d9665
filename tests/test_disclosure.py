"""What a node's column statistics may disclose: no identifiers, no value held by fewer than k rows, one spelling
per category, excluded columns not mentioned; and the server can only make that stricter."""

import asyncio
import json

import numpy as np
import pandas as pd
import pytest

from common.data.disclosure import DisclosurePolicy, normalise_category
from common.data.tabular import encode_frame, local_statistics, merge_statistics
from fl_node.data import LocalData

ROWS = 60
RARE = "martian"  # held by 3 rows: below the default k of 5


def hospital(seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    ward = rng.choice(["north", "south", "east"], ROWS).astype(object)
    ward[:3] = RARE
    sex = rng.choice(["M", "m", " m", "F", "f ", "F"], ROWS)  # one category each, however typed
    return pd.DataFrame({
        "patient_id": [f"MRN-{seed}{i:05d}" for i in range(ROWS)],
        "admission_date": pd.date_range("2025-01-01", periods=ROWS, freq="D").strftime("%Y-%m-%d"),
        "age": rng.integers(20, 90, ROWS),
        "ward": ward,
        "sex": sex,
        "insurer": rng.choice(["public", "private"], ROWS),
        "outcome": rng.choice(["home", "icu"], ROWS),
    })


def all_values(frame: pd.DataFrame, column: str) -> set[str]:
    return {str(v) for v in frame[column]}


def test_identifiers_dates_and_rare_categories_never_leave_the_node():
    frame = hospital()
    stats = local_statistics(frame, "outcome", policy=DisclosurePolicy(exclude=frozenset({"insurer"})))
    text = json.dumps(stats)
    for column in ("patient_id", "admission_date"):
        assert not any(value in text for value in all_values(frame, column)), column
        assert column not in stats["columns"] and "identifier" in stats["withheld"][column]
    assert RARE not in text
    assert "insurer" not in stats["columns"] and "public" not in text and "excluded" in stats["withheld"]["insurer"]
    assert set(stats["columns"]["ward"]["counts"]) == {"north", "south", "east"}
    assert set(stats["columns"]["sex"]["counts"]) == {"m", "f"}  # normalised before counting
    assert sum(stats["columns"]["sex"]["counts"].values()) == ROWS
    assert stats["columns"]["age"] == {"kind": "numeric", "count": ROWS, "sum": float(frame["age"].sum()),
                                       "sum_sq": float((frame["age"].astype(float) ** 2).sum())}


@pytest.mark.parametrize("k", [1, 3, 4, 5, 30])
def test_a_category_is_shared_only_when_at_least_k_rows_hold_it(k):
    frame = hospital()
    stats = local_statistics(frame, "outcome", policy=DisclosurePolicy(min_category_count=k))
    counts = frame["ward"].value_counts()
    assert stats["columns"]["ward"]["counts"] == {w: int(n) for w, n in counts.items() if n >= k}
    target = frame["outcome"].value_counts()
    assert stats["target_counts"] == {c: int(n) for c, n in target.items() if n >= k}


def test_a_text_column_with_nearly_one_value_per_row_is_withheld():
    frame = pd.DataFrame({"note": [f"n{i % 40}" for i in range(60)], "label": ["a", "b"] * 30})
    stats = local_statistics(frame, "label")  # 40 distinct values in 60 rows: more than half
    assert "note" not in stats["columns"] and "40 distinct values in 60 rows" in stats["withheld"]["note"]
    stats = local_statistics(frame, "label", policy=DisclosurePolicy(max_distinct_fraction=0.9, min_category_count=1))
    assert len(stats["columns"]["note"]["counts"]) == 40


def test_the_server_can_tighten_a_nodes_policy_but_never_loosen_it():
    own = DisclosurePolicy(min_category_count=10, exclude=frozenset({"a"}))
    assert own.stricter(min_category_count=3, exclude=["b"]) == DisclosurePolicy(
        min_category_count=10, exclude=frozenset({"a", "b"}))
    assert own.stricter(min_category_count=20).min_category_count == 20


def test_categories_are_encoded_under_the_same_normalisation():
    frame = pd.DataFrame({"sex": ["M", " m", "F", "f ", "x"] * 5, "label": ["a", "b", "a", "b", "a"] * 5})
    schema = merge_statistics([local_statistics(frame, "label")], "label")
    sex = next(c for c in schema.features if c.name == "sex")
    assert set(sex.categories) == {"m", "f", "x"}
    x, _, _ = encode_frame(frame.head(4), schema)
    index = {c: i for i, c in enumerate(sex.categories)}
    assert x[:, index["m"]].tolist() == [1, 1, 0, 0] and x[:, index["f"]].tolist() == [0, 0, 1, 1]
    assert normalise_category(3.0) == normalise_category("3") == "3"


def test_the_nodes_stats_handler_applies_the_stricter_of_its_policy_and_the_request(tmp_path):
    from unittest.mock import AsyncMock

    from fl_node.client import FederatedNode, NodeSettings

    frame = hospital()
    settings = NodeSettings(node_id="n1", server_url="http://127.0.0.1:1", kafka="127.0.0.1:1", updates_topic="u",
                            out_dir=tmp_path, chunk_bytes=1024)
    node = FederatedNode(settings, LocalData(frame=frame, target="outcome",
                                             policy=DisclosurePolicy(exclude=frozenset({"patient_id"}))),
                         trainer=None)  # type: ignore[arg-type]
    node.sio = AsyncMock()

    async def ask(request):
        reply = await node._on_stats(request)
        return reply

    reply = asyncio.run(ask({"target": "outcome", "categorical": [], "exclude": ["insurer"],
                             "min_category_count": 2}))
    assert "patient_id" not in json.dumps(reply["columns"]) and "insurer" not in reply["columns"]
    assert RARE not in json.dumps(reply)  # the node's own k (5) holds against the request's 2
    assert "error" in asyncio.run(ask({"target": "outcome", "min_category_count": 10**9}))
    assert "error" in asyncio.run(ask({"target": "outcome", "exclude": "insurer"}))


def test_a_node_with_too_many_columns_says_so_instead_of_sending_an_oversized_reply(tmp_path):
    wide = pd.DataFrame(np.zeros((3, 2500)), columns=[f"c{i}" for i in range(2500)]).assign(label=["a", "b", "a"])
    with pytest.raises(Exception, match="2501 columns, more than the 2000"):
        LocalData(frame=wide, target="label").statistics("label", [])
    many_categories = pd.DataFrame({f"c{i}": [f"value-{j % 60}" for j in range(400)] for i in range(1900)})
    many_categories["label"] = ["a", "b"] * 200
    with pytest.raises(Exception, match=r"statistics are \d+ bytes, more than the"):
        LocalData(frame=many_categories, target="label", policy=DisclosurePolicy(min_category_count=1)).statistics(
            "label", [])
