# One image for every ispstream process; the command picks the process.
FROM python:3.11-slim-bookworm
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
WORKDIR /app
COPY pyproject.toml README.md ./
COPY ispstream ispstream
COPY collectors collectors
COPY rating rating
COPY pipelines pipelines
COPY portal_api portal_api
COPY sql sql
COPY examples examples
COPY deploy deploy
RUN pip install --no-cache-dir . && useradd --system --uid 10001 ispstream \
    && mkdir -p /var/lib/ispstream && chown ispstream /var/lib/ispstream
USER ispstream
ENV ISPSTREAM_SPOOL_DIR=/var/lib/ispstream/spool \
    ISPSTREAM_RECOVERY_DIR=/var/lib/ispstream/recovery \
    ISPSTREAM_ENFORCE_RECOVERY_DIR=/var/lib/ispstream/recovery-enforce \
    ISPSTREAM_FAULTS_RECOVERY_DIR=/var/lib/ispstream/recovery-faults
ENTRYPOINT ["ispstream"]
CMD ["--help"]
