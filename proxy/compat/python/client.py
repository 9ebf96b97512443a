#!/usr/bin/env python3
"""rdmq compatibility fixture: the official RocketMQ 5 Python gRPC client.

Package: PyPI rocketmq-python-client==5.1.2 (import rocketmq). Plaintext, no credentials.

    client.py produce <endpoint> <topic> <sizes> <prefix>
    client.py consume <endpoint> <topic> <group> <count> <ack|noack> <invisible_secs>

stdout carries only the contract lines (SENT / RECEIVED / TOTAL); everything else goes to stderr.
The client library itself logs to ~/logs/rocketmq_python/rocketmq_client.log.
Exit status: 0 success, 1 error (an `ERROR <text>` line on stderr), 2 usage.
The whole program is bounded by a watchdog (HARD_LIMIT_SECS) so it never outlives the test.
"""
import hashlib
import json
import os
import sys
import threading
import time

HARD_LIMIT_SECS = 85  # whole-program bound (the contract says 90 s)
CONSUME_LIMIT_SECS = 60  # give up receiving after this long
AWAIT_SECS = 5  # long-polling duration
BATCH = 16
UNICODE_VALUE = "h\u00e9llo \u2603"  # "héllo ☃"


def log(text):
    sys.stderr.write(text + "\n")
    sys.stderr.flush()


def die(text, code=1):
    """Print the error and leave at once: the client's non-daemon threads must not keep us alive."""
    log("ERROR " + " ".join(str(text).split()))
    sys.stdout.flush()
    os._exit(code)


def start_watchdog():
    def fire():
        die("timeout: program ran longer than %d s" % HARD_LIMIT_SECS)

    t = threading.Timer(HARD_LIMIT_SECS, fire)
    t.daemon = True
    t.start()


def body_for(i, size):
    return bytes((j * 7 + i * 13) % 256 for j in range(size))


def configuration(endpoint):
    from rocketmq import ClientConfiguration, Credentials

    # Empty access key / secret key: the client sends no signature.
    return ClientConfiguration(endpoint, Credentials(), request_timeout=3)


def produce(endpoint, topic, sizes, prefix):
    from rocketmq import Message, Producer

    producer = Producer(configuration(endpoint), (topic,), tls_enable=False)
    started = False
    try:
        # startup() does not raise when the route query fails (it only logs it);
        # the first send() then raises.
        producer.startup()
        started = True
        for i, size in enumerate(sizes):
            msg = Message()
            msg.topic = topic
            msg.body = body_for(i, size)
            msg.tag = "tag-%s" % prefix
            # Quirk: `keys` is a property whose setter takes ONE string per assignment and
            # accumulates into a set; assigning a list raises.
            msg.keys = "key-%s-%d" % (prefix, i)
            msg.keys = "alt-%s-%d" % (prefix, i)
            msg.add_property("index", str(i))
            msg.add_property("prefix", prefix)
            msg.add_property("unicode", UNICODE_VALUE)
            receipt = producer.send(msg)
            sys.stdout.write("SENT %d %s\n" % (i, receipt.message_id))
            sys.stdout.flush()
    except Exception as e:  # noqa: BLE001 - every failure is reported the same way
        die("produce failed: %s: %s" % (type(e).__name__, e))
    finally:
        if started:
            try:
                producer.shutdown()  # sends NotifyClientTermination
            except Exception as e:  # noqa: BLE001
                log("shutdown failed: %s: %s" % (type(e).__name__, e))
    return 0


def describe(m):
    body = m.body or b""
    return {
        "id": m.message_id,
        "tag": m.tag if m.tag else None,
        "keys": sorted(m.keys or []),
        "props": dict(m.properties or {}),
        "size": len(body),
        "sha256": hashlib.sha256(body).hexdigest(),
        # None when the server leaves SystemProperties.delivery_attempt unset (or 0).
        "attempt": m.delivery_attempt if m.delivery_attempt else None,
        "topic": m.topic,
    }


def consume(endpoint, topic, group, count, ack, invisible_secs):
    from rocketmq import FilterExpression, SimpleConsumer

    consumer = SimpleConsumer(
        configuration(endpoint),
        group,
        {topic: FilterExpression("*")},
        await_duration=AWAIT_SECS,
        tls_enable=False,
    )
    got = 0
    started = False
    deadline = time.monotonic() + CONSUME_LIMIT_SECS
    try:
        consumer.startup()
        started = True
        while got < count:
            if time.monotonic() >= deadline:
                raise TimeoutError(
                    "received %d of %d messages within %d s" % (got, count, CONSUME_LIMIT_SECS)
                )
            messages = consumer.receive(BATCH, invisible_secs) or []
            for m in messages:
                line = json.dumps(describe(m), ensure_ascii=False, separators=(",", ":"))
                sys.stdout.write("RECEIVED " + line + "\n")
                sys.stdout.flush()
                got += 1
                if ack:
                    consumer.ack(m)
    except Exception as e:  # noqa: BLE001
        die("consume failed after %d messages: %s: %s" % (got, type(e).__name__, e))
    finally:
        if started:
            try:
                consumer.shutdown()  # sends NotifyClientTermination
            except Exception as e:  # noqa: BLE001
                log("shutdown failed: %s: %s" % (type(e).__name__, e))
    sys.stdout.write("TOTAL %d\n" % got)
    sys.stdout.flush()
    return 0


USAGE = (
    "usage: client.py produce <endpoint> <topic> <sizes> <prefix>\n"
    "       client.py consume <endpoint> <topic> <group> <count> <ack|noack> <invisible_secs>"
)


def main(argv):
    start_watchdog()
    try:
        if len(argv) == 5 and argv[0] == "produce":
            _, endpoint, topic, sizes_arg, prefix = argv
            sizes = [int(s) for s in sizes_arg.split(",") if s.strip()]
            if not sizes or any(s <= 0 for s in sizes):
                raise ValueError("sizes must be a comma list of positive integers: %r" % sizes_arg)
            return lambda: produce(endpoint, topic, sizes, prefix)
        if len(argv) == 7 and argv[0] == "consume":
            _, endpoint, topic, group, count_arg, mode, inv_arg = argv
            count = int(count_arg)
            invisible = int(inv_arg)
            if mode not in ("ack", "noack"):
                raise ValueError("mode must be ack or noack, got %r" % mode)
            if count < 0 or invisible <= 0:
                raise ValueError("count must be >= 0 and invisible_secs > 0")
            return lambda: consume(endpoint, topic, group, count, mode == "ack", invisible)
    except ValueError as e:
        log(USAGE)
        die("bad arguments: %s" % e, 2)
    log(USAGE)
    die("bad arguments: %s" % " ".join(argv), 2)


if __name__ == "__main__":
    run = main(sys.argv[1:])
    rc = run()
    sys.stdout.flush()
    sys.stderr.flush()
    # The client leaves non-daemon threads (schedulers, executors) behind; do not wait for them.
    os._exit(rc)
