"""The Celery app's defences against kombu's failure modes on a Redis restart."""

from __future__ import annotations

from kombu.common import ignore_errors


def test_closing_a_broker_connection_whose_transport_kombu_already_detached_is_not_fatal(redis_server):
    # What a Redis restart did to a worker: kombu detached the transport (client None), then closing the channel
    # tried to restore its unacked messages through it, raised AttributeError ('NoneType' ... 'hostname'), which
    # Celery's connection-error handling lets through, and the worker exited.
    from console.celery import app

    connection = app.connection_for_write()
    channel = connection.default_channel
    channel.qos._delivered["tag-of-a-running-task"] = None  # an unacked delivery to restore at close
    channel._pool = None
    connection.transport.client = None
    ignore_errors(connection, connection.close)  # raises nothing now: a connection error, which it ignores
