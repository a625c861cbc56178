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

Most buckets go faster still: when every row of a bucket belongs to a group already seen, and every count in it is
plainly valid, the bucket is read whole (``UsageReader._columns``): its envelope, keys and counts checked by C-level
passes over the bucket (``set(map(type, ...))``, ``min``, ``max``, ``itemgetter``), its records' values computed
column by column (``Mapper.columns``), and each row's values kept with its group's others, to be handed over as
``UsageColumns`` blocks (``UsageReader.blocks``): no record object, no Python code per field. A bucket that fails
any of those checks is read row by row as above, from its first row, so what is accepted, noted or rejected (and the
message) is exactly what the row-by-row read gives.
"""

from __future__ import annotations

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
        #: rows read bucket-wide, per layout and group number: (bucket start, *output values) each
        self._rows: dict[Layout, dict[int, list[tuple[int, ...]]]] = {}

    def bucket(self, start: int, results: Sequence[Any], where: str, out: list[UsageRecord]) -> None:
        """Append the records of one bucket's ``results`` (JSON path ``where``) to ``out``; a repeated bucket, a
        repeated row key or any malformed row raises ``ResponseShapeError`` naming its path."""
        seen = self.keys.bucket(start, where)
        if self._columns(start, results, seen):
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

    def _columns(self, start: int, results: Sequence[Any], seen: set[tuple[Any, ...]]) -> bool:
        """Read a whole bucket column-wise, when every row is of a known group and plainly valid (True); else
        change nothing and return False, for the bucket to be read row by row."""
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
        if None in numbers:  # a group not seen yet: its first row goes through the reference mapping
            return False
        mapped = self.mapper.columns(results)
        if mapped is None:
            return False
        layout, columns = mapped
        seen.update(keys)
        by_group = self._rows.get(layout)
        if by_group is None:
            by_group = self._rows[layout] = {}
        for number, row in zip(cast(list[int], numbers), zip(repeat(start), *columns), strict=False):
            found = by_group.get(number)
            if found is None:
                by_group[number] = [row]
            else:
                found.append(row)
        return True

    def blocks(self) -> list[UsageColumns]:
        """The rows read bucket-wide so far, as ``UsageColumns`` (one block per group and part of its layout);
        the reader forgets them."""
        out: list[UsageColumns] = []
        width, tenant = self.width, self.tenant
        for layout, by_group in self._rows.items():
            for number, rows in by_group.items():
                group = self._group_list[number]
                columns = list(zip(*rows, strict=True))
                starts, at = columns[0], 1
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
