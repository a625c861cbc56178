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
    from otel_llm_receiver._version import __version__

    assert f"## [{__version__}]" in changelog, "the current version has a changelog entry"


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


# --- The image's hashed lock (issue 18, point 11) ---------------------------------------------------------------

LOCK = ROOT / "requirements" / "image.txt"
IMAGE_EXTRAS = ("azure", "bedrock", "vertex-billing", "focus", "postgresql")


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _read_lock() -> dict[str, tuple[str, list[str]]]:
    """``{normalised name: (version, [sha256 hashes])}`` of every pin in the lock."""
    pins: dict[str, tuple[str, list[str]]] = {}
    current: str | None = None
    for raw in LOCK.read_text(encoding="utf-8").splitlines():
        line = raw.split("#", 1)[0].strip().rstrip("\\").strip()
        if not line:
            continue
        if m := re.fullmatch(r"([A-Za-z0-9._-]+)==([^\s;]+)", line):
            current = _normalise(m.group(1))
            assert current not in pins, f"{current} is pinned twice"
            pins[current] = (m.group(2), [])
        elif m := re.fullmatch(r"--hash=sha256:([0-9a-f]{64})", line):
            assert current is not None, "a hash before any pin"
            pins[current][1].append(m.group(1))
        else:
            raise AssertionError(f"unexpected line in the lock: {raw!r}")
    return pins


def _top_level_requirements() -> list[Requirement]:
    project = PYPROJECT["project"]
    wanted = list(project["dependencies"]) + list(PYPROJECT["build-system"]["requires"])
    for extra in IMAGE_EXTRAS:
        wanted += project["optional-dependencies"][extra]
    return [Requirement(r) for r in wanted]


def test_every_pin_in_the_image_lock_is_exact_and_hashed() -> None:
    pins = _read_lock()
    assert len(pins) > 20
    for name, (version, hashes) in pins.items():
        assert Version(version), name
        assert hashes, f"{name}=={version} has no --hash: pip --require-hashes would refuse the lock"


def test_the_image_lock_satisfies_the_package_its_extras_and_its_build_backend() -> None:
    pins = _read_lock()
    for req in _top_level_requirements():
        name = _normalise(req.name)
        assert name in pins, f"{req} (pyproject.toml) is missing from {LOCK.name}: run `make lock`"
        assert req.specifier.contains(Version(pins[name][0]), prereleases=True), (
            f"{LOCK.name} pins {name}=={pins[name][0]}, which pyproject.toml's {req} refuses: run `make lock`"
        )


def test_the_image_lock_is_closed_under_dependencies() -> None:
    """Every dependency of every locked distribution is locked too (``--no-deps`` installs nothing else).

    A distribution's requirements are read from its installed metadata, so this checks those installed here at the
    locked version (the test extra installs the image's extras); the rest were checked by pip-compile itself.
    """
    from importlib import metadata

    pins = _read_lock()
    environment = {"python_version": "3.11", "sys_platform": "linux", "platform_system": "Linux", "extra": ""}
    checked = 0
    for name, (version, _) in pins.items():
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        if Version(dist.version) != Version(version):
            continue
        checked += 1
        for text in dist.requires or []:
            req = Requirement(text)
            if req.marker is not None and not req.marker.evaluate(environment):
                continue
            assert _normalise(req.name) in pins, f"{name}=={version} needs {req}, which the lock does not pin"
    assert checked >= 10, f"only {checked} locked distributions could be checked against their metadata"


def test_the_image_installs_from_the_lock_as_an_unprivileged_user_with_a_healthcheck() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    assert "pip install --require-hashes --no-deps -r requirements/image.txt" in dockerfile
    package_install = [ln for ln in dockerfile.splitlines() if "pip install" in ln and " ." in ln]
    assert package_install and all("--no-deps" in ln for ln in package_install), "the package adds nothing unlocked"
    users = re.findall(r"^USER\s+(\S+)", dockerfile, flags=re.M)
    assert users and users[-1].split(":")[0] not in ("0", "root")
    healthcheck = re.search(r"^HEALTHCHECK .*", dockerfile, flags=re.M | re.S)
    assert healthcheck is not None and "/health" in healthcheck.group(0)


def test_yaml_is_parsed_by_libyaml_and_agrees_with_the_pure_python_loader() -> None:
    """Issue 20: the catalog (27 KB) and the provider descriptors are parsed at every start with
    ``yaml.CSafeLoader`` when PyYAML was built with libyaml (its wheels are), 7x faster than the pure-Python
    loader they fall back to; the environment that runs the receiver has it, and both read the files alike."""
    import yaml

    from otel_llm_receiver.catalog import load_catalog

    assert hasattr(yaml, "CSafeLoader"), "PyYAML without libyaml: every start parses the catalog 7x slower"
    package = ROOT / "otel_llm_receiver"
    files = [package / "catalog.yaml", package / "providers" / "demo.yaml",
             *sorted((package / "providers").glob("*/provider.yaml"))]
    for path in files:
        text = path.read_text(encoding="utf-8")
        assert yaml.load(text, Loader=yaml.CSafeLoader) == yaml.load(text, Loader=yaml.SafeLoader), path
    assert "llm.usage.tokens" in load_catalog().metrics


def test_the_installed_version_is_the_one_the_package_reports() -> None:
    """The version is written once (``_version.py``); the installed metadata is built from it (setuptools'
    dynamic ``attr``), so ``--version``, ``service.version`` and ``pip show`` agree."""
    from importlib.metadata import version

    import otel_llm_receiver
    from otel_llm_receiver._version import __version__

    assert "version" in PYPROJECT["project"]["dynamic"] and "version" not in PYPROJECT["project"]
    assert PYPROJECT["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "otel_llm_receiver._version.__version__"}
    assert version("otel-llm-receiver") == __version__ == otel_llm_receiver.__version__
    Version(__version__)  # a valid PEP 440 version
