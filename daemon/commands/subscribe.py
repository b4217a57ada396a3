from . import Command


class Subscribe(Command):
    """How to receive events ("subscribe info"): the PUB ``endpoint`` to
    connect a SUB socket to, the ``topics`` and the message format. Each
    event is two frames: the topic (e.g. ``meter.host``) and a JSON object.
    Topics: ``meter.CHANNEL`` (~20 Hz: peak/RMS in and out in dBFS, gain
    reduction in dB), ``event.param`` (address, value, source), ``event.xrun``
    (count, deadline_misses), ``event.bad_input`` (NaN/Inf samples arrived
    on the input ports and were silenced: ``bad_samples``, the total, and
    ``new_bad_samples``; at most ~20 a second), ``event.state`` (ready,
    with ``latency_frames``, again with the new ``period`` after a JACK
    period change; reconnecting, stalled: the JACK server runs no cycles,
    e.g. a frozen jackd; reloaded, stopping), ``event.learn`` (a MIDI binding made
    or timed out).
    A slow subscriber only loses its own messages: the daemon never waits
    for one."""

    name = "subscribe"
    args = {}

    def execute(self, ctx, args):
        return {"endpoint": ctx.events_endpoint,
                "topics": [f"meter.{c}" for c in ctx.registry.channels()]
                + ["event.param", "event.xrun", "event.bad_input", "event.state", "event.learn"],
                "format": "two frames: topic, JSON object", "meter_hz": ctx.meter_hz}
