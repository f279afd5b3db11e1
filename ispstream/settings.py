"""Settings: one typed object, read from ``ISPSTREAM_*`` environment variables and ``.env``.

Every process builds its ``Settings`` once in its composition root and passes the pieces
down; nothing else reads the environment.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_DATABASE_URL = "postgresql://ispstream:ispstream@127.0.0.1:5432/ispstream"
_PLACEHOLDER_SECRETS = {"", "changeme", "change-me", "secret", "ispstream"}


def _split_addr(value: str, default_host: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    return (host or default_host).strip("[]"), int(port)


class Settings(BaseSettings):
    """All configuration of every ispstream process (``ISPSTREAM_<FIELD>``)."""

    model_config = SettingsConfigDict(
        env_prefix="ISPSTREAM_", env_file=".env", env_file_encoding="utf-8", extra="ignore"
    )

    environment: Literal["development", "production"] = "development"
    database_url: SecretStr = SecretStr(DEFAULT_DATABASE_URL)
    kafka_bootstrap: str = Field(
        default="", description="host:port[,host:port]; empty means not configured"
    )
    kafka_config: dict[str, str] = Field(
        default_factory=dict, description="extra librdkafka properties (JSON), e.g. SASL"
    )

    # topics: an optional prefix (e.g. per environment) and the partition count used
    # when ispstream creates them
    topic_prefix: str = ""
    topic_partitions: int = 4

    # RADIUS accounting collector
    radius_acct_addr: str = "0.0.0.0:1813"
    radius_dictionary: Path | None = None
    spool_dir: Path = Path("var/spool")
    kafka_delivery_timeout_ms: int = 3000
    collector_metrics_addr: str = "127.0.0.1:9813"
    inventory_refresh_s: float = 5.0

    # usage flow
    recovery_dir: Path = Path("var/recovery/usage")
    recovery_partitions: int = 1
    snapshot_interval_s: float = 2.0
    default_interim_interval_s: int = 300
    stale_factor: float = 2.5
    session_shards: int = Field(
        default=16, ge=1, le=1024,
        description="session state shards per NAS (small snapshots, big NAS over workers); "
        "fixed for the life of a recovery store (the usage flow refuses other counts)")
    rating_shards: int = Field(
        default=16, ge=1, le=1024,
        description="rating state shards per tenant (subscribers by username hash); "
        "fixed for the life of a recovery store (the usage flow refuses other counts)")
    db_writers: int = Field(
        default=1, ge=1,
        description="writer partitions of each flow output (database connections, Kafka producers)")

    # enforce flow (CoA / Disconnect to the NAS)
    enforce_recovery_dir: Path = Path("var/recovery/enforce")
    enforce_writers: int = Field(default=1, ge=1, description="enforcement sink partitions")
    coa_timeout_s: float = Field(default=1.0, gt=0, description="first retransmission timeout")
    coa_retries: int = Field(default=2, ge=0, description="retransmissions after the first send")
    coa_deadline_s: float = Field(default=10.0, gt=0, description="give up on a request after")
    coa_max_inflight_per_nas: int = Field(default=64, ge=1, le=256)
    coa_vendors_file: Path | None = Field(default=None, description="vendor profiles YAML; "
                                          "defaults to the shipped collectors/radius/vendors.yaml")

    # SNMP telemetry
    snmp_trap_addr: str = Field(default="0.0.0.0:162", description="trap receiver UDP address")
    snmp_metrics_addr: str = "127.0.0.1:9814"
    onu_metrics_addr: str = "127.0.0.1:9815"
    snmp_poll_jitter: float = Field(default=0.1, ge=0, le=0.5,
                                    description="fraction of the interval schedules vary by")
    device_unreachable_after: int = Field(default=3, ge=1,
                                          description="failed polls before unreachable")

    # fault flow
    faults_recovery_dir: Path = Path("var/recovery/faults")

    # API
    api_addr: str = "127.0.0.1:8000"
    api_database_url: SecretStr | None = Field(
        default=None,
        description="the API's own login role (member of ispstream_api, not the owner); "
        "defaults to database_url",
    )

    @field_validator("kafka_bootstrap")
    @classmethod
    def _strip(cls, v: str) -> str:
        return v.strip()

    @model_validator(mode="after")
    def _no_placeholder_secrets_in_production(self) -> "Settings":
        if self.environment == "production":
            url = self.database_url.get_secret_value()
            password = url.split("@", 1)[0].rpartition(":")[2] if "@" in url else ""
            if password in _PLACEHOLDER_SECRETS:
                raise ValueError(
                    "ISPSTREAM_DATABASE_URL uses a placeholder password; "
                    "set a real one in production"
                )
        return self

    @property
    def radius_acct_bind(self) -> tuple[str, int]:
        return _split_addr(self.radius_acct_addr, "0.0.0.0")

    @property
    def api_bind(self) -> tuple[str, int]:
        return _split_addr(self.api_addr, "127.0.0.1")

    @property
    def collector_metrics_bind(self) -> tuple[str, int]:
        return _split_addr(self.collector_metrics_addr, "127.0.0.1")

    def topic(self, name: str) -> str:
        """The full name of topic ``name`` (see ``ispstream.topics``) with the prefix."""
        return f"{self.topic_prefix}{name}"

    def dsn(self) -> str:
        """The database URL as a plain string (for the DB driver only; never log it)."""
        return self.database_url.get_secret_value()

    def api_dsn(self) -> str:
        """The database URL the API logs in with (never log it)."""
        return (self.api_database_url or self.database_url).get_secret_value()

    def require_kafka(self) -> str:
        """The bootstrap servers, or a clear error when Kafka is not configured."""
        if not self.kafka_bootstrap:
            raise SystemExit(
                "ISPSTREAM_KAFKA_BOOTSTRAP is not set: point it at Kafka, or start the "
                "embedded broker with `ispstream broker` and use the bootstrap it prints"
            )
        return self.kafka_bootstrap


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings (read once)."""
    return Settings()
