"""A history request persistence cannot serve is answered at once with a typed failure (issue 21): a malformed
request used to get no answer, and its requester waited its whole timeout."""
import time

import pika
import pytest

from conftest import Stack


@pytest.fixture(scope="module")
def plain():
    s = Stack("history-fail").start()
    yield s
    s.stop()


def test_a_malformed_history_request_is_answered_with_a_failure_at_once(plain):
    params = pika.URLParameters(plain.amqp_url.replace("/" + plain.vhost, "/" + plain.vhost.replace("/", "%2F")))
    connection = pika.BlockingConnection(params)
    try:
        channel = connection.channel()
        reply_queue = channel.queue_declare("", exclusive=True).method.queue
        started = time.monotonic()
        channel.basic_publish("", "chat.persistence.history", b"{not json",
                              pika.BasicProperties(reply_to=reply_queue, correlation_id="bad-1"))
        reply = None
        while time.monotonic() - started < 3 and reply is None:
            method, properties, body = channel.basic_get(reply_queue, auto_ack=True)
            if method:
                reply = (properties, body)
            else:
                connection.sleep(0.05)
        assert reply is not None, "no answer within 3 s"
        properties, body = reply
        assert properties.correlation_id == "bad-1"
        assert properties.headers.get("x-failure") == "malformed history request", properties.headers
        print(f"malformed history request answered in {(time.monotonic() - started) * 1000:.0f} ms")
    finally:
        connection.close()
