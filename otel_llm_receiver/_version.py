"""The release version, written once: pyproject.toml reads it (``tool.setuptools.dynamic``), and the package
imports it without ``importlib.metadata``, whose scan of every installed distribution cost each command
20-70 ms of start-up (issue 20: ``run --once`` < 0.6 s)."""

__version__ = "0.1.0"
