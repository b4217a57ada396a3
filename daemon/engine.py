"""The real-time engine: every hop (10 ms), all channels in one batch.

Per hop, for the block ``x[N, H]`` of all N channels::

    x * input gain -> suppressor (one batched call; voice estimate v)
    background b = x_aligned - v
    main = v + r * b            r from strength (floor on attenuation) and
                                background_db (remix level), per channel
    -> the channel's post-chain (pedalboard / plugins / our stages)
    -> bypass crossfade (to the input delayed by the same latency, bit-exact)
    -> mute, output gain -> meters -> output ring

Parameters are read once per hop from an immutable snapshot
(:meth:`Engine.set_params` swaps the whole tuple), and every change is
ramped over one hop: no zipper noise, no click on bypass or mute.

Timing and latency. The engine processes hop ``k`` (input frames
``[kH, (k+1)H)``) once the JACK callback has published it, and writes the
result at output frames ``[kH + B, (k+1)H + B)``. ``B`` is the smallest
buffering that lets every hop's output be ready before the callback needs
it for any JACK period ``P`` (``H + P - gcd(H, P)``), plus ``safety_ms``
for the engine's own compute time. The daemon's latency is therefore fixed
for a period, and declared::

    latency = suppressor latency + longest post-chain latency + B

Channels with shorter post-chains are padded so all channels stay aligned
with one another. A chain's latency never moves while it runs: in a plugin
stage with ``live_latency``, a live value that would lengthen the plugin's
latency is refused (the registry foresees it on the supervisor thread), a
shorter one is padded by its stage (:meth:`Engine.plan_latency`); in other
plugin stages such a value shifts the stage's output. If the engine misses a deadline, the callback plays the
dry input delayed by exactly this latency (see jackio.py) and counts it.
When the JACK period changes, ``B`` follows it in place, with a 10 ms
crossfade in the output ring (:meth:`Engine.change_period`).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from quietcast.bridge.errors import ParameterError
from quietcast.bridge.stages import DelayLine, DenoiseStage
from quietcast.models.base import HOP, all_finite, sanitize

from . import jackio
from .config import GATE_PARAMS

log = logging.getLogger("quietcast.engine")

#: the engine's settings that are the suppressor's own parameters, which some models lack (the
#: ``dsp`` model has no pitch filter and no pause gate): a refusal names ``[engine] KEY``
ENGINE_STAGE_KEYS = ("pitch_filter", *GATE_PARAMS)


def _out_gains(params) -> np.ndarray:
    """Each channel's output gain for a parameter snapshot (0 while muted),
    as :meth:`Engine._targets` has it, without its cache (any thread)."""
    return np.asarray([0.0 if p.mute else _lin(p.output_gain_db) for p in params], np.float32)


@dataclass(frozen=True)
class ChannelParams:
    """Live parameters of one channel (an immutable snapshot)."""

    strength: float = 1.0  # 0..1 share of the engine's max attenuation
    input_gain_db: float = 0.0
    output_gain_db: float = 0.0  # -inf = silence
    background_db: float = -math.inf  # background remixed into the main output
    pause_db: float | None = None  # the pause gate's depth; None: the engine's (gate_defaults)
    pause_threshold: float | None = None  # the speech probability it closes below; None: the engine's
    bypass: bool = False
    mute: bool = False


def _lin(db: float) -> float:
    return 0.0 if db == -math.inf else 10.0 ** (db / 20.0)


def buffering(hop: int, period: int, safety: int) -> int:
    """Frames of buffering so that every hop's output is ready in time for
    a JACK period of ``period`` frames: ``hop + period - gcd(hop, period)``
    plus ``safety`` frames for compute time."""
    return hop + period - math.gcd(hop, period) + safety


@dataclass
class EngineStats:
    hops: int = 0
    late_hops: int = 0  # finished after the callback had passed their slot
    skipped_hops: int = 0  # dropped to catch up after a stall
    stalls: int = 0
    bad_samples: int = 0  # NaN/Inf input samples replaced by silence (on every path, the dry one too)


class Engine:
    """All channels' processing. Build on the main thread (hosted plugins
    must be loaded there); :meth:`run` on the engine thread.

    Args:
        channels: channel configs (``name``, ``chain`` (a bridge Chain or
            None), ``stems`` and the :class:`ChannelParams` fields; and
            optionally ``processor``: that chain built already, mono at
            ``sample_rate``, which the engine runs instead of building it).
        sample_rate: the JACK server's rate.
        model, max_attenuation_db, safety_ms, max_backlog_ms, device,
            pitch_filter, pause_db, pause_threshold: engine settings
            (``device``: where the suppressor runs, see
            :func:`quietcast.models.neural.resolve_device`; the reason for a
            CPU fallback is logged and shown in :attr:`backend`;
            ``pitch_filter``: the neural model's pitch filter strength,
            ``pause_db``: its pause gate's depth, ``pause_threshold``: the
            speech probability below which the gate closes; None for the
            model's own; a channel's own ``pause_db`` or
            ``pause_threshold`` overrides these two).
    """

    def __init__(self, channels: list[Any], sample_rate: int, *, model: str = "default",
                 max_attenuation_db: float | None = None, safety_ms: float = 10.0,
                 max_backlog_ms: float = 500.0, slow_hop_s: float = 0.0, device: str = "cpu",
                 pitch_filter: float | None = None, pause_db: float | None = None,
                 pause_threshold: float | None = None):
        self.sample_rate = int(sample_rate)
        self.names = [c.name for c in channels]
        self.stems = [bool(getattr(c, "stems", False)) for c in channels]
        n = self.n = len(channels)
        self.hop = max(1, round(self.sample_rate / 100))
        self.safety = int(round(safety_ms * self.sample_rate / 1000.0))
        self.max_backlog = self._max_backlog_asked = int(max_backlog_ms * self.sample_rate / 1000.0)
        self.slow_hop_s = slow_hop_s  # test hook: an injected slow stage
        try:
            self.sup = DenoiseStage("nr", self.sample_rate, n, model=model, strength=1.0,
                                    max_attenuation_db=max_attenuation_db, whole_hops=self.hop == HOP, device=device,
                                    pitch_filter=pitch_filter, pause_db=pause_db, pause_threshold=pause_threshold)
        except ParameterError as e:
            # the stage names its own parameter ("nr.pause_db"); the user wrote [engine] pause_db
            key = e.address.removeprefix("nr.")
            if key == e.address or key not in ENGINE_STAGE_KEYS:
                raise
            raise ParameterError(f"[engine] {key}", str(e).removeprefix(f"{e.address}: ")) from None
        self.model = self.sup.model
        self.max_attenuation_db = self.sup.values["max_attenuation_db"]
        #: ``pause_db`` and ``pause_threshold`` of a channel that sets none of its own (the engine's
        #: settings or the model's own); empty when the model has no pause gate
        self.gate_defaults: dict[str, float] = ({} if "pause_db" not in self.sup.values else
                                                {g: self.sup.values[g] for g in GATE_PARAMS})
        self._pause_last: dict[str, list[float]] = {}
        self._pause_params = None  # the snapshot _apply_pause last read
        if self.pause_default is None:
            for c in channels:
                for g in GATE_PARAMS:
                    if getattr(c, g, None) is not None:
                        raise ParameterError(f"{c.name}.{g}", f"model {model!r} has no pause gate "
                                                             "(the shipped neural models do)")
        self.chains = [self._chain_of(c) for c in channels]
        #: channel -> [old chain, its pad, hops since the swap, (a swap waiting for the crossfade's end,) or None]
        self._chain_fades: dict[int, list] = {}
        self.chain_fade_hops = 2  #: then the crossfade from the old chain, 20 ms
        self.align_delay = DelayLine(n, self.sup.latency)  # x (after input gain) lined up with the voice
        self._plan_latency()
        self.params: tuple[ChannelParams, ...] = tuple(
            ChannelParams(**{f: getattr(c, f) for f in ChannelParams.__dataclass_fields__ if hasattr(c, f)})
            for c in channels
        )
        self._writers = threading.Lock()  # serialises set_params callers (never the engine thread)
        self._tgt_params = self._tgt = None  # the snapshot _targets last computed, and its result
        self._prev = self._targets(self.params)
        self._ramp = (np.arange(1, self.hop + 1, dtype=np.float32) / self.hop)[None, :]
        self.stats = EngineStats()
        self.hop_times = np.zeros(1024, np.float64)
        self._meter_snap = None  # (peak in, peak out, rms in, rms out, gain reduction), dB arrays
        self._scratch = None  # the meters' work buffer
        self._acc = self._new_acc()
        self._stop = threading.Event()
        self.io: jackio.JackIO | None = None
        self.B = 0
        self._ring_lock = threading.Lock()  # the output ring's writers: this thread, and change_period
        self._fade: tuple[int, np.ndarray] | None = None  # a period change's crossfade still to write (_fade_in)
        self.next_in = 0
        self.registry = None  # set by the daemon: chain changes queued for this thread
        self.realtime = False  # whether the engine thread got SCHED_FIFO
        self._from_dry = False  # the next hop follows a dry fill (_skip_ahead): crossfade from it

    def _chain_of(self, c) -> Any:
        """Channel ``c``'s chain processor (mono, at the engine's rate), or
        None: the one it brings built already (``c.processor``, e.g. by the
        start-up check), else its ``chain`` built now."""
        chain = getattr(c, "chain", None)
        if not chain:
            return None
        proc = getattr(c, "processor", None)
        if proc is None:
            return chain.processor(self.sample_rate, 1)
        why = ("built from another chain" if proc.chain is not chain else
               None if (proc.sample_rate, proc.channels) == (self.sample_rate, 1) else
               f"built for {proc.channels} channel(s) at {proc.sample_rate} Hz")
        if why:
            raise ValueError(f"channel {c.name!r}: the chain processor it brings was {why}; the engine runs the "
                             f"channel's chain mono at {self.sample_rate} Hz")
        return proc

    # ------------------------------------------------------------------
    # latency

    def _plan_latency(self) -> None:
        """The chain budget, each channel's pad to it, the stem and dry
        delays and :attr:`processing_latency`, from the chains' latencies
        now (before the engine runs)."""
        n, ls = self.n, self.sup.latency
        lc = [p.latency if p else 0 for p in self.chains]
        lmax = max(lc) if lc else 0
        self.chain_budget = lmax  # a swapped-in chain may use up to this much latency
        self.chain_pad = [DelayLine(1, lmax - L) for L in lc]
        #: hops a swapped-in chain runs unheard (its latency and pad fill, plus 100 ms to settle)
        self.chain_warmup_hops = -(-lmax // self.hop) + 10
        self.stem_delay = DelayLine(2 * n, lmax)
        self.dry_delay = DelayLine(n, ls + lmax)  # raw input lined up with the output (bypass)
        self.processing_latency = ls + lmax

    def plan_latency(self) -> None:
        """After the live chain values were put back into a new engine
        (``Registry.reapply``, before it declares its latency): plan the
        latency again (a value may have lengthened a hosted plugin's
        latency), and from now on refuse a live value that would lengthen a
        chain's (:meth:`ChainProcessor.fix_latency`): the latency declared
        to JACK, in ``status`` and by the dry fallback stays true. A value
        that shortens a plugin's latency is padded by its stage: nothing
        moves."""
        self._plan_latency()
        for proc in self.chains:
            if proc is not None:
                proc.fix_latency()


    @property
    def pause_default(self) -> float | None:
        """The pause gate's depth of a channel that sets none (engine.pause_db
        or the model's own); None: the model has no pause gate."""
        return self.gate_defaults.get("pause_db")

    @property
    def backend(self) -> str:
        """Where the suppressor runs: "cpu", "cuda-graph (DEVICE)", "cpu
        (fallback: REASON)", ... (a GPU failure mid-stream changes it)."""
        return self.sup.suppressor.backend
    def latency_for_period(self, period: int) -> int:
        """The daemon's total latency in frames for a JACK period."""
        return self.processing_latency + buffering(self.hop, period, self.safety)

    # ------------------------------------------------------------------
    # parameters

    def set_params(self, name: str, **changes) -> ChannelParams:
        """Replace one channel's snapshot (values must already be checked).
        Takes effect at the next hop, ramped over that hop."""
        i = self.names.index(name)
        with self._writers:  # control, MIDI and reload threads; the engine never takes it
            new = replace(self.params[i], **changes)
            params = list(self.params)
            params[i] = new
            self.params = tuple(params)  # one reference swap: the engine reads it once per hop
            if self.io is not None:  # the dry fallback hears a mute at once, even while the engine is stalled
                self.publish_dry_gains(self.io)
        return new

    def _targets(self, params) -> dict[str, np.ndarray]:
        """Each channel's linear input gain, remix factor, output gain and
        bypass (``[N, 1]`` each) for a parameter snapshot. Computed once
        per snapshot (the engine thread asks every hop; a snapshot is only
        replaced by :meth:`set_params`)."""
        if params is self._tgt_params:
            return self._tgt
        A = self.max_attenuation_db
        ga = _lin(-A)
        in_g, r, byp = [], [], []
        for p in params:
            in_g.append(_lin(p.input_gain_db))
            floor = _lin(-p.strength * A)
            rs = (floor - ga) / (1.0 - ga) if A > 0 else 1.0
            r.append(max(rs, _lin(p.background_db)))
            byp.append(1.0 if p.bypass else 0.0)
        f = lambda v: np.asarray(v, np.float32)[:, None]  # noqa: E731
        tgt = {"in": f(in_g), "r": f(r), "out": _out_gains(params)[:, None], "bypass": f(byp)}
        # which factors are all 1 (or, for bypass, all 0): a hop that holds them skips the multiply
        tgt["unit"] = {k for k in ("in", "out") if bool((tgt[k] == 1.0).all())} | (
            {"bypass"} if not tgt["bypass"].any() else set())
        self._tgt_params, self._tgt = params, tgt
        return tgt

    def _apply_pause(self, params) -> None:
        """Each channel's pause-gate depth and threshold to the suppressor,
        when one changed (the gate moves there at its own pace: no
        zipper)."""
        if params is self._pause_params:  # no new snapshot since the last hop
            return
        self._pause_params = params
        sup = self.sup.suppressor
        put = {"pause_db": sup.set_channel_pause_db, "pause_threshold": sup.set_channel_pause_threshold}
        for g, dflt in self.gate_defaults.items():
            vals = [dflt if getattr(p, g) is None else getattr(p, g) for p in params]
            if vals != self._pause_last.get(g):
                put[g](vals)
                self._pause_last[g] = vals

    def _ramped(self, key: str, tgt: dict) -> np.ndarray:
        a, b = self._prev[key], tgt[key]
        if a is b or np.array_equal(a, b):
            return b
        return a + (b - a) * self._ramp

    # ------------------------------------------------------------------
    # one hop

    def process_hop(self, x: np.ndarray) -> np.ndarray:
        """``x[N, H]`` raw input -> ``[outputs, H]``: main for every channel,
        then voice and background for channels with stems.

        A hop that holds the previous hop's snapshot (no change to ramp)
        skips the factors that are 1 for every channel (input and output
        gain at 0 dB) and the bypass crossfade when no channel is bypassed:
        at a thousand channels each is a pass over 2 MB (bench/engine_hop.py)."""
        reg = self.registry
        if reg is not None and reg.pending:
            reg.apply_pending(self)
        params = self.params
        tgt = self._targets(params)
        if self.pause_default is not None:
            self._apply_pause(params)
        if self.slow_hop_s:
            time.sleep(self.slow_hop_s)
        if not all_finite(x):  # a NaN or Inf from upstream must not reach the output, the bypass or the meters
            x, bad = sanitize(x)
            self.stats.bad_samples += bad
        unit = tgt["unit"] if tgt is self._prev else ()
        xin = x if "in" in unit else x * self._ramped("in", tgt)
        v = self.sup.process(xin)
        xa = self.align_delay.process(xin)
        bg = xa - v
        main = self._ramped("r", tgt) * bg
        main += v
        if self.chain_budget or any(self.chains) or self._chain_fades:
            self._run_chains(main)
        dry = self.dry_delay.process(x)
        if "bypass" not in unit:
            byp = self._ramped("bypass", tgt)
            if byp.any():
                main = main * (1.0 - byp) + dry * byp
                full = np.asarray(byp.min(axis=1) == 1.0)  # bypassed over the whole hop, not ramping in
                if full.any():  # fully bypassed channels: bit-exact dry
                    main[full] = dry[full]
        out = main if "out" in unit else main * self._ramped("out", tgt)
        self._prev = tgt
        self._meter(x, xa, v, out)
        if not any(self.stems):
            return self._after_gap(out, dry, tgt) if self._from_dry else out
        stems = self.stem_delay.process(np.concatenate([v, bg], axis=0))
        rows = [out]
        for i, s in enumerate(self.stems):
            if s:
                rows.append(stems[[i, self.n + i]])
        y = np.concatenate(rows, axis=0)
        return self._after_gap(y, dry, tgt) if self._from_dry else y

    def _after_gap(self, y: np.ndarray, dry: np.ndarray, tgt: dict) -> np.ndarray:
        """The first hop after :meth:`_skip_ahead`'s dry fill: from what the
        fill would have gone on with (each main output's dry input times its
        gain, a voice stem's dry input, a background stem's silence) to the
        processed hop, over the hop."""
        self._from_dry = False
        fill = [dry * tgt["out"]]
        for i, s in enumerate(self.stems):
            if s:
                fill.append(np.stack([dry[i], np.zeros_like(dry[i])]))
        fill = np.concatenate(fill, axis=0) if len(fill) > 1 else fill[0]
        return fill + (y - fill) * self._ramp

    # ------------------------------------------------------------------
    # meters (~20 Hz snapshots for the control plane)

    def _new_acc(self):
        n = self.n
        return {"hops": 0, "pin": np.zeros(n, np.float32), "pout": np.zeros(n, np.float32),
                "ein": np.zeros(n), "eout": np.zeros(n), "ex": np.zeros(n), "ev": np.zeros(n)}

    def _meter(self, x, xa, v, out) -> None:
        """Accumulate this hop's peaks and energies; every 5 hops publish
        a snapshot (arrays of dB, one reference swap). The per-channel
        dicts of :attr:`meters` are built by whoever reads them, not on
        this thread. Energies are float32 dot products (to about 1e-5 of
        the value: far below the 0.01 dB the meters show)."""
        a = self._acc
        a["hops"] += 1
        sc = self._scratch
        if sc is None or sc.shape != x.shape:
            sc = self._scratch = np.empty(x.shape, np.float32)
        np.maximum(a["pin"], np.abs(x, out=sc).max(axis=1), out=a["pin"])
        np.maximum(a["pout"], np.abs(out, out=sc).max(axis=1), out=a["pout"])
        for key, s in (("ein", x), ("eout", out), ("ex", xa), ("ev", v)):
            a[key] += np.einsum("ij,ij->i", s, s) / s.shape[1]
        if a["hops"] >= 5:
            h = a["hops"]
            db = lambda e: np.round(10.0 * np.log10(np.maximum(e, 1e-12)), 2)  # noqa: E731
            gr = np.minimum(0.0, np.round(10.0 * np.log10(np.maximum(a["ev"], 1e-12) / np.maximum(a["ex"], 1e-12)), 2))
            self._meter_snap = (db(a["pin"].astype(np.float64) ** 2), db(a["pout"].astype(np.float64) ** 2),
                                db(a["ein"] / h), db(a["eout"] / h), gr)
            self._acc = self._new_acc()

    @property
    def meters(self) -> dict:
        """``{channel: {peak_in_db, peak_out_db, rms_in_db, rms_out_db,
        gain_reduction_db}}`` over the last 5 hops (50 ms); empty before
        the first 5. Built from the engine's latest snapshot on each read."""
        return self.meters_for(self.names)

    def meters_for(self, names) -> dict:
        """:attr:`meters` of the channels ``names`` only (the control
        thread builds only what someone subscribed to)."""
        snap = self._meter_snap
        if snap is None:
            return {}
        keys = ("peak_in_db", "peak_out_db", "rms_in_db", "rms_out_db", "gain_reduction_db")
        if names is self.names:
            cols = [c.tolist() for c in snap]
            return {name: dict(zip(keys, vals)) for name, vals in zip(self.names, zip(*cols))}
        at = {n: i for i, n in enumerate(self.names)}
        return {n: dict(zip(keys, (float(c[at[n]]) for c in snap))) for n in names if n in at}

    # ------------------------------------------------------------------
    # the engine thread

    def attach(self, io: jackio.JackIO) -> None:
        """Start serving ``io`` (after it opened): positions from zero."""
        self.io = io
        self.B = buffering(self.hop, io.period, self.safety)
        self._fade = None
        #: the engine's output by input frame (``u(v)`` at ``v``; the last UHISTORY frames), whatever
        #: the buffering was when it was written: where a period change reads the output at its new
        #: mapping (the output ring holds it by output frame, each stretch at the buffering of its time)
        self._uring = np.zeros((io.outring.shape[0], self.UHISTORY), np.float32)
        for proc in self.chains:  # (the daemon did so before declaring the latency: Daemon._engine_for)
            if proc is not None:
                proc.fix_latency()
        self.next_in = 0
        self._fit_backlog(io.period)
        self.publish_dry_gains(io)

    def _fit_backlog(self, period: int) -> None:
        """The engine reads input up to max_backlog behind the callback,
        which overwrites the ring a lap later: a longer backlog than the
        ring holds at this period would read new audio as old."""
        want = self._max_backlog_asked
        room = jackio.RING - 2 * period - 2 * self.hop - 4096
        if want > room:
            log.warning("max_backlog_ms %.0f is more than the input ring holds at %d Hz: %.0f ms is used",
                        1000.0 * want / self.sample_rate, self.sample_rate, 1000.0 * room / self.sample_rate)
        self.max_backlog = min(want, room)

    def change_period(self, period: int) -> int | None:
        """The JACK period is now ``period``: move the buffering ``B`` (and
        ``io.latency``) to what that period needs, in place, before the
        first cycle of the new size; the new latency, or None when it was
        not done (the latency would not fit the rings; the engine thread
        kept its ring for 0.1 s): the daemon then re-opens its client, as
        it did for every period change before.

        Called in the JACK client's buffer-size callback, on libjack's
        notification thread, while no process callback runs: JACK2 stops
        its driver around the change, and PipeWire's JACK layer runs no
        client's process callback while its buffer-size callback is
        pending (pipewire-jack.c). So every output frame from the
        callback's position on is unplayed and may be written.

        Output frame ``t`` plays the engine's output ``u(t - B)``. From
        the callback's next frame on, the output ring gets ``u`` at the new
        mapping, faded in over the old one across one hop (10 ms,
        :meth:`_rebuffer`): a longer latency plays the frames in between
        again, a shorter one skips them; no silence, no dry path, no port
        re-registered (a period change used to re-open the client: ~50 ms
        of silence)."""
        io = self.io
        if io is None:
            return None
        B2 = buffering(self.hop, period, self.safety)
        latency = self.processing_latency + B2
        if (latency + 2 * period + 4096 > jackio.RING // 2 or B2 + self.hop > self.UHISTORY
                or not self._ring_lock.acquire(timeout=0.1)):
            return None
        try:
            self._fit_backlog(period)
            if B2 != self.B:
                self._rebuffer(B2)
        finally:
            self._ring_lock.release()
        return latency

    def publish_dry_gains(self, io: jackio.JackIO) -> None:
        """Each main output's gain now (0 while muted) to ``io.dry_gain``,
        which the callback applies to its dry fallback: a missed deadline
        must not put a muted or faded channel's raw input on air."""
        io.dry_gain[:self.n] = _out_gains(self.params)

    def stop(self) -> None:
        self._stop.set()

    def run(self) -> None:
        """Process hops as the callback publishes them, until :meth:`stop`."""
        self._stop.clear()
        self.realtime = _try_realtime(1)
        sleep_s = max(0.0005, self.hop / self.sample_rate / 4)
        while not self._stop.is_set():
            if not self.step():
                time.sleep(sleep_s)

    def step(self) -> bool:
        """Process every complete hop available. False when there was none."""
        io = self.io
        if io is None:
            return False
        cnt = io.counters
        H = self.hop
        did = False
        while True:
            pos = int(cnt[jackio.IN_POS])
            k0 = self.next_in
            if k0 + H > pos:
                return did
            if pos - k0 > self.max_backlog:
                self._skip_ahead(pos)
                continue
            x = _ring_read(io.inring, k0, H)
            t0 = time.perf_counter()
            y = self.process_hop(x)
            self.hop_times[self.stats.hops % len(self.hop_times)] = time.perf_counter() - t0
            with self._ring_lock:  # (against change_period on libjack's notification thread)
                B = self.B
                _ring_write(self._uring, k0, y)
                if self._fade is not None:
                    y = self._fade_in(k0 + B, y)
                _ring_write(io.outring, k0 + B, y)
                io.dry_gain[:self.n] = self._targets(self.params)["out"][:, 0]  # publish_dry_gains, cached
                cnt[jackio.OUT_READY] = k0 + B + H
                self.next_in = k0 + H  # (inside: change_period reads where the next hop lands)
            if k0 + B < int(cnt[jackio.IN_POS]):
                self.stats.late_hops += 1
            self.stats.hops += 1
            did = True

    #: frames of the engine's output kept by input frame (:attr:`_uring`): a new buffering reads up to
    #: ``B2`` of them back (a period of up to ~15,000 frames at 48 kHz moves in place)
    UHISTORY = 1 << 14

    def _rebuffer(self, B2: int) -> None:
        """:meth:`change_period`'s move of ``B`` to ``B2`` (ring lock held).

        Over the hop from the callback's next frame ``p``, the ring fades
        from ``s1``, what the callback would play at the old latency (the
        ring up to its published end ``R``, the dry path beyond, where the
        engine is behind), to ``s2``, the output at the new mapping (from
        :attr:`_uring` up to ``R2``, where the engine's next hop will land
        under it; the dry path at the new latency beyond, until the engine's
        hops are there). The part of that hop the engine has yet to write
        (``R2 < p + H``: a shorter period, whose new end comes sooner) is
        faded in as it writes it (:meth:`_fade_in`, from a copy of ``s1``).
        (The published end can be past the engine's: a fade still going
        on from a change a moment ago, whose ``s1`` is then what the
        callback would play.)"""
        io, H = self.io, self.hop
        cnt = io.counters
        p, R = int(cnt[jackio.IN_POS]), int(cnt[jackio.OUT_READY])
        R2 = self.next_in + B2  # the engine's next hop lands there under the new mapping
        D1, D2 = io.latency, self.processing_latency + B2
        s1 = self._dry_block(p, H, D1) if R < p + H else _ring_read(io.outring, p, H)
        if p < R < p + H:
            s1[:, :R - p] = _ring_read(io.outring, p, R - p)
        end = max(R2, p + H)
        s2 = self._dry_block(p, end - p, D2) if R2 < end else _ring_read(self._uring, p - B2, end - p)
        if p < R2 < end:
            s2[:, :R2 - p] = _ring_read(self._uring, p - B2, R2 - p)
        s2[:, :H] = s1 + (s2[:, :H] - s1) * self._ramp
        _ring_write(io.outring, p, s2)
        self._true_step_at(p - 1, R, D1, D2)
        self._fade = (p, s1) if R2 < p + H else None
        self.B = B2
        io.latency = D2  # the dry fallback's too, before the new end is published
        cnt[jackio.OUT_READY] = end

    def _true_step_at(self, q: int, R: int, D1: int, D2: int) -> None:
        """Where the callback's last frame ``q`` was dry, its declick will
        read it at the new latency ``D2`` (its ``was``) against the ring at
        ``q`` (its ``now``); the frame was played at ``D1``. The ring at
        ``q``, never played again, is set so that the step it finds is the
        true one: the dry frame as played minus what the ring's output
        goes on from (the ring at ``q`` where written, ``R > q``, else the
        dry path at ``D1``, where the crossfade starts from)."""
        io = self.io
        rows = [j for j, silent in enumerate(io._dry_silent) if io._last_dry[j] and not silent]
        if not rows:
            return
        now = _ring_read(io.outring, q, 1) if R > q else self._dry_block(q, 1, D1)
        for j in rows:
            x, g = io.inring[io.out_channel[j]], np.float32(io._last_gain[j])
            was_read = jackio._dry_values(x[(q - D2) & jackio.MASK], g)
            was_played = jackio._dry_values(x[(q - D1) & jackio.MASK], g)
            now[j, 0] += was_read - was_played
        _ring_write(io.outring, q, now)

    def _fade_in(self, at: int, y: np.ndarray) -> np.ndarray:
        """Hop output ``y`` (for output frames from ``at``) faded in over
        what a period change's crossfade started from, where the two meet
        (:meth:`_rebuffer`); the fade ends with the hop that passes it."""
        start, s1 = self._fade
        H = self.hop
        lo, hi = max(at, start), min(at + H, start + H)
        if lo < hi:
            y = y.copy()
            a, b = y[:, lo - at:hi - at], s1[:, lo - start:hi - start]
            y[:, lo - at:hi - at] = b + (a - b) * self._ramp[:, lo - start:hi - start]
        if at + H >= start + H:
            self._fade = None
        return y

    def _dry_block(self, start: int, n: int, latency: int) -> np.ndarray:
        """Output frames ``[start, start+n)`` as the callback's dry fallback
        plays them at ``latency``: each output's input that much earlier,
        with the engine's hygiene (NaN/Inf silenced), times its gain, and
        silence for a background stem."""
        io = self.io
        dry = _ring_read(io.inring[[io.out_channel[j] for j in range(len(io.out_names))]], start - latency, n)
        if not all_finite(dry):
            dry, bad = sanitize(dry)
            self.stats.bad_samples += bad
        for j, kind in enumerate(io.out_kind):
            if kind == "background":
                dry[j] = 0.0
        dry[:self.n] *= io.dry_gain[:self.n, None]
        return dry

    def _skip_ahead(self, pos: int) -> None:
        """After a stall: jump to the newest complete hop, fill the output
        gap with the dry path so the callback never reads stale frames."""
        io = self.io
        H = self.hop
        new = (pos // H - 1) * H
        self.stats.stalls += 1
        self.stats.skipped_hops += (new - self.next_in) // H
        with self._ring_lock:  # (against change_period)
            self._fade = None  # (a period change's fade, if one was going on: the fill replaces it)
            ready = int(io.counters[jackio.OUT_READY])
            start = max(ready, pos)
            if start > ready:  # the frame before the fill, which the callback played dry: the fill starts
                start -= 1     # there too, so its declick finds the dry value where it switches to the fill
            end = new + self.B
            if end > start:
                _ring_write(io.outring, start, self._dry_block(start, end - start, io.latency))
                io.counters[jackio.OUT_READY] = end
            # the output history of the hops skipped (never computed): the dry path, as the callback
            # plays it (what a period change reads back, up to UHISTORY frames)
            lo = max(self.next_in, new - self.UHISTORY + H)
            if lo < new:
                _ring_write(self._uring, lo, self._dry_block(lo + self.B, new - lo, io.latency))
            self.next_in = new  # (the hops before it are pre-rolled below, unheard)
        # every stateful part restarts from the new position: reset, then
        # pre-roll the hops just before it (their output is already covered
        # by the dry path) so delay lines hold the right history
        self.reset_state()
        roll = -(-self.processing_latency // H) + 1
        for k in range(max(0, new - roll * H), new, H):
            self.process_hop(_ring_read(io.inring, k, H))
        self._from_dry = True  # the first hop after the gap crossfades from the dry fill: no step

    def _run_chains(self, main: np.ndarray) -> None:
        """Each channel's post-chain, then its pad to :attr:`chain_budget`
        (so every channel has the declared latency whatever its chain's),
        in place. A channel whose chain was just swapped runs the old one
        too: the old is heard while the new one warms up, then the two are
        crossfaded (:meth:`swap_chain`)."""
        H = main.shape[1]
        for i, proc in enumerate(self.chains):
            row = main[i:i + 1]
            new = self.chain_pad[i].process(proc.process(row) if proc else row)
            fade = self._chain_fades.get(i)
            if fade is not None:
                old_proc, old_pad, k, pending = fade
                old = old_pad.process(old_proc.process(row) if old_proc else row)
                w = (k + np.arange(1, H + 1, dtype=np.float32)[None, :] / H - self.chain_warmup_hops) / self.chain_fade_hops
                np.clip(w, 0.0, 1.0, out=w)
                new = old + w * (new - old)
                if k + 1 >= self.chain_warmup_hops + self.chain_fade_hops:
                    del self._chain_fades[i]  # the new chain alone from the next hop
                    if pending is not None:  # a swap that came during the crossfade starts now
                        self.swap_chain(i, pending[0])
                else:
                    fade[2] = k + 1
            main[i:i + 1] = new

    def swap_chain(self, i: int, proc) -> None:
        """Replace channel ``i``'s post-chain (engine thread, at a hop
        boundary); its latency must fit :attr:`chain_budget`.

        No gap and no click: the channel keeps sounding through the old
        chain for :attr:`chain_warmup_hops` hops while the new one (and its
        pad to the budget) fills with the live signal, then the output
        crossfades to the new one over :attr:`chain_fade_hops` hops. A swap
        during a swap's warm-up keeps the chain being heard and warms up the
        newest one instead; one during the crossfade waits for its end (at
        most :attr:`chain_fade_hops` hops), so nothing audible is cut."""
        L = proc.latency if proc else 0
        if L > self.chain_budget:
            raise ValueError(f"chain latency {L} exceeds the budget of {self.chain_budget} frames")
        if proc is not None:
            proc.fix_latency()  # (its live values were put in before: from now on its latency stays)
        fade = self._chain_fades.get(i)
        if fade is None:  # what is heard now becomes the old side
            self._chain_fades[i] = [self.chains[i], self.chain_pad[i], 0, None]
        elif fade[2] >= self.chain_warmup_hops:  # crossfading: the new one is partly heard already
            fade[3] = (proc,)
            return
        else:
            fade[2] = 0
        self.chains[i] = proc
        self.chain_pad[i] = self._pad_for(proc)

    def chain(self, i: int):
        """The post-chain channel ``i`` runs from now on: one that waits for
        a crossfade to end (:meth:`swap_chain`), else :attr:`chains`' (the
        chain its parameters address: a value set or read is the newest
        chain's, even before it is heard)."""
        fade = self._chain_fades.get(i)
        return fade[3][0] if fade is not None and fade[3] is not None else self.chains[i]

    def _pad_for(self, proc) -> DelayLine:
        """The delay that brings a chain (or none) to :attr:`chain_budget`."""
        return DelayLine(1, self.chain_budget - (proc.latency if proc else 0))

    def reset_state(self) -> None:
        """Forget all signal state (suppressor, chains, delay lines)."""
        self._from_dry = False
        self.sup.reset()
        for d in (self.align_delay, self.dry_delay, self.stem_delay, *self.chain_pad):
            d.reset()
        for i, fade in list(self._chain_fades.items()):  # after a reset nothing old is worth hearing
            del self._chain_fades[i]
            if fade[3] is not None:  # but a swap waiting for its turn is made
                self.chains[i] = fade[3][0]
                self.chain_pad[i] = self._pad_for(fade[3][0])
        for proc in self.chains:
            if proc:
                proc.reset()

    # ------------------------------------------------------------------

    def hop_time_percentiles(self) -> dict[str, float]:
        n = min(self.stats.hops, len(self.hop_times))
        if not n:
            return {"p50_ms": 0.0, "p99_ms": 0.0}
        t = self.hop_times[:n] * 1000.0
        return {"p50_ms": round(float(np.percentile(t, 50)), 3), "p99_ms": round(float(np.percentile(t, 99)), 3)}


def _try_realtime(priority: int) -> bool:
    """Put the calling thread in SCHED_FIFO at ``priority`` (the lowest RT
    level by default: above every normal thread, below JACK's own), where
    the system allows it (RLIMIT_RTPRIO; the systemd unit sets it). A
    busy machine then cannot delay the engine past its deadline."""
    import os

    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(priority))
        return True
    except (PermissionError, OSError, AttributeError):
        return False


def _ring_read(ring: np.ndarray, start: int, n: int) -> np.ndarray:
    """Frames ``[start, start+n)`` of a ring indexed by absolute position
    (its length a power of two: JACK's rings, :attr:`Engine._uring`)."""
    size = ring.shape[1]
    off = start & (size - 1)
    if off + n <= size:
        return ring[:, off:off + n].copy()
    first = size - off
    return np.concatenate([ring[:, off:], ring[:, :n - first]], axis=1)


def _ring_write(ring: np.ndarray, start: int, y: np.ndarray) -> None:
    n, size = y.shape[1], ring.shape[1]
    off = start & (size - 1)
    if off + n <= size:
        ring[:, off:off + n] = y
    else:
        first = size - off
        ring[:, off:] = y[:, :first]
        ring[:, :n - first] = y[:, first:]
