# One image for every matomete service (migrate, worker, beat); docker-compose.yml picks the command.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
COPY workers ./workers
RUN pip install . && rm -rf build

# Run as an unprivileged user whose home is the working directory (exports, beat's schedule file).
RUN useradd --system --uid 10001 --user-group --create-home --home-dir /var/lib/matomete matomete \
 && mkdir -p /var/lib/matomete/exports \
 && chown -R matomete:matomete /var/lib/matomete
USER matomete
WORKDIR /var/lib/matomete
ENV MATOMETE_EXPORT_DIR=/var/lib/matomete/exports
# a worker's Prometheus metrics (MATOMETE_METRICS_PORT)
EXPOSE 9808

CMD ["matomete", "--help"]
