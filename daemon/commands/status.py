from . import Command


class Status(Command):
    """The daemon's state in one reply, for operators and monitoring.

    Result: ``ready`` (audio flows, connections made), ``channels``,
    ``sample_rate``, ``period``, ``latency_frames`` and ``latency_ms`` (the
    declared latency through the daemon, also reported to JACK on the
    ports: fixed for a JACK period, moved in place when the period
    changes), ``model``, ``backend`` (where it runs: ``cpu``,
    ``cuda-graph (GPU)``, or ``cpu (fallback: REASON)`` after a GPU
    problem; on the CPU, `` [torch step: REASON]`` follows when the neural
    model runs its torch step instead of the compiled C step), ``cycles``, ``xruns``, ``deadline_misses`` and
    ``missed_frames`` (cycles and frames served by the dry fallback),
    ``hops``, ``late_hops``, ``skipped_hops``, ``hop_time`` (engine p50/p99
    ms), ``callback_load_p50``/``_p99`` (share of a period), ``callback``
    (which JACK process callback runs: ``c``, the compiled one that never
    takes the GIL, or ``python (REASON)``, the fallback, e.g. when it was
    not built), ``jack_version`` (the JACK implementation, as its libjack
    says: e.g. ``1.9.21`` for JACK2, ``3.0.0.0 (using PipeWire 0.3.65)``
    under PipeWire's JACK layer), ``reconnects``, ``jack_stalled_s`` (seconds the JACK
    server has run no cycle while the daemon stays connected, e.g. a
    frozen jackd; ``ready`` is false meanwhile; null when it runs),
    ``bad_samples`` (NaN/Inf samples that
    arrived on the input ports, each replaced by silence before the
    suppressor, the bypass path and the meters saw it), ``meters``
    (latest per channel), ``params`` (every channel's values) and ``midi``:
    MIDI control's ``enabled``, ``running`` and ``mapping`` (the file), and
    while it runs its bindings, ports and counters; while it does not,
    ``problem`` says why (disabled in the config, not started yet, or a
    broken mapping file with every problem in it: fix the file, then
    ``reload`` starts MIDI).
    """

    name = "status"
    args = {}

    def execute(self, ctx, args):
        st = ctx.daemon.status()
        st["midi"] = ctx.daemon.midi_status()
        return st
