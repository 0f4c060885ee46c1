"""ai_events to a subscriber that never reads: PUB drops at its HWM, nothing queues without bound."""

from __future__ import annotations

import trio
import zmq

from switchyard.services.inference.events import EventPublisher


async def test_never_reading_subscriber_does_not_stall_or_grow_the_publisher() -> None:
    publisher = EventPublisher("tcp://127.0.0.1:*", capacity=1000, sndhwm=200)
    ctx = zmq.Context.instance()
    async with trio.open_nursery() as nursery:
        endpoint = await nursery.start(publisher.run)
        stuck = ctx.socket(zmq.SUB)
        stuck.setsockopt(zmq.RCVHWM, 100)
        stuck.setsockopt(zmq.RCVBUF, 64 * 1024)
        stuck.setsockopt(zmq.LINGER, 0)
        stuck.setsockopt(zmq.SUBSCRIBE, b"")
        stuck.connect(endpoint)
        live = ctx.socket(zmq.SUB)
        live.setsockopt(zmq.LINGER, 0)
        live.setsockopt(zmq.SUBSCRIBE, b"")
        live.connect(endpoint)
        await trio.sleep(0.3)  # let both subscriptions arrive
        body = b"e" * 4096
        try:
            with trio.fail_after(20):
                for round_ in range(50):
                    for _ in range(400):
                        publisher.publish_frames([publisher.topic, body])
                    while publisher.stats["published"] + publisher.stats["dropped"] < 400 * (round_ + 1):
                        await trio.sleep(0.001)
                    while live.poll(0):
                        live.recv_multipart()
            # The live subscriber still receives fresh events.
            publisher.publish_frames([publisher.topic, b"last"])
            with trio.fail_after(3):
                while True:
                    if live.poll(0) and live.recv_multipart()[1] == b"last":
                        break
                    await trio.sleep(0.002)
        finally:
            stuck.close()
            live.close()
            nursery.cancel_scope.cancel()
    assert publisher.stats["published"] >= 20_000  # never blocked on the stuck subscriber
