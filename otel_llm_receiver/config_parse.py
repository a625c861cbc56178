"""Config parsing primitives: typed field readers that collect every problem with its key path.

The lowest layer of the configuration, above the model only: ``Parser`` substitutes ``${env:...}`` /
``${file:...}`` in string scalars and reads one value of a given kind (text, integer, boolean, duration,
list, map, file path, a provider ``Option``), recording ``path: message`` problems instead of raising, so
``check`` can list them all at once. ``config.py`` (the top-level sections), ``signals_config.py``,
``focus_config.py`` and the providers' option declarations build on it; it imports nothing from the runtime
(no ledger, pricing or provider registry), so parsing a config stays cheap and free of SQLite.
"""

from __future__ import annotations

import datetime
import difflib
import json
import os
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Literal, get_args

from otel_llm_receiver.durations import DURATION_HINT, format_duration, parse_duration

__all__ = [
    "HINT_CUTOFF",
    "INSTANCE_NAME",
    "INVALID",
    "MAX_DURATION",
    "MAX_INT",
    "MAX_TEXT",
    "MAX_TIMEOUT",
    "REDACTED",
    "Invalid",
    "Option",
    "OptionKind",
    "Parser",
    "Secret",
    "Substituted",
    "is_hidden",
    "join_path",
    "kind_of",
    "option_default",
    "quoted",
    "show_value",
    "split_host_port",
    "unknown_key_message",
    "url_problem",
]

OptionKind = Literal["str", "int", "bool", "duration", "list[str]", "map[str,str]", "secret"]
_OPTION_KINDS: frozenset[str] = frozenset(get_args(OptionKind))

_HOST = re.compile(r"\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+")
_PORT = re.compile(r"[0-9]{1,5}")
_ENV_REFERENCE = re.compile(r"(?:env:)?([A-Za-z_][A-Za-z0-9_]*)(?::-(.*))?", re.DOTALL)
_SCHEME_REFERENCE = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*):(.*)", re.DOTALL)
_TRUE = frozenset({"true", "yes", "on", "1"})
_FALSE = frozenset({"false", "no", "off", "0"})

REDACTED = "<redacted>"
HINT_CUTOFF = 0.7  # difflib similarity above which "did you mean" names the close key

# Limits (docs/configuration.md, "Limits"): every number and string a config can hold is bounded, so that a
# typo or a hostile file is refused by `check` instead of overflowing a timer, a counter or memory later.
MAX_INT = 2**31 - 1
MAX_DURATION = 3650 * 86_400.0  # any duration option without its own maximum
MAX_TEXT = 64 * 1024  # any string, after substitution; also the most read from one ${file:...}
_MAX_DURATION_CHARS = 64
MAX_TIMEOUT = 3_600.0  # a provider or exporter timeout
#: An instance name: the NAME of ``TYPE/NAME`` in ``providers:`` and ``exporters:``.
INSTANCE_NAME = re.compile(r"[A-Za-z0-9_.-]+")
_MAX_QUOTED = 100  # a value quoted in a problem is cut here: a problem is one readable line


class Secret(str):
    """A string whose value must not be shown: ``repr()`` gives ``<redacted>``; ``str()`` and use give the value.

    Config values that are secrets (secret options, exporter header values, anything from ``${file:...}``)
    are ``Secret`` instances, so that the ``repr()`` of any config object is safe to log.
    """

    __slots__ = ()

    def __repr__(self) -> str:
        return REDACTED


