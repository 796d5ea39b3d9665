"""What a node's column statistics may disclose (pure: no I/O).

To build the federation's schema, nodes share statistics of their columns, never rows. Counts of text
values are still values: a ``patient_id`` or ``admission_date`` column would send identifiers, and a
category held by one or two rows singles those rows out. A node therefore applies, before anything
leaves it:

* **exclusion**: columns named in ``exclude`` (``--exclude-columns``, at the node or asked by the
  server) are not mentioned at all;
* **no identifiers as categories**: a text column with more distinct values than ``max_categories``,
  or than ``max_distinct_fraction`` of its non-empty rows, is withheld (it is an identifier, a date,
  free text: not a category);
* **k-anonymity of values**: a category (or a class of the target) held by fewer than
  ``min_category_count`` rows at this node is left out of the counts it shares;
* **one spelling per category**: values are compared after ``normalise_category`` (surrounding
  white space and case), so ``M``, ``m`` and ``m `` are one category, at the node and when encoding.

Numeric columns share only their count, sum and sum of squares.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from common.validation import require_positive_fraction, require_positive_int

DEFAULT_MIN_CATEGORY_COUNT = 5
DEFAULT_MAX_DISTINCT_FRACTION = 0.5
DEFAULT_MAX_CATEGORIES = 100


@dataclass(frozen=True)
class DisclosurePolicy:
    """The rules a node's statistics follow; ``stricter`` combines the node's own with what the server asks."""

    min_category_count: int = DEFAULT_MIN_CATEGORY_COUNT
    max_distinct_fraction: float = DEFAULT_MAX_DISTINCT_FRACTION
    max_categories: int = DEFAULT_MAX_CATEGORIES
    exclude: frozenset[str] = field(default_factory=frozenset)

    def __post_init__(self) -> None:
        require_positive_int("min_category_count", self.min_category_count)
        require_positive_fraction("max_distinct_fraction", self.max_distinct_fraction)

    def stricter(self, *, min_category_count: int | None = None, exclude: Iterable[str] = ()) -> DisclosurePolicy:
        """This policy, tightened by a request: a larger k, more excluded columns. Never looser."""
        return DisclosurePolicy(
            min_category_count=max(self.min_category_count, min_category_count or 0),
            max_distinct_fraction=self.max_distinct_fraction,
            max_categories=self.max_categories,
            exclude=self.exclude | frozenset(exclude),
        )


def normalise_category(value: Any) -> str:
    """Canonical text of a category: 3, 3.0 and "3" are one; so are "Male", "male" and " male "."""
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        value = int(value)
    return str(value).strip().casefold()


def withheld_reason(num_distinct: int, num_rows: int, policy: DisclosurePolicy) -> str | None:
    """Why a text column with ``num_distinct`` values in ``num_rows`` non-empty rows may not be shared."""
    if num_distinct > policy.max_categories:
        return f"{num_distinct} distinct values (more than {policy.max_categories}): an identifier, not a category"
    if num_rows and num_distinct > policy.max_distinct_fraction * num_rows:
        return (f"{num_distinct} distinct values in {num_rows} rows (more than "
                f"{policy.max_distinct_fraction:.0%}): an identifier, not a category")
    return None


def k_anonymous(counts: dict[str, int], policy: DisclosurePolicy) -> dict[str, int]:
    """The counts of values held by at least ``min_category_count`` rows."""
    return {value: count for value, count in counts.items() if count >= policy.min_category_count}
