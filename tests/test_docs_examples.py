"""Every receiver config and every command line the docs show works as shown (issue 18, point 5).

The configs and commands in README.md, docs/, examples/ and deploy/ are what a new user copies first, so each is
checked with the real code: each receiver config goes through ``otel-llm-receiver check`` in-process (``${env:...}``
variables get test values, ``${file:...}`` a temporary file), and each ``otel-llm-receiver ...`` line through the
CLI's own argument parser. A block that shows one section of a config (``budgets:`` alone, say) is checked on top of
a minimal config with the demo provider, as a user would paste it.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import re
import shlex
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from otel_llm_receiver import cli

ROOT = Path(__file__).resolve().parent.parent
RECEIVER_KEYS = frozenset({
    "collection_interval", "export_interval", "storage", "health", "metrics", "exporters", "providers",
    "pricing", "budgets", "attribution", "focus",
})
#: Keys that mark a Collector config (a different program's file, checked by tests/test_collector_config.py).
COLLECTOR_KEYS = frozenset({"receivers", "processors", "connectors", "extensions", "service"})
PROGRAM = "otel-llm-receiver"


@dataclass(frozen=True)
class Example:
    where: str  # file:line, for the failure message and the test id
    text: str
    inline: bool = False  # a command named in prose (an inline code span), not a line to run


def _doc_files() -> list[Path]:
    files = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
    for folder in ("examples", "deploy"):
        files += sorted((ROOT / folder).rglob("*.md"))
    return files


def _fenced_blocks(path: Path) -> Iterator[tuple[str, int, str]]:
    """``(language, first line number, body)`` of every fenced block of a Markdown file."""
    lines = path.read_text(encoding="utf-8").splitlines()
    i = 0
    while i < len(lines):
        m = re.match(r"^\s*(```+|~~~+)\s*([\w+-]*)", lines[i])
        if not m:
            i += 1
            continue
        fence, lang, start = m.group(1), m.group(2).lower(), i + 1
        i += 1
        body: list[str] = []
        while i < len(lines) and not lines[i].strip().startswith(fence):
            body.append(lines[i])
            i += 1
        i += 1
        indent = min((len(b) - len(b.lstrip()) for b in body if b.strip()), default=0)
        yield lang, start + 1, "\n".join(b[indent:] for b in body)


def _comment_blocks(path: Path) -> Iterator[tuple[int, str]]:
    """``(line number, text)`` of every config section shown in comments: a commented ``providers:`` (or any
    receiver key) line and the commented lines indented under it, the ``#`` removed."""
    lines = path.read_text(encoding="utf-8").splitlines()
    keys = "|".join(sorted(RECEIVER_KEYS))
    for i, line in enumerate(lines):
        m = re.match(rf"^\s*#(\s*)({keys}):\s*$", line)
        if not m:
            continue
        block = [f"{m.group(2)}:"]
        for follow in lines[i + 1:]:
            f = re.match(r"^\s*#(.*)$", follow)
            if not f or len(f.group(1)) - len(f.group(1).lstrip()) <= len(m.group(1)) or not f.group(1).strip():
                break
            block.append(f.group(1)[len(m.group(1)):])
        if len(block) > 1:
            yield i + 1, "\n".join(block)


def _is_receiver_config(doc: Any) -> bool:
    return isinstance(doc, dict) and bool(doc) and set(doc) <= RECEIVER_KEYS and not (set(doc) & COLLECTOR_KEYS)


def _config_examples() -> list[Example]:
    found: list[Example] = []
    for path in _doc_files():
        for lang, line, body in _fenced_blocks(path):
            if lang not in ("yaml", "yml"):
                continue
            doc = yaml.safe_load(body)
            if _is_receiver_config(doc):
                found.append(Example(f"{path.relative_to(ROOT)}:{line}", body))
    # Receiver configs embedded in Kubernetes manifests (a ConfigMap's data) and the example config files.
    for path in sorted((ROOT / "deploy").rglob("*.yaml")):
        for manifest in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            if isinstance(manifest, dict) and manifest.get("kind") == "ConfigMap":
                for key, value in (manifest.get("data") or {}).items():
                    if key.endswith((".yaml", ".yml")) and _is_receiver_config(yaml.safe_load(value)):
                        found.append(Example(f"{path.relative_to(ROOT)}:{key}", value))
    # A config shown in comments ("replace the demo provider with yours: ...") is copied as often as the real one.
    for path in sorted([*(ROOT / "deploy").rglob("*.yaml"), *(ROOT / "examples").glob("*.yaml")]):
        for line, body in _comment_blocks(path):
            try:
                doc = yaml.safe_load(body)
            except yaml.YAMLError:
                continue  # prose
            if _is_receiver_config(doc):
                found.append(Example(f"{path.relative_to(ROOT)}:{line} (comment)", body))
    for path in sorted((ROOT / "examples").glob("*.yaml")):
        text = path.read_text(encoding="utf-8")
        if _is_receiver_config(yaml.safe_load(text)):
            found.append(Example(str(path.relative_to(ROOT)), text))
    return found