@dataclass(frozen=True)
class Option:
    """The schema of one provider-specific option (the keys of a provider section besides the common ones).

    ``kind`` says how the YAML value is read: ``duration`` into float seconds, ``list[str]`` into a tuple,
    ``map[str,str]`` into a read-only mapping, ``secret`` into a ``Secret`` string. ``default`` is used when
    the key is absent or null (a ``duration`` default may be seconds or a string such as ``"24h"``);
    ``choices`` restricts a ``str`` or each item of a ``list[str]``.
    """

    kind: OptionKind
    default: Any = None
    required: bool = False
    choices: tuple[str, ...] | None = None
    description: str = ""
    #: Bounds of an ``int`` (a number) or ``duration`` (seconds or a string such as ``"24h"``) option; unset:
    #: ``int`` 0 .. 2^31-1, ``duration`` 0 .. 3650d (docs/configuration.md, "Limits").
    minimum: float | str | None = None
    maximum: float | str | None = None

    def __post_init__(self) -> None:
        if self.kind not in _OPTION_KINDS:
            raise ValueError(f"unknown option kind {self.kind!r} (valid: {', '.join(sorted(_OPTION_KINDS))})")
        if self.choices is not None:
            if self.kind not in ("str", "list[str]"):
                raise ValueError(f"choices only apply to str and list[str] options, not {self.kind}")
            object.__setattr__(self, "choices", tuple(self.choices))
        if (self.minimum is not None or self.maximum is not None) and self.kind not in ("int", "duration"):
            raise ValueError(f"minimum/maximum only apply to int and duration options, not {self.kind}")

    def bounds(self) -> tuple[float, float]:
        """The option's (minimum, maximum): an ``int`` count, or ``duration`` seconds."""
        low, high = (0.0, float(MAX_INT)) if self.kind == "int" else (0.0, MAX_DURATION)

        def seconds(value: float | str | None, fallback: float) -> float:
            if value is None:
                return fallback
            return parse_duration(value) if isinstance(value, str) else float(value)

        return seconds(self.minimum, low), seconds(self.maximum, high)





def option_default(option: Option) -> Any:
    """The value an absent or null option takes: its ``default`` read as its kind (``"24h"`` -> seconds)."""
    default = option.default
    if default is None:
        return None
    if option.kind == "duration" and isinstance(default, str):
        return parse_duration(default)
    if option.kind == "duration" and isinstance(default, int | float):
        return float(default)
    if option.kind == "list[str]":
        return tuple(default)
    if option.kind == "map[str,str]":
        return MappingProxyType(dict(default))
    if option.kind == "secret":
        return Secret(default)
    return default


class Invalid:
    """Marks a value that already produced a problem, so nothing downstream reports it again."""

    def __repr__(self) -> str:
        return "<invalid>"


INVALID = Invalid()


class Substituted(str):
    """A string scalar that went through ``${...}`` substitution (as opposed to a literal in the file)."""

    pieces: tuple[str, ...]  # the substituted values, each one a secret when the whole is
    from_file: bool
    from_env: bool

    def __new__(cls, value: str, pieces: tuple[str, ...], from_file: bool, from_env: bool = False) -> Substituted:
        obj = super().__new__(cls, value)
        obj.pieces = pieces
        obj.from_file = from_file
        obj.from_env = from_env
        return obj


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def join_path(path: str, key: object) -> str:
    return f"{path}.{key}" if path else str(key)


def quoted(value: str) -> str:
    if len(value) > _MAX_QUOTED:
        return json.dumps(value[:_MAX_QUOTED], ensure_ascii=False)[:-1] + '..." (' + f"{len(value)} characters)"
    return json.dumps(value, ensure_ascii=False)


def kind_of(value: object) -> str:
    """The YAML-ish kind of a value, with its article, for messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, datetime.date):
        return "a date"
    return f"a {type(value).__name__}"


def is_hidden(value: object) -> bool:
    """Whether a value must not be quoted in a message: it came from a file or the environment, so it may be a
    secret (an admin key put under the wrong key is still an admin key)."""
    return isinstance(value, Secret) or (isinstance(value, Substituted) and (value.from_file or value.from_env))


def show_value(value: str) -> str:
    if not is_hidden(value):
        return quoted(value)
    if isinstance(value, Substituted) and not value.from_file:
        return "the value substituted from ${env:...} (not shown)"
    return "the value read from ${file:...} (not shown)"


def unknown_key_message(key: str, valid: Iterable[str], collector_only: frozenset[str] = frozenset()) -> str:
    if key in collector_only:
        return "unknown key: a Collector option this receiver does not support"
    choices = sorted(valid)
    close = difflib.get_close_matches(key, choices, n=1, cutoff=HINT_CUTOFF)
    if close:
        return f"unknown key (did you mean {close[0]}?)"
    return f"unknown key (valid keys: {', '.join(choices)})" if choices else "unknown key"


def split_host_port(text: str) -> tuple[str, int] | None:
    host, sep, port = text.rpartition(":")
    if not sep or not _PORT.fullmatch(port) or int(port) > 65535:
        return None
    if host and not _HOST.fullmatch(host):
        return None
    return host, int(port)


def url_problem(text: str, *, require_port: bool, allow_path: bool) -> bool:
    """True when ``text`` is not an ``http(s)://host[:port][/path]`` URL of the required shape."""
    from urllib.parse import urlsplit

    try:
        url = urlsplit(text)
        port = url.port
    except ValueError:
        return True
    if url.scheme not in ("http", "https") or not url.hostname or url.query or url.fragment:
        return True
    if require_port and port is None:
        return True
    return not allow_path and url.path not in ("", "/")


