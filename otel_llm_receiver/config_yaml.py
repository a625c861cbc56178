"""A bounded YAML loader for the config file: hostile input fails fast, in one line that names the key path.

PyYAML's ``SafeLoader`` is safe from code execution but not from resource exhaustion: a 2,000-deep nesting
overflows the recursion limit, a "billion laughs" document (aliases of aliases) is cheap to parse but
expands exponentially in every walk over the tree, a 60 MiB file takes over a minute, a 5,000-digit integer
raises ``ValueError`` deep in the constructor, and an invalid date-like scalar (``2026-02-30``) raises from
the timestamp constructor. This module bounds each of these before any value is built:

* the file: at most ``MAX_FILE_BYTES``, UTF-8;
* nesting: at most ``MAX_DEPTH`` levels, counted while composing (before recursion can overflow);
* aliases: at most ``MAX_ALIASES`` references, and the tree they expand to at most ``MAX_NODES`` nodes and
  ``MAX_DEPTH`` levels (computed once per node, so the check itself is linear); recursive aliases are refused;
* numbers: integer scalars of at most ``MAX_NUMBER_CHARS`` characters;
* timestamps: never constructed; a date-like scalar stays a string (a config has no date-valued keys).

Every problem is a ``ConfigError`` line ``PATH: message (line N)``; nothing from the file is quoted in it.
"""

from __future__ import annotations

import os
from typing import Any, cast

import yaml

from otel_llm_receiver.errors import ConfigError

__all__ = ["MAX_ALIASES", "MAX_DEPTH", "MAX_FILE_BYTES", "MAX_NODES", "MAX_NUMBER_CHARS", "compose_config"]

#: Largest config file read (a real config is a few KiB; the biggest example is under 4 KiB).
MAX_FILE_BYTES = 256 * 1024
#: Deepest nesting of mappings and sequences, also after alias expansion.
MAX_DEPTH = 64
#: Most alias references (``*name``) in one file.
MAX_ALIASES = 1000
#: Most nodes the document may expand to once aliases are followed.
MAX_NODES = 10_000
#: Longest integer or float scalar (no option needs more than a few digits; int() of 4,300+ digits raises).
MAX_NUMBER_CHARS = 40

_INT_TAG = "tag:yaml.org,2002:int"
_FLOAT_TAG = "tag:yaml.org,2002:float"
_TIMESTAMP_TAG = "tag:yaml.org,2002:timestamp"


class _LimitError(Exception):
    def __init__(self, path: str, message: str, mark: yaml.Mark | None) -> None:
        where = f" (line {mark.line + 1})" if mark is not None else ""
        super().__init__(f"{path or '(top level)'}: {message}{where}")


def _segment(parent: yaml.Node | None, index: Any) -> str | None:
    if parent is None:
        return None
    if isinstance(parent, yaml.SequenceNode) and isinstance(index, int):
        return f"[{index}]"
    if index is None:
        return "(key)"
    if isinstance(index, yaml.ScalarNode):
        return str(index.value)[:80]
    return None


def _join(path: str, segment: str) -> str:
    if segment.startswith("["):
        return path + segment
    return f"{path}.{segment}" if path else segment