def _command_examples() -> list[Example]:
    found: list[Example] = []
    for path in _doc_files():
        text = path.read_text(encoding="utf-8")
        # Inline code spans and shell lines alike: every place a command line starts.
        for lang, line, body in _fenced_blocks(path):
            if lang in ("sh", "bash", "shell", "console", "text", ""):
                joined = re.sub(r"\\\n\s*", " ", body)
                for offset, cmd in enumerate(joined.splitlines()):
                    cmd = cmd.strip().removeprefix("$ ")
                    if cmd.startswith(PROGRAM + " "):
                        found.append(Example(f"{path.relative_to(ROOT)}:{line + offset}", cmd))
        for m in re.finditer(rf"`({re.escape(PROGRAM)} [^`]+)`", text):
            line = text.count("\n", 0, m.start()) + 1
            found.append(Example(f"{path.relative_to(ROOT)}:{line}", m.group(1), inline=True))
    return found


CONFIGS = _config_examples()
COMMANDS = _command_examples()


def test_the_docs_show_configs_and_commands() -> None:
    # The extraction itself works: the README's quick start alone shows both kinds.
    assert len(CONFIGS) >= 15, [c.where for c in CONFIGS]
    assert len(COMMANDS) >= 10, [c.where for c in COMMANDS]


#: Test values for ``${env:...}`` by the key it fills: an endpoint must look like one, a switch like a boolean.
ENV_VALUE_BY_KEY = {"endpoint": "http://127.0.0.1:4317", "enabled": "true",
                    "dsn": "postgresql://ledger:pw-test@127.0.0.1:5432/llm_ledger"}


def _materialise(text: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """The block as a config a user could run: its variables set, the files it names present."""
    # A variable with a default (``${env:NAME:-default}``) stays unset: the default is what the docs show.
    for key, name in re.findall(r"([\w.-]+):\s*[\"']?\$\{env:([A-Za-z_][A-Za-z0-9_]*)\}", text):
        monkeypatch.setenv(name, ENV_VALUE_BY_KEY.get(key, f"sk-admin-test-{name.lower()}"))
    for name in set(re.findall(r"\$\{env:([A-Za-z_][A-Za-z0-9_]*)\}", text)):  # inside a longer value
        if name not in os.environ:
            monkeypatch.setenv(name, f"sk-admin-test-{name.lower()}")
    for i, ref in enumerate(sorted(set(re.findall(r"\$\{file:([^}]+)\}", text)))):
        secret = tmp_path / f"secret-{i}"
        secret.write_text("sk-admin-test-from-file\n", encoding="utf-8")
        text = text.replace("${file:" + ref + "}", "${file:" + str(secret) + "}")
    # Files a key names relative to the config (TLS material, a price catalog): present, as the docs assume.
    for key, ref in re.findall(r"(\w+_file):\s*[\"']?([^\s\"'#]+)", text):
        if not Path(ref).is_absolute() and not ref.startswith("$"):
            target = tmp_path / ref
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text("[]\n" if key == "catalog_file" else "placeholder\n", encoding="utf-8")
    doc = yaml.safe_load(text)
    assert isinstance(doc, dict)
    return doc


@pytest.mark.parametrize("example", CONFIGS, ids=[c.where for c in CONFIGS])
def test_every_config_in_the_docs_passes_check(
    example: Example, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    doc = _materialise(example.text, tmp_path, monkeypatch)
    doc.setdefault("providers", {"demo": {}})
    storage = doc.get("storage")
    if not isinstance(storage, dict) or "path" not in storage:  # never a ledger in the working tree
        doc["storage"] = {**(storage if isinstance(storage, dict) else {}), "path": str(tmp_path / "ledger.db")}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(doc), encoding="utf-8")
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(["check", "--config", str(path)])
    assert code == 0, f"{example.where}: `check` refused the config shown there:\n{err.getvalue()}"


def _subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = cli.build_parser()
    actions = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(actions[0].choices)


@pytest.mark.parametrize("example", COMMANDS, ids=[c.where for c in COMMANDS])
def test_every_command_line_in_the_docs_parses(example: Example) -> None:
    """A shell line parses whole, and so does a span in prose that gives options (a user copies it as it stands);
    a bare `... report` in prose names a real subcommand."""
    argv = shlex.split(re.split(r" \| | > | && ", example.text)[0], comments=True)
    assert argv[0] == PROGRAM
    if example.inline and not any(a.startswith("--") and a != "--help" for a in argv[2:]):
        sub = _subcommands().get(argv[1]) if len(argv) > 1 else None
        assert sub is not None, f"{example.where}: `{example.text}` names no subcommand of {PROGRAM}"
        known = {opt for action in sub._actions for opt in action.option_strings}
        unknown = [a.split("=")[0] for a in argv[2:] if a.startswith("-") and a.split("=")[0] not in known]
        assert not unknown, f"{example.where}: `{example.text}`: {argv[1]} has no option {unknown}"
        return
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            cli.build_parser().parse_args(argv[1:])
        except SystemExit as exc:
            assert exc.code == 0, f"{example.where}: `{example.text}` does not parse:\n{err.getvalue()}"