class Parser:
    """Reads typed values out of a parsed YAML document, recording each problem under its key path.

    Each reader returns the value, or ``INVALID`` after recording a problem (so nothing downstream reports it
    again); ``problems`` and ``warnings`` are ``path: message`` lines in the order met. ``base_dir`` is where
    relative ``${file:...}`` and file paths are read from.
    """

    def __init__(self, *, base_dir: str = ".", environ: Mapping[str, str] | None = None) -> None:
        self.base_dir = base_dir
        self.environ: Mapping[str, str] = os.environ if environ is None else environ
        self.problems: list[str] = []
        self.warnings: list[str] = []
        self.secrets: set[str] = set()
        #: every value ${env:...} or ${file:...} produced: redacted from logs (they may be credentials)
        self.substituted: set[str] = set()

    # -- reporting ---------------------------------------------------------------------------------------------

    def problem(self, path: str, message: str) -> Invalid:
        """Record one problem at ``path`` (the top level when empty); returns ``INVALID`` to pass on."""
        self.problems.append(f"{path or '(top level)'}: {message}")
        return INVALID

    def warn(self, path: str, message: str) -> None:
        self.warnings.append(f"{path}: {message}")

    def secret(self, value: str) -> Secret:
        """Record a secret value (and every piece substituted into it) and return it as a ``Secret``."""
        for piece in (value, *getattr(value, "pieces", ())):
            if piece:
                self.secrets.add(str(piece))
        return Secret(value)

    # -- substitution ------------------------------------------------------------------------------------------

    def substitute(self, value: Any, path: str) -> Any:
        """Resolve ``${...}`` and ``$$`` in a string scalar; other values pass through unchanged."""
        if not isinstance(value, str) or "$" not in value:
            return value
        out: list[str] = []
        pieces: list[str] = []
        from_file = from_env = False
        substituted = False
        failed = False
        i = 0
        while i < len(value):
            char = value[i]
            if char != "$" or i + 1 == len(value) or value[i + 1] not in "${":
                out.append(char)
                i += 1
                continue
            if value[i + 1] == "$":
                out.append("$")
                substituted = True
                i += 2
                continue
            end = value.find("}", i + 2)
            if end < 0:
                # The value is not quoted: it may be a literal secret that happens to contain "${".
                self.problem(path, "unterminated ${ (write $$ for a literal $)")
                return INVALID
            reference = value[i + 2 : end]
            i = end + 1
            substituted = True
            resolved = self._resolve_reference(reference, path)
            if resolved is None:
                failed = True
                continue
            text, is_file = resolved
            out.append(text)
            pieces.append(text)
            if text:
                self.substituted.add(text)
            if is_file:
                from_file = True
                if text:
                    self.secrets.add(text)
            else:
                from_env = True
        if failed:
            return INVALID
        if not substituted:
            return value
        result = Substituted("".join(out), tuple(pieces), from_file, from_env)
        if from_file and result:
            self.secrets.add(str(result))
        return result

    def _resolve_reference(self, reference: str, path: str) -> tuple[str, bool] | None:
        env = None if reference.startswith("file:") else _ENV_REFERENCE.fullmatch(reference)
        if env is not None:
            name, default = env.group(1), env.group(2)
            if name in self.environ:
                return self.environ[name], False
            if default is not None:
                return default, False
            self.problem(path, f"environment variable {name} is not set")
            return None
        scheme = _SCHEME_REFERENCE.fullmatch(reference)
        if scheme is not None and scheme.group(1) == "file":
            content = self._read_file(scheme.group(2), path)
            return None if content is None else (content, True)
        if scheme is not None and scheme.group(1) == "env":
            self.problem(path, f"${{{reference}}}: not a valid environment variable name")
            return None
        if scheme is not None:
            self.problem(
                path, f"${{{reference}}}: unsupported substitution {scheme.group(1)!r} (use env or file)"
            )
            return None
        self.problem(
            path, f"${{{reference}}} is not a substitution (use ${{env:NAME}}, ${{file:PATH}}, or $$ for $)"
        )
        return None

    def _read_file(self, name: str, path: str) -> str | None:
        if not name.strip():
            self.problem(path, "${file:} needs a path")
            return None
        full = self.resolve_path(name)
        try:
            with open(full, "rb") as f:
                data = f.read(MAX_TEXT + 1)
            if len(data) > MAX_TEXT:
                self.problem(path, f"file {full} is larger than {MAX_TEXT // 1024} KiB")
                return None
            return data.decode("utf-8").rstrip("\r\n")
        except OSError as e:
            self.problem(path, f"cannot read file {full}: {e.strerror or e}")
        except UnicodeDecodeError:
            self.problem(path, f"cannot read file {full}: not UTF-8 text")
        return None

    def resolve_path(self, name: str) -> str:
        expanded = os.path.expanduser(name.strip())
        return os.path.normpath(os.path.join(self.base_dir, expanded))

    # -- scalars -----------------------------------------------------------------------------------------------

    def text(
        self,
        raw: Any,
        path: str,
        *,
        secret: bool = False,
        nonempty: bool = False,
        choices: tuple[str, ...] | None = None,
        coerce: bool = False,
        max_length: int = MAX_TEXT,
    ) -> str | Invalid:
        """A string (integers are accepted as their digits; with ``coerce`` numbers and booleans too)."""
        value = self.substitute(raw, path)
        if isinstance(value, Invalid):
            return value
        if isinstance(value, bool):
            if not coerce:
                return self.problem(path, f"must be a string, got {kind_of(value)} (quote it)")
            value = "true" if value else "false"
        elif isinstance(value, int | float) and not isinstance(value, bool):
            if isinstance(value, float) and not coerce:
                return self.problem(path, f"must be a string, got {kind_of(value)} (quote it)")
            value = str(value)
        elif not isinstance(value, str):
            return self.problem(path, f"must be a string, got {kind_of(value)}")
        if len(value) > max_length:
            return self.problem(path, f"is longer than {max_length} characters")
        if nonempty and not value.strip():
            return self.problem(path, "must not be empty")
        if choices is not None and value not in choices:
            close = difflib.get_close_matches(value, choices, n=1, cutoff=HINT_CUTOFF)
            hint = f"; did you mean {close[0]}?" if close and not is_hidden(value) else ""
            return self.problem(path, f"{show_value(value)} is not one of {', '.join(choices)}{hint}")
        if secret:
            if not isinstance(value, Substituted):
                self.warn(
                    path, "secret written literally in the config file; prefer ${env:NAME} or ${file:PATH}"
                )
            return self.secret(value)
        if is_hidden(value):
            return Secret(value)
        return str(value)

    def integer(
        self, raw: Any, path: str, *, minimum: float = 0, maximum: float = MAX_INT
    ) -> int | Invalid:
        value = self.substitute(raw, path)
        if isinstance(value, Invalid):
            return value
        if isinstance(value, Substituted):
            number = int(value.strip()) if re.fullmatch(r"\s*[+-]?[0-9]{1,40}\s*", value) else None
            if number is None:
                return self.problem(path, f"{show_value(value)} is not an integer")
            value = number
        if isinstance(value, int) and not isinstance(value, bool):
            if not minimum <= value <= maximum:
                return self.problem(path, f"must be between {_number(minimum)} and {_number(maximum)}")
            return value
        hint = (
            " (remove the quotes)"
            if isinstance(value, str) and re.fullmatch(r"\s*-?[0-9]+\s*", value)
            else ""
        )
        return self.problem(path, f"must be an integer, got {kind_of(value)}{hint}")

    def boolean(self, raw: Any, path: str) -> bool | Invalid:
        value = self.substitute(raw, path)
        if isinstance(value, Invalid):
            return value
        if isinstance(value, bool):
            return value
        if isinstance(value, Substituted):
            word = value.strip().lower()
            if word in _TRUE:
                return True
            if word in _FALSE:
                return False
            return self.problem(path, f"{show_value(value)} is not a boolean (use true or false)")
        hint = (
            " (remove the quotes)"
            if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE
            else ""
        )
        return self.problem(path, f"must be true or false, got {kind_of(value)}{hint}")

    def duration(
        self, raw: Any, path: str, *, positive: bool = False, minimum: float = 0.0, maximum: float = MAX_DURATION
    ) -> float | Invalid:
        value = self.substitute(raw, path)
        if isinstance(value, Invalid):
            return value
        if not isinstance(value, str | int | float) or isinstance(value, bool):
            return self.problem(path, f"must be a duration such as 30s, got {kind_of(value)}")
        if isinstance(value, str) and len(value) > _MAX_DURATION_CHARS:
            return self.problem(path, f"is not a duration {DURATION_HINT}")
        try:
            seconds = parse_duration(value)
        except (ValueError, OverflowError) as e:
            if isinstance(value, str) and is_hidden(value):
                return self.problem(path, f"{show_value(value)} is not a duration {DURATION_HINT}")
            return self.problem(path, str(e))
        if positive and seconds <= 0:
            return self.problem(path, "must be greater than 0")
        if not minimum <= seconds <= maximum:
            return self.problem(
                path, f"must be between {format_duration(minimum)} and {format_duration(maximum)}"
            )
        return seconds

    def string_list(
        self, raw: Any, path: str, *, choices: tuple[str, ...] | None = None
    ) -> tuple[str, ...] | Invalid:
        if not isinstance(raw, list):
            return self.problem(path, f"must be a list of strings, got {kind_of(raw)}")
        items: list[str] = []
        ok = True
        for index, item in enumerate(raw):
            value = self.text(item, f"{path}[{index}]", choices=choices, nonempty=True)
            if isinstance(value, Invalid):
                ok = False
            else:
                items.append(value)
        return tuple(items) if ok else INVALID

    def string_map(
        self,
        raw: Any,
        path: str,
        *,
        key_check: Callable[[str, str], bool] | None = None,
        secret: bool = False,
        max_length: int = MAX_TEXT,
    ) -> dict[str, str] | Invalid:
        """A mapping of strings to strings; numbers and booleans are coerced (except secret values)."""
        mapping = self.mapping(raw, path)
        if mapping is None:
            return INVALID
        out: dict[str, str] = {}
        ok = True
        for key, item in mapping.items():
            item_path = join_path(path, key)
            if key_check is not None and not key_check(key, item_path):
                ok = False
                continue
            if item is None:
                self.problem(item_path, "must be a string, got null")
                ok = False
                continue
            if secret:
                value = self.substitute(item, item_path)
                if isinstance(value, Invalid):
                    ok = False
                    continue
                if isinstance(value, int) and not isinstance(value, bool):
                    value = str(value)
                if not isinstance(value, str):
                    self.problem(item_path, f"must be a string, got {kind_of(value)}")
                    ok = False
                    continue
                if len(value) > max_length:
                    self.problem(item_path, f"is longer than {max_length} characters")
                    ok = False
                    continue
                out[key] = self.secret(value)
            else:
                text = self.text(item, item_path, coerce=True, max_length=max_length)
                if isinstance(text, Invalid):
                    ok = False
                else:
                    out[key] = text
        return out if ok else INVALID

    def mapping(self, raw: Any, path: str) -> dict[str, Any] | None:
        """A mapping with string keys (null is an empty mapping); None after reporting a problem."""
        if raw is None:
            return {}
        if not isinstance(raw, dict):
            self.problem(path, f"must be a mapping, got {kind_of(raw)}")
            return None
        out: dict[str, Any] = {}
        for key, value in raw.items():
            if not isinstance(key, str):
                shown = json.dumps(key) if isinstance(key, bool | int | float) or key is None else repr(key)
                self.problem(path, f"key {shown} must be a string (quote it)")
                continue
            out[key] = value
        return out

    def file_path(self, raw: Any, path: str) -> str | Invalid | None:
        if raw is None:
            return None
        name = self.text(raw, path, nonempty=True)
        if isinstance(name, Invalid):
            return INVALID
        full = self.resolve_path(name)
        if not os.path.isfile(full):
            where = "" if full == name else f" (looked for {full})"
            return self.problem(path, f"file {show_value(name)} does not exist{where}")
        return full

    def option(self, raw: Any, path: str, option: Option) -> Any:
        """One provider option's value, read as its ``Option`` schema says."""
        kind = option.kind
        if kind == "str":
            return self.text(raw, path, choices=option.choices)
        if kind == "secret":
            return self.text(raw, path, secret=True, nonempty=True)
        if kind == "int":
            low, high = option.bounds()
            return self.integer(raw, path, minimum=low, maximum=high)
        if kind == "bool":
            return self.boolean(raw, path)
        if kind == "duration":
            low, high = option.bounds()
            return self.duration(raw, path, minimum=low, maximum=high)
        if kind == "list[str]":
            return self.string_list(raw, path, choices=option.choices)
        value = self.string_map(raw, path)
        return INVALID if isinstance(value, Invalid) else MappingProxyType(value)