class _BoundedLoader(yaml.SafeLoader):
    """``SafeLoader`` without timestamps, with depth and alias counts checked while composing."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._path: list[str] = []
        self._aliases = 0

    def _here(self) -> str:
        path = ""
        for segment in self._path:
            path = _join(path, segment)
        return path

    def _mark(self) -> yaml.Mark | None:
        event: yaml.Event = self.peek_event()  # type: ignore[no-untyped-call]
        return cast("yaml.Mark | None", event.start_mark)

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        segment = _segment(parent, index)
        if segment is not None:
            self._path.append(segment)
        try:
            if self.check_event(yaml.AliasEvent):
                self._aliases += 1
                if self._aliases > MAX_ALIASES:
                    raise _LimitError(self._here(), f"more than {MAX_ALIASES} aliases", self._mark())
            elif len(self._path) > MAX_DEPTH:
                raise _LimitError(
                    self._here(), f"nested deeper than {MAX_DEPTH} levels", self._mark()
                )
            return super().compose_node(parent, index)
        finally:
            if segment is not None:
                self._path.pop()


# Timestamps are never constructed: a date-like scalar resolves as a plain string.
_BoundedLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != _TIMESTAMP_TAG]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


class _Measure:
    """Expanded size and depth of every node, each computed once (aliases share their anchor's node)."""

    def __init__(self) -> None:
        self.size: dict[int, int] = {}
        self.depth: dict[int, int] = {}
        self.open: set[int] = set()

    def visit(self, node: yaml.Node, path: str) -> None:
        key = id(node)
        if key in self.size:
            return
        if key in self.open:
            raise _LimitError(path, "a recursive alias (a node that contains itself)", node.start_mark)
        self.open.add(key)
        size, depth = 1, 1
        if isinstance(node, yaml.ScalarNode):
            if node.tag in (_INT_TAG, _FLOAT_TAG) and len(node.value) > MAX_NUMBER_CHARS:
                raise _LimitError(path, f"a number longer than {MAX_NUMBER_CHARS} characters", node.start_mark)
        else:
            children: list[tuple[str, yaml.Node]] = []
            if isinstance(node, yaml.SequenceNode):
                children = [(f"{path}[{i}]", child) for i, child in enumerate(node.value)]
            elif isinstance(node, yaml.MappingNode):
                for k, v in node.value:
                    name = str(k.value)[:80] if isinstance(k, yaml.ScalarNode) else "(key)"
                    children += [(path, k), (_join(path, name), v)]
            for child_path, child in children:
                self.visit(child, child_path)
                size += self.size[id(child)]
                depth = max(depth, self.depth[id(child)] + 1)
                if size > MAX_NODES:
                    raise _LimitError(
                        child_path, f"aliases expand the document beyond {MAX_NODES} nodes", child.start_mark
                    )
                if depth > MAX_DEPTH:
                    raise _LimitError(
                        child_path, f"aliases nest the document deeper than {MAX_DEPTH} levels", child.start_mark
                    )
        self.open.discard(key)
        self.size[key], self.depth[key] = size, depth


def _flow_too_deep(text: str) -> int | None:
    """The offset of the first ``[`` or ``{`` past ``MAX_DEPTH`` open brackets, counting crudely (quotes and
    comments are not skipped, so this may over-count but only triggers the cheap truncated attempt)."""
    depth = 0
    for offset, char in enumerate(text):
        if char in "[{":
            depth += 1
            if depth > MAX_DEPTH:
                return offset
        elif char in "]}" and depth:
            depth -= 1
    return None


def read_config_text(path: str | os.PathLike[str]) -> str:
    """The config file's text: at most ``MAX_FILE_BYTES``, UTF-8; ``ConfigError`` otherwise."""
    shown = os.fspath(path)
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_FILE_BYTES + 1)
    except OSError as e:
        raise ConfigError([f"{shown}: cannot read the config file: {e.strerror or e}"]) from None
    if len(data) > MAX_FILE_BYTES:
        raise ConfigError([f"{shown}: the config file is larger than {MAX_FILE_BYTES // 1024} KiB"])
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError([f"{shown}: the config file is not UTF-8 text (byte {e.start})"]) from None


def compose_config(text: str, shown: str) -> tuple[yaml.Node | None, Any]:
    """Parse ``text`` into its node tree and its Python value, within the limits above.

    Only positions and the parser's own problem are reported: a PyYAML exception's text quotes the offending
    line, which may hold a secret.
    """
    deep = _flow_too_deep(text)
    if deep is not None:
        # PyYAML's scanner is quadratic in flow nesting ([[[[...): compose only the text up to the bracket that
        # goes too deep, which reports the depth limit with its key path in milliseconds.
        try:
            _compose(text[: deep + 1], shown)
        except ConfigError as e:
            if "nested deeper than" in str(e):
                raise
    return _compose(text, shown)


def _compose(text: str, shown: str) -> tuple[yaml.Node | None, Any]:
    loader: _BoundedLoader | None = None
    try:
        loader = _BoundedLoader(text)  # the reader refuses control characters here already
        node = loader.get_single_node()
        if node is None:
            return None, None
        _Measure().visit(node, "")
        return node, loader.construct_document(node)
    except _LimitError as e:
        raise ConfigError([str(e)]) from None
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        what = e.problem or e.context or "syntax error"
        raise ConfigError([f"{shown}: invalid YAML{where}: {what}"]) from None
    except yaml.reader.ReaderError as e:
        raise ConfigError([f"{shown}: invalid YAML: a control character at position {e.position}"]) from None
    except yaml.YAMLError:
        raise ConfigError([f"{shown}: invalid YAML"]) from None
    except (ValueError, OverflowError, RecursionError) as e:
        raise ConfigError([f"{shown}: invalid YAML value ({type(e).__name__})"]) from None
    finally:
        if loader is not None:
            loader.dispose()
