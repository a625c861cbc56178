"""The hot loop of a usage query: every result row checked, de-duplicated and mapped to records in one pass.

A backfill of a large organisation is hundreds of thousands of rows a poll, and each must be validated (a
malformed response is rejected whole, naming the field), checked against the rows of its bucket (a repeated group
key would count twice) and mapped. Done field by field for every row, through the validating readers, that was
four fifths of a poll's CPU. Most rows belong to a group already seen in the same query (the same project, model,
batch, ... in another bucket), so the group's attributes are validated once, and each later row of the group needs
only: its grouped fields present and of a JSON kind a group value can have, its key new in its bucket, and its
counts plain integers in range (``Mapper.fast``). Any row that fails one of those quick checks, and the first row
of every group, goes through the reference mapping (``Mapper.row`` and ``RowKeys.row``), which accepts or rejects
it exactly as before and names the bad field.

Most buckets go faster still: when every count of a bucket is plainly valid and every row's group is valid (the
groups not seen yet are validated on the way, ``group_of``), the bucket is read whole (``UsageReader._columns``): its
envelope, keys and counts checked by C-level passes over the bucket (``set(map(type, ...))``, ``min``, ``max``,
``itemgetter``), its records' values computed column by column (``Mapper.columns``), and each row's values kept
with its group's others, to be handed over as ``UsageColumns`` blocks (``UsageReader.blocks``): no record object,
no Python code per field. A bucket that fails any of those checks is read row by row as above, from its first row,
so what is accepted, noted or rejected (and the message) is exactly what the row-by-row read gives. Measured on the
hourly backfill of ``benchmarks/openai_poll.py`` (169k API rows): 13.5 us an API row row by row, 3.8 read whole.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from itertools import chain, repeat
from operator import itemgetter
from typing import Any, cast

from ...errors import ResponseShapeError
from ...model import UsageColumns, UsageRecord
from .fields import mapping
from .keys import RowKeys, duplicate
from .normalize import PROVIDER, Group, Layout, Mapper, Notes, Row, group_of, tool_dims

#: The JSON kinds a group field may hold (``RowKeys.row``). Among them, equal values are the same value of the
#: same kind (``True == 1`` is excluded by excluding int), so a key equal to a validated one is valid too.
_GROUP_VALUE_TYPES = frozenset({str, bool, type(None)})
_DICTS = frozenset({dict})
_OBJECT = itemgetter("object")


class UsageReader:
    """The rows of one usage query (all its pages) -> records, for one usage type, group-by and bucket width."""

    def __init__(
        self, mapper: Mapper, result_object: str, grouped: Sequence[str], width: int, notes: Notes,
        tenant: str | None = None,
    ) -> None:
        self.mapper = mapper
        self.result_object = result_object
        self.grouped = tuple(grouped)
        self.group_set = frozenset(self.grouped)
        self.width = width
        self.notes = notes
        self.tenant = tenant
        self.keys = RowKeys(self.grouped)
        #: row -> the values of its grouped fields (its key in its bucket); KeyError when one is missing
        self._key_of = _getter(self.grouped)
        # A row's group is its key plus project_id, which is validated whether grouped or not.
        self._whole = "project_id" in self.group_set
        self._fields = self.grouped if self._whole else (*self.grouped, "project_id")
        #: (values of ``_fields``) -> the group of a row that was accepted whole by the reference mapping
        self._groups: dict[tuple[Any, ...], Group] = {}
        #: the same groups by number (``_numbers``: values of ``_fields`` -> number), for the bucket-wide read
        self._numbers: dict[tuple[Any, ...], int] = {}
        self._group_list: list[Group] = []
        self._fields_of = _getter(self._fields)
        #: rows read bucket-wide, per layout: their group numbers, bucket starts and output columns, bucket after
        #: bucket (``blocks`` sorts them into groups)
        self._rows: dict[Layout, tuple[list[int], list[int], list[list[int]]]] = {}

    def bucket(self, start: int, results: Sequence[Any], where: str, out: list[UsageRecord]) -> None:
        """Append the records of one bucket's ``results`` (JSON path ``where``) to ``out``; a repeated bucket, a
        repeated row key or any malformed row raises ``ResponseShapeError`` naming its path."""
        seen = self.keys.bucket(start, where)
        if self._columns(start, results, where):
            return
        expected, key_of, whole, groups = self.result_object, self._key_of, self._whole, self._groups
        fast, width, tenant = self.mapper.fast, self.width, self.tenant
        for j, row in enumerate(results):
            if type(row) is dict and row.get("object") == expected:
                try:
                    key = key_of(row)
                    group = groups.get(key if whole else (*key, row.get("project_id")))
                except (KeyError, TypeError):  # a grouped field missing, or unhashable: the reference names it
                    group = None
                if group is not None and set(map(type, key)) <= _GROUP_VALUE_TYPES:
                    records = fast(row, group, start, width, tenant)
                    if records is not None:
                        size = len(seen)
                        seen.add(key)
                        if len(seen) == size:
                            raise duplicate(self.grouped, row, f"{where}.results[{j}]")
                        out += records
                        continue
            self._reference(row, start, where, j, out)

    def _columns(self, start: int, results: Sequence[Any], where: str) -> bool:
        """Read a whole bucket column-wise, when every row is plainly valid (True); else return False, for the
        bucket to be read row by row, having changed nothing but remembered the valid groups of new rows."""
        n = len(results)
        if not n:
            return True
        try:
            if set(map(type, results)) != _DICTS or list(map(_OBJECT, results)).count(self.result_object) != n:
                return False
            keys = list(map(self._key_of, results))  # KeyError: a grouped field missing
            if len(set(keys)) != n:  # TypeError: an unhashable value; fewer: a repeated key
                return False
            values = keys if self._whole else list(map(self._fields_of, results))
            if not set(map(type, chain.from_iterable(values))) <= _GROUP_VALUE_TYPES:
                return False
            numbers = list(map(self._numbers.get, values))
        except (KeyError, TypeError):
            return False
        if None in numbers and not self._new_groups(start, results, where, values, numbers):
            return False
        mapped = self.mapper.columns(results)
        if mapped is None:
            return False
        layout, columns = mapped
        # The keys stay out of the bucket's ``RowKeys`` set: they were just found unique, and no other row is read
        # into this bucket (a repeated bucket is refused by ``RowKeys.bucket``); keeping them would only hold memory.
        rows = self._rows.get(layout)
        if rows is None:
            rows = self._rows[layout] = ([], [], [[] for _ in columns])
        rows[0].extend(cast(list[int], numbers))
        rows[1].extend(repeat(start, n))
        for found, column in zip(rows[2], columns, strict=True):
            found.extend(column)
        return True

    def _new_groups(
        self, start: int, results: Sequence[Any], where: str, values: list[tuple[Any, ...]],
        numbers: list[int | None],
    ) -> bool:
        """Validate and remember the groups of the rows of ``results`` whose group is new (their ``numbers``, None,
        are filled in); False when one is not valid (nothing else is changed: the rows are then read one by one,
        and the reference names the first bad field in the order it reads them).

        What the reference mapping validates of a new group's row is its group fields (``group_of``) and counts:
        the counts are checked with the others' (``Mapper.columns``), the group fields here.
        """
        for index, number in enumerate(numbers):
            if number is None:
                key = values[index]
                found = self._numbers.get(key)  # a group new in an earlier row of this bucket (not grouped by it)
                if found is None:
                    at = Row(start, self.width, self.group_set, where, index, self.tenant)
                    try:
                        group = group_of(results[index], at, self.notes)
                    except ResponseShapeError:
                        return False
                    self._groups[key] = group
                    found = self._numbers[key] = len(self._group_list)
                    self._group_list.append(group)
                numbers[index] = found
        return True

    def blocks(self) -> list[UsageColumns]:
        """The rows read bucket-wide so far, as ``UsageColumns`` (one block per group and part of its layout);
        the reader forgets them."""
        out: list[UsageColumns] = []
        width, tenant = self.width, self.tenant
        for layout, (numbers, all_starts, all_columns) in self._rows.items():
            # The rows in group order (a stable sort: bucket order within a group), every column moved alike
            # by one C-level ``itemgetter``; then each group's rows are one slice of each column.
            order = sorted(range(len(numbers)), key=numbers.__getitem__)
            take = itemgetter(*order) if len(order) > 1 else lambda column: (column[0],)
            by_group, ordered = take(all_starts), [take(column) for column in all_columns]
            low = 0
            for number, count in sorted(Counter(numbers).items()):
                group, high = self._group_list[number], low + count
                starts, columns, at = by_group[low:high], [column[low:high] for column in ordered], 0
                low = high
                for part in layout:
                    tokens = dict(zip(part.tokens, columns[at:at + len(part.tokens)], strict=True))
                    at += len(part.tokens)
                    requests = None
                    if part.requests:
                        requests, at = columns[at], at + 1
                    measures = dict(zip(part.measures, columns[at:at + len(part.measures)], strict=True))
                    at += len(part.measures)
                    dims = group.by_modality[part.modality] if part.modality else tool_dims(group, part.tool)
                    out.append(UsageColumns(PROVIDER, group.model, part.operation, group.tenancy, width, starts,
                                            tokens, requests, tenant, dims, measures, part.sparse))
        self._rows = {}
        return out

    def _reference(self, row: Any, start: int, where: str, index: int, out: list[UsageRecord]) -> None:
        """One row through the validating mapping; an accepted row's group is remembered for the fast path."""
        at = Row(start, self.width, self.group_set, where, index, self.tenant)
        if type(row) is not dict or row.get("object") != self.result_object:
            found = mapping(row, at.path).get("object")
            raise ResponseShapeError(f"{at.path}.object: expected {self.result_object!r}, got {found!r}")
        out += self.mapper.row(row, at, self.notes)
        self.keys.row(start, row, at.path)
        values = tuple(map(row.get, self._fields))
        if set(map(type, values)) <= _GROUP_VALUE_TYPES and values not in self._groups:
            self._groups[values] = group = group_of(row, at, self.notes)
            self._numbers[values] = len(self._group_list)
            self._group_list.append(group)


def _getter(fields: tuple[str, ...]) -> Callable[[Mapping[str, Any]], tuple[Any, ...]]:
    """``row -> tuple(row[f] for f in fields)`` in one C call (``itemgetter``), a tuple whatever the count."""
    if len(fields) >= 2:
        return itemgetter(*fields)
    if len(fields) == 1:
        only = fields[0]
        return lambda row: (row[only],)
    return lambda row: ()
