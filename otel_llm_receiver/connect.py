"""``check --connect``: can this config's credentials read every source, and can its exporters be reached?

For each enabled provider instance, ``Provider.probe()`` authenticates and reads one small page of every source
it polls (each provider's own error classification and messages, which name the missing role, permission or
key); for each exporter, the connection is opened (a gRPC channel made ready, an HTTP request answered) and no
data is sent. The ledger is never opened: a check on a fresh host must leave nothing behind.

Probes run with short timeouts and without retries: a check answers in seconds, and a refused key is as refused
on the first attempt as on the fifth. One line per check; secrets go through the log redaction.
"""

from __future__ import annotations

import asyncio
import dataclasses
import socket
from collections.abc import Callable

from .config import Config, ExporterConfig, ProviderConfig
from .errors import ProviderError
from .logs import redact
from .providers import create_provider, provider_class
from .providers.base import ProbeResult, Provider

Factory = Callable[[ProviderConfig], Provider]

#: The longest one request of a probe may take (a provider's own ``timeout`` when shorter).
PROBE_TIMEOUT = 10.0
#: The longest one instance's whole probe may take (several sources, a few requests each).
INSTANCE_TIMEOUT = 60.0


@dataclasses.dataclass(frozen=True)
class Check:
    """One line of output: an instance (provider or ``exporters.NAME``), what was checked, and the result."""

    instance: str
    result: ProbeResult

    def line(self) -> str:
        r = self.result
        if r.error is None:
            return redact(f"ok  {self.instance} {r.source}: {r.what}")
        message = str(r.error).removeprefix(f"{self.instance}: ")
        return redact(f"FAIL {self.instance} {r.source}: {r.error.error_type}: {message}")


def probe_config(config: ProviderConfig) -> ProviderConfig:
    """The instance's config for a probe: a short timeout, no retries (nothing else changes)."""
    options = dict(config.options)
    schema = provider_class(config.type).OPTIONS
    if "max_retries" in schema:
        options["max_retries"] = 0
    if "max_attempts" in schema:
        options["max_attempts"] = 1
    return dataclasses.replace(config, timeout=min(config.timeout, PROBE_TIMEOUT), options=options)


async def probe_provider(config: ProviderConfig, create: Factory = create_provider) -> list[Check]:
    """Every source of one provider instance; anything unexpected is a failed line, never a traceback."""
    name = config.name
    try:
        provider = create(probe_config(config))
    except ProviderError as exc:
        return [Check(name, ProbeResult("setup", error=exc))]
    try:
        results = await asyncio.wait_for(provider.probe(), INSTANCE_TIMEOUT)
    except TimeoutError:
        error = ProviderError(f"no answer within {INSTANCE_TIMEOUT:g}s", provider=name, error_type="timeout")
        results = [ProbeResult(source, error=error) for source in provider.data_sources]
    except Exception as exc:  # a provider bug: still one line, and the other instances are still checked
        error = ProviderError(f"{type(exc).__name__}: {exc}", provider=name, error_type="bad_response")
        results = [ProbeResult(source, error=error) for source in provider.data_sources]
    finally:
        await provider.aclose()
    return [Check(name, result) for result in results]


def probe_exporter(cfg: ExporterConfig) -> Check:
    """Open the exporter's connection without exporting: a gRPC channel made ready, or an HTTP answer."""
    instance = f"exporters.{cfg.name}"
    timeout = min(cfg.timeout, PROBE_TIMEOUT)
    if cfg.protocol == "grpc":
        return Check(instance, _probe_grpc(cfg, timeout))
    return Check(instance, _probe_http(cfg, timeout))


def _probe_grpc(cfg: ExporterConfig, timeout: float) -> ProbeResult:
    import grpc

    target = cfg.endpoint
    for scheme in ("http://", "https://"):
        target = target.removeprefix(scheme)
    insecure = cfg.tls.insecure or cfg.endpoint.startswith("http://")
    if insecure:
        channel = grpc.insecure_channel(target)
    else:
        credentials = grpc.ssl_channel_credentials(
            root_certificates=_read(cfg.tls.ca_file), private_key=_read(cfg.tls.key_file),
            certificate_chain=_read(cfg.tls.cert_file),
        )
        channel = grpc.secure_channel(target, credentials)
    try:
        _tcp_connect(target, timeout)  # a refused port fails at once, not after the channel's backoff
        grpc.channel_ready_future(channel).result(timeout=timeout)
    except OSError as exc:
        error = ProviderError(f"{target}: cannot connect: {exc.strerror or exc}", error_type="network")
        return ProbeResult("grpc", error=error)
    except grpc.FutureTimeoutError:
        error = ProviderError(f"gRPC channel to {target} not ready within {timeout:g}s (nothing listens there, "
                              "or TLS does not match: see tls.insecure / tls.ca_file)", error_type="network")
        return ProbeResult("grpc", error=error)
    finally:
        channel.close()
    return ProbeResult("grpc", f"channel ready to {target}{'' if insecure else ' (TLS)'}")


