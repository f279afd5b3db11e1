"""The flows' Kafka input and output (pipelines.kafka_io) against the embedded broker:
every record read once in order per partition, resume from the recovery store, the end
of the topic, and an output that fails the flow when Kafka refuses its messages."""

from __future__ import annotations

import bytewax.operators as op
import pytest
from bytewax.dataflow import Dataflow
from bytewax.recovery import RecoveryConfig, init_db_dir
from bytewax.testing import TestingSink, TestingSource, cluster_main, run_main
from confluent_kafka import Consumer, Producer, TopicPartition

from bytewax.connectors.kafka import operators as kop

from ispstream.kafka import producer_config
from ispstream.settings import Settings
from pipelines.kafka_io import KafkaInput, KafkaOutput
from pipelines.runtime import kafka_input, stateful_apply
from procs import free_port


def produce(bootstrap: str, topic: str, records: list[tuple[int, bytes]],
            key: bytes = b"k") -> None:
    p = Producer(producer_config(bootstrap))
    for part, value in records:
        p.produce(topic, value, key, partition=part)
    assert p.flush(10) == 0


def read_all(bootstrap: str, topic: str, recovery: RecoveryConfig | None = None) -> list:
    flow = Dataflow("read")
    out: list = []
    inp = op.input("in", flow, KafkaInput(bootstrap, [topic], tail=False))
    op.output("out", op.map("value", inp, lambda m: (m.partition(), m.offset(), m.value())),
              TestingSink(out))
    run_main(flow, recovery_config=recovery)
    return out


def test_input_reads_every_partition_in_order_and_stops_at_the_end(broker, topic_prefix):
    topic = topic_prefix + "in"
    broker.create_topic(topic, 3)
    records = [(i % 3, f"v{i}".encode()) for i in range(30)]
    produce(broker.bootstrap, topic, records)
    got = read_all(broker.bootstrap, topic)
    assert sorted(v for _, _, v in got) == sorted(v for _, v in records)
    for part in range(3):
        offsets = [o for p, o, _ in got if p == part]
        assert offsets == list(range(10))


def test_each_worker_reads_its_partitions_of_every_topic_through_one_consumer(
        broker, topic_prefix, monkeypatch):
    import pipelines.kafka_io as kio

    built: list = []
    real = kio._SharedConsumer

    def counting(*args, **kwargs):
        built.append(real(*args, **kwargs))
        return built[-1]

    monkeypatch.setattr(kio, "_SharedConsumer", counting)
    a, b = topic_prefix + "two-a", topic_prefix + "two-b"
    broker.create_topic(a, 4)
    broker.create_topic(b, 3)
    produce(broker.bootstrap, a, [(i % 4, f"a{i}".encode()) for i in range(400)])
    produce(broker.bootstrap, b, [(i % 3, f"b{i}".encode()) for i in range(300)])
    flow = Dataflow("two")
    out: list = []
    inp = op.input("in", flow, KafkaInput(broker.bootstrap, [a, b], tail=False, batch=7))
    op.output("out", op.map("v", inp, lambda m: (m.topic(), m.partition(), m.offset())),
              TestingSink(out))
    cluster_main(flow, [], 0, worker_count_per_proc=2)
    assert len(built) == 2  # one consumer per worker, not per partition
    for topic, parts, n in ((a, 4, 100), (b, 3, 100)):
        for part in range(parts):
            assert [o for t, p, o in out if (t, p) == (topic, part)] == list(range(n))


def test_input_resumes_after_the_offsets_of_the_last_epoch(broker, topic_prefix, tmp_path):
    topic = topic_prefix + "resume"
    broker.create_topic(topic, 2)
    init_db_dir(tmp_path, 1)
    recovery = RecoveryConfig(str(tmp_path))
    produce(broker.bootstrap, topic, [(i % 2, f"a{i}".encode()) for i in range(6)])
    assert len(read_all(broker.bootstrap, topic, recovery)) == 6
    produce(broker.bootstrap, topic, [(i % 2, f"b{i}".encode()) for i in range(4)])
    again = read_all(broker.bootstrap, topic, recovery)
    assert sorted(v for _, _, v in again) == [b"b0", b"b1", b"b2", b"b3"]


