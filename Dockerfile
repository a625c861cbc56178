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
COPY pyproject.toml README.md LICENSE ./
COPY otel_llm_receiver ./otel_llm_receiver
# Every provider SDK and the Parquet writer are in the image (extras of the package): one image runs any config.
RUN pip install '.[azure,bedrock,vertex-billing,focus]' && rm -rf /src

RUN useradd --system --uid 10001 --user-group --home-dir /var/lib/otel-llm-receiver --create-home receiver \
    && mkdir -p /etc/otel-llm-receiver
USER 10001:10001
WORKDIR /var/lib/otel-llm-receiver
VOLUME ["/var/lib/otel-llm-receiver"]
EXPOSE 13133

ENTRYPOINT ["otel-llm-receiver"]
CMD ["run", "--config", "/etc/otel-llm-receiver/config.yaml"]
