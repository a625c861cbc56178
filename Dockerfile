# otel-llm-receiver sidecar image.
#   docker build -t otel-llm-receiver .
#   docker run -v $PWD/config.yaml:/etc/otel-llm-receiver/config.yaml:ro \
#              -v otel-llm-data:/var/lib/otel-llm-receiver otel-llm-receiver
# The config is read from /etc/otel-llm-receiver/config.yaml; the ledger lives in the volume
# /var/lib/otel-llm-receiver (storage.path defaults to ./otel-llm-data/ledger.db under it). Set
# health.endpoint: 0.0.0.0:13133 in the config to reach /health from outside the container.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
# The exact dependency set, every file checked against its hash: requirements/image.txt is a pip-compile lock of
# the package with its azure, bedrock, vertex-billing, focus and postgresql extras (every provider SDK, the Parquet
# writer and the PostgreSQL driver, so one image runs any config) and of its build backend. `make lock` regenerates it (docs/deployment.md).
COPY requirements/image.txt ./requirements/image.txt
RUN pip install --require-hashes --no-deps -r requirements/image.txt
COPY pyproject.toml README.md LICENSE ./
COPY otel_llm_receiver ./otel_llm_receiver
# The package itself, built with the locked setuptools: nothing unpinned is fetched.
RUN pip install --no-deps --no-build-isolation . && rm -rf /src

RUN useradd --system --uid 10001 --user-group --home-dir /var/lib/otel-llm-receiver --create-home receiver \
    && mkdir -p /etc/otel-llm-receiver
USER 10001:10001
WORKDIR /var/lib/otel-llm-receiver
VOLUME ["/var/lib/otel-llm-receiver"]
EXPOSE 13133
# Liveness from inside the container (the health endpoint listens on 127.0.0.1:13133 unless health.endpoint moves it).
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:13133/health', timeout=4).status != 200)"]

ENTRYPOINT ["otel-llm-receiver"]
CMD ["run", "--config", "/etc/otel-llm-receiver/config.yaml"]