def _probe_http(cfg: ExporterConfig, timeout: float) -> ProbeResult:
    """A GET of the metrics URL: any answer means reachable (the collector takes only POST), except a refusal
    of the configured headers (401/403)."""
    import httpx

    url = cfg.endpoint.rstrip("/")
    if not url.endswith("/v1/metrics"):
        url += "/v1/metrics"
    verify: bool | str = cfg.tls.ca_file or True
    cert = (cfg.tls.cert_file, cfg.tls.key_file) if cfg.tls.cert_file and cfg.tls.key_file else None
    try:
        with httpx.Client(timeout=timeout, verify=verify, cert=cert) as client:
            response = client.get(url, headers=dict(cfg.headers))
    except httpx.TimeoutException:
        return ProbeResult("http", error=ProviderError(f"{url}: no answer within {timeout:g}s", error_type="timeout"))
    except httpx.HTTPError as exc:
        return ProbeResult("http", error=ProviderError(f"{url}: {exc or type(exc).__name__}", error_type="network"))
    if response.status_code in (401, 403):
        error = ProviderError(f"{url}: HTTP {response.status_code} (needs credentials the collector accepts in "
                              "the exporter's headers)", error_type="auth")
        return ProbeResult("http", error=error)
    return ProbeResult("http", f"{url} reachable (HTTP {response.status_code} to a GET; nothing exported)")


def _tcp_connect(target: str, timeout: float) -> None:
    """Open and close a TCP connection to ``host:port`` (``[v6]:port``); OSError when nothing listens."""
    host, _, port = target.rpartition(":")
    with socket.create_connection((host.strip("[]") or "localhost", int(port)), timeout=timeout):
        return


def probe_storage(config: Config) -> list[Check]:
    """With ``storage.backend: postgresql``, one line: the ledger database reachable and its schema usable.

    SQLite's ledger file is not opened (a check leaves nothing behind); the PostgreSQL probe only reads.
    """
    storage = config.storage
    if storage.backend != "postgresql" or not storage.dsn:
        return []
    from .errors import LedgerError

    try:
        from .ledger.postgres.probe import probe_schema
    except LedgerError as exc:  # psycopg not installed: the extra is missing
        return [Check("storage", ProbeResult("postgresql", error=ProviderError(str(exc), error_type="config")))]
    probe = probe_schema(str(storage.dsn))
    if probe.ok:
        return [Check("storage", ProbeResult("postgresql", probe.message))]
    return [Check("storage", ProbeResult("postgresql", error=ProviderError(probe.message, error_type=probe.kind)))]


def _read(path: str | None) -> bytes | None:
    if not path:
        return None
    with open(path, "rb") as f:
        return f.read()


async def _all_providers(configs: list[ProviderConfig], create: Factory) -> list[list[Check]]:
    return await asyncio.gather(*(probe_provider(c, create) for c in configs))


def check_connect(config: Config, emit: Callable[[str], None], create: Factory = create_provider) -> bool:
    """Probe every enabled provider instance and every exporter, ``emit`` one line each; True when all pass.

    ``create`` builds a provider from its (probe) config: tests hand in one that gives Azure a fixed token.
    """
    redact.set(config.secrets | config.substituted)
    checks: list[Check] = []
    enabled = [p for p in config.providers if p.enabled]
    for group in asyncio.run(_all_providers(enabled, create)):
        checks += group
    checks += [probe_exporter(e) for e in config.exporters]
    checks += probe_storage(config)
    for check in checks:
        emit(check.line())
    return all(c.result.ok for c in checks)


__all__ = ["Check", "check_connect", "probe_config", "probe_exporter", "probe_provider", "probe_storage"]
