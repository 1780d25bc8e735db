"""Controlled messiness: which kinds of bad data are injected, at what rates, where.

Rates are fractions of a source table's *base* records (one per canonical entity).
Counts are exact: `round(rate * base)` records per kind, drawn without replacement so
that the kinds never overlap (a record is at most one kind of messy). That keeps the
ground truth unambiguous: order of checks versus de-duplication cannot matter.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

# Per-row kind codes carried through the generator.
CLEAN = 0
NULL = 1
DUPLICATE = 2
MALFORMED_LINE = 3
MALFORMED_VALUE = 4
OUT_OF_RANGE = 5
INVALID_VALUE = 6
LATE_CORRECTION = 7

KIND_NAMES = {
    CLEAN: "clean",
    NULL: "null",
    DUPLICATE: "duplicate",
    MALFORMED_LINE: "malformed_line",
    MALFORMED_VALUE: "malformed_value",
    OUT_OF_RANGE: "out_of_range",
    INVALID_VALUE: "invalid_value",
    LATE_CORRECTION: "late_correction",
}
QUARANTINED_KINDS = (NULL, MALFORMED_LINE, MALFORMED_VALUE, OUT_OF_RANGE, INVALID_VALUE)


@dataclass(frozen=True)
class MessyRates:
    """Fractions of base records per source table that get each kind of messiness."""

    null: float = 0.01  # a required column set to NULL
    duplicate: float = 0.01  # an exact copy of a record
    malformed: float = 0.005  # na CSV only: wrong field count or an unparsable number (half each)
    out_of_range: float = 0.01  # negative fuel or fare, load factor > 1, unknown airport, score off scale
    invalid_value: float = 0.005  # a status or cabin outside the allowed values
    late_correction: float = 0.02  # a later version of the same key with a newer cursor

    def as_dict(self) -> dict[str, float]:
        return asdict(self)

    @classmethod
    def zero(cls) -> MessyRates:
        return cls(0.0, 0.0, 0.0, 0.0, 0.0, 0.0)


# Which kinds apply to which source table (keyed by generator table role).
APPLICABLE: dict[tuple[str, str], tuple[str, ...]] = {
    # latam on PostgreSQL: primary keys prevent exact duplicates of flights and surveys;
    # flight corrections are in-place UPDATEs (only the newest version exists).
    ("latam", "flights"): ("null", "out_of_range", "invalid_value", "late_correction"),
    ("latam", "bookings"): ("null", "duplicate", "out_of_range", "invalid_value", "late_correction"),
    ("latam", "feedback"): ("null", "out_of_range"),
    ("eu", "flights"): ("null", "duplicate", "out_of_range", "invalid_value", "late_correction"),
    ("eu", "bookings"): ("null", "duplicate", "out_of_range", "invalid_value", "late_correction"),
    ("eu", "feedback"): ("null", "duplicate", "out_of_range"),
    ("na", "flights"): ("null", "duplicate", "malformed", "out_of_range", "invalid_value", "late_correction"),
    ("na", "bookings"): ("null", "duplicate", "out_of_range", "invalid_value", "late_correction"),
    ("na", "feedback"): ("null", "duplicate", "out_of_range"),
}


def pick(rng: np.random.Generator, n: int, rates: MessyRates, kinds: tuple[str, ...]) -> dict[str, np.ndarray]:
    """Disjoint, sorted index sets of base records per kind (exact counts)."""
    perm = rng.permutation(n)
    out: dict[str, np.ndarray] = {}
    at = 0
    for kind in kinds:
        k = int(round(getattr(rates, kind) * n))
        k = max(0, min(k, n - at))
        out[kind] = np.sort(perm[at: at + k])
        at += k
    return out
