"""The project's packaging metadata stays buildable and says what it ships under (issue 18, point 7).

A build with setuptools 70 failed on ``license = "Apache-2.0"``: SPDX license expressions (PEP 639) need
setuptools 77, so the build requirement must not admit anything older. The license the metadata names must be the
file in the tree, and every file the Dockerfile copies into its build context must exist.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def test_build_requires_a_setuptools_that_understands_spdx_license_expressions() -> None:
    requirements = [Requirement(r) for r in PYPROJECT["build-system"]["requires"]]
    setuptools = [r for r in requirements if r.name == "setuptools"]
    assert len(setuptools) == 1, "the build backend's own requirement must be listed once"
    spec = setuptools[0].specifier
    for too_old in ("68.0", "70.0", "76.1.0"):
        assert not spec.contains(Version(too_old)), f"setuptools {too_old} cannot build a PEP 639 license field"
    assert spec.contains(Version("77.0.3"))


def test_license_expression_names_the_license_file_in_the_tree() -> None:
    project = PYPROJECT["project"]
    assert project["license"] == "Apache-2.0"
    assert project["license-files"] == ["LICENSE"]
    text = (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert "END OF TERMS AND CONDITIONS" in text, "the whole license text, not a stub"


def test_security_policy_and_changelog_exist_and_say_what_they_must() -> None:
    security = (ROOT / "SECURITY.md").read_text(encoding="utf-8")
    assert "Reporting a vulnerability" in security
    # What the receiver stores and what it never stores are both stated.
    assert "never written to the ledger" in security and "never sees prompts" in security
    changelog = (ROOT / "CHANGELOG.md").read_text(encoding="utf-8")
    assert f"## [{PYPROJECT['project']['version']}]" in changelog, "the current version has a changelog entry"


def test_every_file_the_dockerfile_copies_exists() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    copied = [
        src
        for line in dockerfile.splitlines()
        if (m := re.match(r"COPY\s+(?!--from)(.+)\s+\S+$", line.strip()))
        for src in m.group(1).split()
    ]
    assert "LICENSE" in copied, "the build inside the image reads license-files"
    for src in copied:
        assert (ROOT / src).exists(), f"Dockerfile copies {src}, which is not in the tree"
