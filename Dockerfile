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
COPY setup.py ./
# The compiler only while installing: setup.py compiles the usage flow's hot modules.
RUN apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev \
    && pip install --no-cache-dir . \
    && apt-get purge -y gcc libc6-dev && apt-get autoremove -y && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 ispstream \
    && mkdir -p /var/lib/ispstream && chown ispstream /var/lib/ispstream
USER ispstream
ENV ISPSTREAM_SPOOL_DIR=/var/lib/ispstream/spool \
    ISPSTREAM_RECOVERY_DIR=/var/lib/ispstream/recovery \
    ISPSTREAM_ENFORCE_RECOVERY_DIR=/var/lib/ispstream/recovery-enforce \
    ISPSTREAM_FAULTS_RECOVERY_DIR=/var/lib/ispstream/recovery-faults
ENTRYPOINT ["ispstream"]
CMD ["--help"]
