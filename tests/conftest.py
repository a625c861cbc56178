"""Fixtures shared by the whole suite: real loopback servers, started per test and always stopped.

Why one place: the OTLP sink and the provider fakes were defined again in each module that needed them; a fixture
here is the one way a test gets a sink or a fake, so a change to how they start (ports, timeouts) is made once.
A module that needs a different scope or pre-populated data keeps its own fixture of the same name (pytest lets a
module's fixture override this one).

Markers: ``slow`` marks the tests that take more than ~20 s on their own (fault storms, fuzzers, real Prometheus);
``pytest -m "not slow"`` is the quick loop while editing, the README's command runs everything.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.fakes.azure import FakeAzure
from tests.support.otlp_sink import OTLPSink


@pytest.fixture
def sink() -> Iterator[OTLPSink]:
    """A real OTLP gRPC + HTTP receiver on loopback, decoding with opentelemetry-proto."""
    with OTLPSink() as s:
        yield s


@pytest.fixture
def azure_fake() -> Iterator[FakeAzure]:
    """The Azure Resource Manager, Monitor and Cost Management fake on loopback."""
    azure = FakeAzure()
    try:
        yield azure
    finally:
        azure.close()
