"""Kafka plumbing: client configuration, topic checks, and the embedded broker.

The embedded broker is librdkafka's mock cluster: it speaks the real Kafka protocol on
a real TCP port, but keeps data in memory with bounded retention (older data is dropped
silently past a few MiB per partition). It is for trying ispstream out and for tests;
production points ``ISPSTREAM_KAFKA_BOOTSTRAP`` at a Kafka cluster.
"""

from __future__ import annotations

import ctypes
import glob
import logging
import os
from typing import Iterable

import confluent_kafka
import confluent_kafka.admin

log = logging.getLogger(__name__)


def client_config(bootstrap: str, extra: dict[str, str] | None = None, **overrides) -> dict:
    """librdkafka configuration shared by every client of the project."""
    conf = {"bootstrap.servers": bootstrap, "client.id": "ispstream"}
    conf.update(extra or {})
    conf.update(overrides)
    return conf


def producer_config(bootstrap: str, extra: dict[str, str] | None = None, **overrides) -> dict:
    """A durable producer: idempotent, acks from all in-sync replicas, ordered per key."""
    return client_config(
        bootstrap,
        extra,
        **{
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 2,
            "compression.type": "lz4",
            **overrides,
        },
    )


def _librdkafka() -> ctypes.CDLL:
    libdir = os.path.join(os.path.dirname(os.path.dirname(confluent_kafka.__file__)),
                          "confluent_kafka.libs")
    candidates = sorted(glob.glob(os.path.join(libdir, "librdkafka*.so*")))
    if not candidates:
        raise RuntimeError("the bundled librdkafka library was not found")
    lib = ctypes.CDLL(candidates[0])
    lib.rd_kafka_conf_new.restype = ctypes.c_void_p
    lib.rd_kafka_conf_set.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_char_p,
                                      ctypes.c_char_p, ctypes.c_size_t]
    lib.rd_kafka_new.restype = ctypes.c_void_p
    lib.rd_kafka_new.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t]
    lib.rd_kafka_mock_cluster_new.restype = ctypes.c_void_p
    lib.rd_kafka_mock_cluster_new.argtypes = [ctypes.c_void_p, ctypes.c_int]
    lib.rd_kafka_mock_cluster_bootstraps.restype = ctypes.c_char_p
    lib.rd_kafka_mock_cluster_bootstraps.argtypes = [ctypes.c_void_p]
    lib.rd_kafka_mock_topic_create.restype = ctypes.c_int
    lib.rd_kafka_mock_topic_create.argtypes = [ctypes.c_void_p, ctypes.c_char_p,
                                               ctypes.c_int, ctypes.c_int]
    lib.rd_kafka_mock_cluster_destroy.argtypes = [ctypes.c_void_p]
    lib.rd_kafka_destroy.argtypes = [ctypes.c_void_p]
    lib.rd_kafka_err2str.restype = ctypes.c_char_p
    return lib


class EmbeddedBroker:
    """An in-process Kafka-protocol broker (librdkafka mock cluster).

    Memory only, bounded retention, single node: for demos and tests, not production.
    Keep the object alive for as long as clients use it.
    """

    def __init__(self, brokers: int = 1) -> None:
        self._lib = _librdkafka()
        conf = self._lib.rd_kafka_conf_new()
        err = ctypes.create_string_buffer(512)
        # The hosting handle never connects anywhere itself.
        self._lib.rd_kafka_conf_set(conf, b"log_level", b"3", err, 512)
        self._rk = self._lib.rd_kafka_new(0, conf, err, 512)  # 0 = RD_KAFKA_PRODUCER
        if not self._rk:
            raise RuntimeError(f"rd_kafka_new failed: {err.value.decode()}")
        self._mc = self._lib.rd_kafka_mock_cluster_new(self._rk, brokers)
        if not self._mc:
            raise RuntimeError("could not create the mock cluster")
        self.bootstrap: str = self._lib.rd_kafka_mock_cluster_bootstraps(self._mc).decode()

    def create_topic(self, name: str, partitions: int, replication: int = 1) -> None:
        """Create a topic with exactly ``partitions`` partitions."""
        rc = self._lib.rd_kafka_mock_topic_create(self._mc, name.encode(), partitions,
                                                  replication)
        if rc != 0:
            raise RuntimeError(
                f"creating topic {name}: {self._lib.rd_kafka_err2str(rc).decode()}"
            )

    def create_topics(self, names: Iterable[str], partitions: int) -> None:
        for name in names:
            self.create_topic(name, partitions)

    def close(self) -> None:
        if self._mc:
            self._lib.rd_kafka_mock_cluster_destroy(self._mc)
            self._mc = None
        if self._rk:
            self._lib.rd_kafka_destroy(self._rk)
            self._rk = None


def check_reachable(bootstrap: str, extra: dict[str, str] | None = None,
                    timeout: float = 2.0) -> int:
    """Return the number of brokers in the cluster metadata, or raise when unreachable."""
    admin = confluent_kafka.admin.AdminClient(client_config(bootstrap, extra))
    md = admin.list_topics(timeout=timeout)
    return len(md.brokers)
