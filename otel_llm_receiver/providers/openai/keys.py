"""What makes an OpenAI usage or cost row unique, and the check that no response repeats one.

A row is identified by its bucket (``start_time``) and the value of every field the request grouped by
(``group_by``): the API reports one row per group and bucket, and documents no case where repeated keys are to be
summed. So a bucket that comes twice (on one page or across pages) or a row whose key repeats inside a bucket
would be counted twice, and a row that lacks a grouped field would be counted under a key that changes once the
field comes back: both are malformed responses, rejected whole (nothing reaches the ledger).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from ...errors import ResponseShapeError


class RowKeys:
    """The keys seen so far in one query's response (all its pages): bucket starts and, per bucket, the group keys
    of its rows (the values of the grouped fields, in ``grouped`` order)."""

    def __init__(self, grouped: Iterable[str]) -> None:
        self.grouped = tuple(grouped)
        self._rows: dict[int, set[tuple[Any, ...]]] = {}

    def bucket(self, start: int, path: str) -> set[tuple[Any, ...]]:
        """Reject a bucket whose start was already seen in this response; the set its rows' keys go into.

        A caller that checks a row's grouped fields itself (``reader.UsageReader``) adds the row's key to this set
        directly: ``row`` below and such callers share one set per bucket, so a repeat is caught either way.
        """
        if start in self._rows:
            raise ResponseShapeError(
                f"{path}.start_time: bucket {start} appears twice in the response (would count twice)")
        seen: set[tuple[Any, ...]] = set()
        self._rows[start] = seen
        return seen

    def row(self, start: int, row: Mapping[str, Any], path: str) -> None:
        """Reject a row lacking a grouped field, or repeating the key of an earlier row of its bucket.

        A grouped value must be a string, a bool (``batch``) or null: the spec documents null for several group
        fields, so a present null is a legitimate value; a missing key is not.
        """
        missing = [g for g in self.grouped if g not in row]
        if missing:
            raise ResponseShapeError(f"{path}: grouped by {', '.join(missing)} but the row has no such field")
        wrong = [g for g in self.grouped if row[g] is not None and not isinstance(row[g], str | bool)]
        if wrong:  # a field not otherwise read (e.g. the cost report's description) is still part of the key
            kind = type(row[wrong[0]]).__name__
            raise ResponseShapeError(f"{path}.{wrong[0]}: expected a string, boolean or null, got {kind}")
        key = tuple([row[g] for g in self.grouped])
        seen = self._rows.setdefault(start, set())
        if key in seen:
            raise duplicate(self.grouped, row, path)
        seen.add(key)


def duplicate(grouped: tuple[str, ...], row: Mapping[str, Any], path: str) -> ResponseShapeError:
    """The error for a row whose group key an earlier row of its bucket already had."""
    shown = ", ".join(f"{g}={row[g]!r}" for g in grouped)
    return ResponseShapeError(f"{path}: a second row for the same group ({shown}) in one bucket (would count twice)")
