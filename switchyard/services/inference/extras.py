"""Optional parts of the ZeroMQ inference service: silero-vad and ai_events on Redis.

:func:`attach_extras` is called by the service once its engine runs: it registers
``voice_activity_detection`` (when ``vad_enabled`` and silero-vad is installed; a
missing package is one warning, not an error) and, for ``events = "redis"`` or
``"both"``, starts a :class:`~switchyard.services.inference.redis_events.RedisEventPublisher`
in the actor's nursery. Neither needs Redis at start: the default app runs offline.
"""

from __future__ import annotations

from typing import Any

from switchyard.runtime import Actor
from switchyard.services.inference.vad import VadConfig, VadUnavailable, register_vad

__all__ = ["attach_extras"]


async def attach_extras(actor: Actor, config: Any, events: Any) -> Any:
    """Hook VAD into ``actor.engine``; return the event sink to use (``events``, a Redis one, or both)."""
    if getattr(config, "vad_enabled", False):
        try:
            await register_vad(actor.engine, VadConfig())  # type: ignore[attr-defined]
        except (VadUnavailable, ImportError) as exc:
            actor.log.warning("voice_activity_detection off: %s", exc)
    mode = getattr(config, "events", "zmq")
    if mode not in ("redis", "both"):
        return events
    from switchyard.services.inference.redis_events import FanOut, RedisEventPublisher

    redis_pub = RedisEventPublisher(config.redis_url, channel=config.events_topic, logger=actor.log)
    url = await actor.nursery.start(redis_pub.run)
    actor.log.info("ai_events on redis %s channel %r", url, config.events_topic)
    if events is None:
        return redis_pub
    return FanOut([events, redis_pub])