@pytest.mark.parametrize("lists", [False, True], ids=["items", "lists"])
def test_output_produces_keyed_items_and_confirms_them(broker, topic_prefix, lists):
    topic = topic_prefix + "out"
    broker.create_topic(topic, 2)
    flow = Dataflow("write")
    if lists:  # batches: each item a list of values, each produced on its own
        items = [(f"sub{i}", list(range(i, min(i + 7, 50)))) for i in range(0, 50, 7)]
    else:
        items = [(f"sub{i}", i) for i in range(50)]
    op.output("out", op.input("in", flow, TestingSource(items)),
              KafkaOutput(broker.bootstrap, topic, lambda i: (f"k{i}".encode(), str(i).encode()),
                          partitions=2, lists=lists))
    run_main(flow)
    c = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": "t",
                  "enable.partition.eof": True})
    c.assign([TopicPartition(topic, p, 0) for p in range(2)])
    got, eofs = {}, 0
    while eofs < 2:
        m = c.poll(5)
        assert m is not None, "records missing"
        if m.error():
            eofs += 1
            continue
        got[m.key()] = m.value()
    c.close()
    assert got == {f"k{i}".encode(): str(i).encode() for i in range(50)}


def test_output_fails_the_flow_when_kafka_does_not_take_the_messages(topic_prefix):
    flow = Dataflow("refused")
    op.output("out", op.input("in", flow, TestingSource([("k", 1)])),
              KafkaOutput(f"127.0.0.1:{free_port()}", topic_prefix + "out",
                          lambda i: (b"k", b"v"), config={"message.timeout.ms": "1000"}))
    with pytest.raises(Exception) as failed:
        run_main(flow)
    causes, exc = [], failed.value
    while exc is not None:
        causes.append(str(exc))
        exc = exc.__cause__
    assert any("Kafka did not take 1 message" in c for c in causes), causes


def _count_before(state, msg):
    state = state or [0]
    state[0] += 1
    return state, [(msg.value, state[0])]


def _count_now(state, msg):
    state[0] += 1
    return [(msg.value(), state[0])]


def test_a_store_written_by_bytewax_own_operators_resumes(broker, topic_prefix, tmp_path):
    """Offsets and state a flow stored with Bytewax's Kafka input and stateful_flat_map
    (how the flows were built before) carry over to kafka_input and stateful_apply."""
    topic = topic_prefix + "compat"
    broker.create_topic(topic, 2)
    init_db_dir(tmp_path, 1)
    recovery = RecoveryConfig(str(tmp_path))
    produce(broker.bootstrap, topic, [(i % 2, f"a{i}".encode()) for i in range(5)])
    before: list = []
    flow = Dataflow("compat")
    inp = kop.input("in", flow, brokers=[broker.bootstrap], topics=[topic], tail=False)
    keyed = op.key_on("key", inp.oks, lambda m: m.key.decode())
    op.output("out", op.stateful_flat_map("count", keyed, _count_before), TestingSink(before))
    run_main(flow, recovery_config=recovery)
    assert sorted(n for _, (_, n) in before) == [1, 2, 3, 4, 5]

    produce(broker.bootstrap, topic, [(i % 2, f"b{i}".encode()) for i in range(3)])
    after: list = []
    flow = Dataflow("compat")
    settings = Settings(kafka_bootstrap=broker.bootstrap)
    keyed = op.key_on("key", kafka_input("in", flow, settings, [topic], tail=False),
                      lambda m: m.key().decode())
    op.output("out", stateful_apply("count", keyed, lambda: [0], _count_now),
              TestingSink(after))
    run_main(flow, recovery_config=recovery)
    assert sorted(v for _, (v, _) in after) == [b"b0", b"b1", b"b2"]  # nothing read twice
    assert sorted(n for _, (_, n) in after) == [6, 7, 8]  # the count went on
