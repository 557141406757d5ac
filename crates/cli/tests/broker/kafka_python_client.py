"""kafka-python (a pure-Python Kafka client) against `ember broker`.

    python3 kafka_python_client.py BOOTSTRAP

Prints a JSON summary of two checks: ListOffsets with the max-timestamp sentinel
(OffsetSpec.MAX_TIMESTAMP, -3, KIP-734), and two consumers of one group polled in turn
from one thread, which must keep one generation and commit without a rebalance error.
"""

import json
import sys
import time

from kafka import KafkaConsumer, KafkaProducer, OffsetSpec, TopicPartition
from kafka.admin import KafkaAdminClient
from kafka.errors import KafkaError

server = sys.argv[1]
out = {}

producer = KafkaProducer(bootstrap_servers=server)
base = 1_800_000_000_000
# Timestamps out of order: the largest is on record 27, not the last one.
stamps = [base + ((i * 37) % 100) * 1000 for i in range(100)]
for i, ts in enumerate(stamps):
    producer.send("stamps", value=b"%d" % i, partition=0, timestamp_ms=ts)
for i in range(40):
    producer.send("pair", value=b"%d" % i)
producer.flush()

admin = KafkaAdminClient(bootstrap_servers=server)
tp = TopicPartition("stamps", 0)
found = admin.list_partition_offsets({tp: OffsetSpec.MAX_TIMESTAMP})[tp]
out["max_timestamp"] = [found.offset, found.timestamp]
out["expected"] = [stamps.index(max(stamps)), max(stamps)]

consumers = [
    KafkaConsumer(
        "pair",
        bootstrap_servers=server,
        group_id="pair",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    for _ in range(2)
]
started = time.time()
while time.time() - started < 90 and not all(
    c.assignment() and c._coordinator.generation_if_stable() for c in consumers
):
    for c in consumers:
        c.poll(timeout_ms=200)
out["settled_after_s"] = round(time.time() - started, 1)

generations = set()
failures = []
for _ in range(14):
    for c in consumers:
        c.poll(timeout_ms=300)
        try:
            c.commit()
        except KafkaError as e:
            failures.append(type(e).__name__)
        g = c._coordinator.generation_if_stable()
        generations.add(g.generation_id if g else None)
out["commit_failures"] = failures
out["generations"] = sorted(str(g) for g in generations)
out["partitions"] = sorted(len(c.assignment()) for c in consumers)
for c in consumers:
    c.close()
print(json.dumps(out))
