# The project image: the `sentinel` command (loader, alert listener, `sentinel up`), dbt with the
# postgres/sentinel, risingwave and materialize adapters, and psql for deploy/init-engine.sh.
# Used by every non-engine service of docker-compose.yml.
FROM python:3.11.13-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN apt-get update \
    && apt-get install -y --no-install-recommends postgresql-client \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /app

# Dependencies first (cached while only the code changes). pip stays below 25: pip 25 refuses
# dbt-materialize's package metadata.
COPY pyproject.toml README.md ./
COPY sentinel ./sentinel
COPY loader ./loader
COPY alerts ./alerts
RUN python -m pip install "pip>=23,<25" \
    && python -m pip install -e ".[risingwave,materialize]"

# Editable install: sql/ and dbt/ are found next to the package, as in a checkout.
COPY sql ./sql
COPY dbt ./dbt
COPY deploy ./deploy

RUN useradd --create-home --uid 10001 sentinel \
    && mkdir -p /var/lib/sentinel \
    && chown -R sentinel:sentinel /var/lib/sentinel /app/dbt
USER sentinel
ENV SENTINEL_HOME=/home/sentinel/.sentinel

CMD ["sentinel", "--help"]
