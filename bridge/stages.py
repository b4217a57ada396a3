"""Chain stages: what each stage type accepts, and the streaming objects that
run them.

Every runtime stage follows one contract (the same as a suppressor's):
``process(block[channels, frames]) -> block[channels, frames]`` for any
block size, output delayed by a fixed :attr:`Stage.latency` in samples.

Stage types:

- every streamable pedalboard built-in, by snake_case name (``highpass``,
  ``compressor``, ``noise_gate``, ``reverb`` ...), with its parameters;
- ``plugin``: a VST3 plugin hosted by pedalboard (``path``, ``params``);
- ``denoise``: a quietcast suppressor from quietcast.models (``model``,
  ``strength``, ``max_attenuation_db``), resampled to 48 kHz and back when
  the chain runs at another rate, its output still landing on a whole
  frame of latency (:class:`DenoiseStage`);
- ``gain``: a smoothed gain (``gain_db``);
- ``mix``: blends what the stages before it made with the chain's own input,
  latency aligned (``wet`` 0..1).

pedalboard plugins called with ``reset=False`` return their output already
aligned (latency trimmed) but *shorter* until their latency is filled; a
:class:`_AlignedFifo` turns that back into a fixed delay, which is measured
when the stage is built (:func:`probe_latency`).

A hosted plugin whose latency moves live (a look-ahead, our test plugin's
``delay_samples``, QC Test Lookahead's continuous ``lookahead_ms``) shifts
its output: pedalboard trims a latency once, after a reset, and a running
plugin's delay line jumps (played twice or skipped: a click 28 times the
signal's own largest step). A plugin stage follows it only when asked
(``live_latency = true``; most plugins never move their latency, and the
cost is three times the plugin's memory and load time): such a
:class:`PluginStage` keeps spare instances, and every live value (continuous
ones too; several set together, together) is first asked of a prober
instance; when it keeps the latency it is applied as elsewhere (ramped if
continuous), when it brings another latency the spares take every value,
are pre-rolled on the recent input and crossfaded in across the next block,
both sides aligned to the stage's latency. A shorter latency is
padded: the stage's latency, and so the chain's timing, never moves. A
longer one than the stage's lengthens it: the crossfade goes from the old
timing to the new, :attr:`ChainProcessor.latency` is the new sum at once
(before the next block), and a ``mix`` stage after it and the stage's
bypass path follow in the same block (:class:`MovableDelay`). A chain whose
latency is declared elsewhere (the live daemon) refuses such a value
instead (:meth:`ChainProcessor.fix_latency`); a ``live_latency`` stage's
``min_latency`` declares room for it ahead. A move the prober could not
foresee (a plugin that changes its latency by itself) is put back at the
stage's latency from the next block.

A live parameter change never steps (:class:`PedalboardStage`): a filter
or dynamics built-in, a delay's time and a chorus's centre delay crossfade
over one block to a new instance pre-rolled on the recent input; the other
built-ins' numbers and a hosted plugin's continuous parameters ramp across
the block in steps; a hosted plugin's discrete ones (switches, choices,
whole numbers) are set at once; ``gain`` and ``mix`` ramp linearly over the block;
``denoise``'s ``strength`` glides over 0.2 s.

Every stage can be bypassed (``bypass = true``): its output is then its
input delayed by its latency, bit-exact, so the chain's timing never moves
(unless a plugin's latency grew live: the bypass path grows with it).
A stage whose processing raises, or returns NaN/Inf, is put in fault bypass
the same way and reports why in :attr:`Stage.fault` (a plugin fault costs
only its own stage, never the process).
"""

from __future__ import annotations

import math
import os
from fractions import Fraction
from typing import Any, Callable

import numpy as np

from quietcast.models.base import all_finite

from .errors import ParameterError, PluginLoadError, Problem, did_you_mean
from .params import Param, ParamSet

COMMON = ParamSet.of(
    Param("bypass", "bool", False, doc="pass the input through, delayed by the stage latency"),
)


# --------------------------------------------------------------------------
# small streaming helpers


def _keep_tail(buf: np.ndarray, x: np.ndarray) -> None:
    """``buf`` ``[C, d]`` becomes the last ``d`` frames of what it held
    followed by ``x`` (in place)."""
    n, d = x.shape[1], buf.shape[1]
    if n >= d:
        buf[:] = x[:, n - d:]
    else:
        buf[:, :d - n] = buf[:, n:]  # numpy copies overlapping slices safely
        buf[:, d - n:] = x


class DelayLine:
    """Delays ``[channels, frames]`` blocks by a fixed number of samples."""

    def __init__(self, channels: int, delay: int):
        self.channels = channels
        self.delay = int(delay)
        self._buf = np.zeros((channels, self.delay), np.float32)

    def process(self, x: np.ndarray) -> np.ndarray:
        """The block delayed: a new float32 array (the caller's to keep);
        one pass over the block, whatever its length against the delay."""
        d, n = self.delay, x.shape[1]
        if d == 0:
            return np.array(x, np.float32, copy=True)
        out = np.empty((self.channels, n), np.float32)
        buf = self._buf
        if n >= d:
            out[:, :d] = buf
            out[:, d:] = x[:, :n - d]
        else:
            out[:] = buf[:, :n]
        _keep_tail(buf, x)
        return out

    def reset(self) -> None:
        self._buf[:] = 0.0


class _AlignedFifo:
    """Turns an aligned producer of variable-length output into a fixed delay.

    Prefilled with ``latency`` zeros. If the producer ever falls further
    behind than that, the missing samples are given as zeros and the same
    number of later samples is dropped, so the delay never changes; each
    such event counts in ``underruns``.
    """

    def __init__(self, channels: int, latency: int):
        self.channels = channels
        self.latency = int(latency)
        self.underruns = 0
        self.reset()

    def reset(self) -> None:
        self._buf = np.zeros((self.channels, self.latency), np.float32)
        self._debt = 0

    def push(self, y: np.ndarray) -> None:
        if y.shape[1] == 0:
            return
        if self._debt:
            drop = min(self._debt, y.shape[1])
            y = y[:, drop:]
            self._debt -= drop
        self._buf = np.concatenate([self._buf, y.astype(np.float32, copy=False)], axis=1)

    def shift(self, k: int) -> None:
        """The producer's output moved ``k`` samples later (earlier when
        negative): the next ``k`` samples pushed are dropped, or ``-k``
        samples (the last one held) are put in, so the delay stays."""
        if k > 0:
            self._debt += k
        elif k < 0:
            last = self._buf[:, -1:] if self._buf.shape[1] else np.zeros((self.channels, 1), np.float32)
            self._buf = np.concatenate([self._buf, np.repeat(last, -k, axis=1)], axis=1)

    def pull(self, n: int) -> np.ndarray:
        have = self._buf.shape[1]
        if have >= n:
            out = self._buf[:, :n]
            self._buf = self._buf[:, n:]
            return out
        out = np.zeros((self.channels, n), np.float32)
        out[:, :have] = self._buf
        self._buf = self._buf[:, :0]
        self._debt += n - have
        self.underruns += 1
        return out


def probe_latency(
    run: Callable[[np.ndarray], np.ndarray],
    reset: Callable[[], None],
    channels: int,
    span: int = 24_000,
    sizes: tuple[int, ...] = (1, 64, 480, 4096),
) -> int:
    """How many samples an aligned, variable-output processor holds back:
    the largest shortfall of output behind input seen while streaming
    silence in blocks of each of ``sizes``. ``reset`` is called after each
    pass so the processor is left as new."""
    worst = 0
    reset()
    for size in sizes:
        total = span if size > 1 else min(span, 4096)
        block = np.zeros((channels, size), np.float32)
        fed = produced = 0
        while fed < total:
            produced += run(block).shape[1]
            fed += size
            worst = max(worst, fed - produced)
        reset()
    return worst


class _History:
    """The last ``capacity`` frames of a stream, in a ring: keeping a block
    costs a copy of the block, whatever the capacity (seconds of input
    for a delay's pre-roll)."""

    def __init__(self, channels: int, capacity: int):
        self._buf = np.zeros((channels, int(capacity)), np.float32)
        self._pos = 0  # where the next frame goes

    @property
    def capacity(self) -> int:
        return self._buf.shape[1]

    def reset(self) -> None:
        self._buf[:] = 0.0
        self._pos = 0

    def write(self, x: np.ndarray) -> None:
        cap, n = self._buf.shape[1], x.shape[1]
        if cap == 0 or n == 0:
            return
        if n >= cap:
            self._buf[:] = x[:, n - cap:]
            self._pos = 0
            return
        k = min(n, cap - self._pos)
        self._buf[:, self._pos:self._pos + k] = x[:, :k]
        self._buf[:, :n - k] = x[:, k:]
        self._pos = (self._pos + n) % cap

    def last(self, n: int) -> np.ndarray:
        """The last ``n`` frames kept (at most the capacity; zeros before the
        stream began), oldest first: a new array."""
        cap = self._buf.shape[1]
        n = min(int(n), cap)
        start = (self._pos - n) % cap if cap else 0
        if start + n <= cap:
            return self._buf[:, start:start + n].copy()
        return np.concatenate([self._buf[:, start:], self._buf[:, :self._pos]], axis=1)


def _crossfade(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``a`` fading linearly into ``b`` across the block (``[channels,
    frames]``): all ``b`` at its last frame."""
    n = a.shape[1]
    r = np.arange(1, n + 1, dtype=np.float32)[None, :] / n
    return a + r * (b - a)


class MovableDelay:
    """A delay line whose delay can be changed live without a step: the
    block after :meth:`set_delay` crossfades linearly from the input
    delayed by the old delay to the input delayed by the new one (a
    delay grown by up to ``keep`` frames has the older input it needs).
    Unchanged, its output is its input delayed, bit for bit."""

    _CHUNK = 8192  # the longest block read in one pass (a longer one is taken in pieces)

    def __init__(self, channels: int, delay: int, keep: int = 0):
        self.channels = channels
        self.delay = int(delay)
        self.keep = int(keep)
        self._to: int | None = None
        self._hist = _History(channels, self.delay + self.keep + self._CHUNK)

    def set_delay(self, delay: int) -> None:
        """The next block moves to ``delay`` (crossfaded across it)."""
        delay = int(delay)
        self._to = None if delay == self.delay else delay
        need = max(self.delay, delay) + self._CHUNK
        if need > self._hist.capacity:  # (the input older than the ring held is silence)
            old = self._hist.last(self._hist.capacity)
            self._hist = _History(self.channels, need + self.keep)
            self._hist.write(old)

    def process(self, x: np.ndarray) -> np.ndarray:
        n = x.shape[1]
        if n > self._CHUNK:
            return np.concatenate([self.process(x[:, i:i + self._CHUNK]) for i in range(0, n, self._CHUNK)], axis=1)
        self._hist.write(x)
        out = self._hist.last(self.delay + n)[:, :n]
        if self._to is None or n == 0:
            return np.array(out, np.float32, copy=True)
        new = self._hist.last(self._to + n)[:, :n]
        self.delay, self._to = self._to, None
        return _crossfade(out, new)

    def reset(self) -> None:
        self._hist.reset()
        if self._to is not None:
            self.delay, self._to = self._to, None


class _ShapeGuard:
    """pedalboard guesses the channel axis from an array's shape, so a block
    with frames <= channels is misread (or refused when square). Such tiny
    blocks wait to be joined with the next one; this is where a
    multichannel pedalboard stage's few samples of latency come from when
    it is streamed one frame at a time."""

    def __init__(self, channels: int, pb_channels: int):
        self.channels = channels
        self.limit = pb_channels if pb_channels > 1 else 0
        self.reset()

    def reset(self) -> None:
        self._pending = np.zeros((self.channels, 0), np.float32)

    def take(self, x: np.ndarray) -> np.ndarray:
        if not self.limit:
            return x
        if self._pending.shape[1]:
            x = np.concatenate([self._pending, x], axis=1)
            self._pending = self._pending[:, :0]
        if x.shape[1] <= self.limit:
            self._pending = x.copy()
            return x[:, :0]
        return x


# --------------------------------------------------------------------------
# runtime stage


class Stage:
    """A running stage: ``process(block) -> block`` at a fixed latency.

    Subclasses implement :meth:`_process` (same length out, delayed by
    :attr:`latency`), :meth:`_reset` and, for live changes,
    :meth:`_apply_param`.
    """

    type_name = "stage"

    def __init__(self, name: str, sample_rate: int, channels: int, params: ParamSet):
        self.name = name
        self.sample_rate = int(sample_rate)
        self.channels = int(channels)
        self.param_set = params
        self.values: dict[str, Any] = {}
        self.bypass = False
        self.fault: str | None = None
        #: where in the block that faulted its first NaN/Inf output sample was (None: the stage raised, or
        #: returned a wrong shape: no sample to name)
        self.fault_frame: int | None = None
        self._dry: DelayLine | None = None
        self._was_bypassed = False
        self._last = None  # the last output sample per channel: where a fault's dry block starts

    # -- to implement
    latency: int = 0

    def _process(self, x: np.ndarray) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def _reset(self) -> None:
        pass

    def _apply_param(self, name: str, value: Any) -> None:
        raise ParameterError(f"{self.name}.{name}", "cannot be changed while running")

    def lacks(self, name: str) -> str | None:
        """Why this running stage has no parameter ``name`` although its
        type lists one (a denoise stage's pause gate with a model that has
        none), or None."""
        return None

    # -- shared behaviour
    def _finish_init(self) -> None:
        self._dry = DelayLine(self.channels, self.latency)

    def set_param(self, name: str, value: Any) -> Any:
        """Check and apply one parameter; returns the value as stored."""
        if name == "bypass":
            self.bypass = COMMON.get("bypass").check(value, self.name)
            return self.bypass
        p = self.param_set.get(name, self.name)
        v = p.check(value, self.name)
        self._apply_param(name, v)
        self.values[name] = v
        return v

    def describe_params(self) -> list[dict]:
        """Each parameter this running stage has (not those it :meth:`lacks`),
        described, with its value."""
        return [p.describe() | {"value": self.values.get(p.name, p.default)} for p in self.param_set
                if not self.lacks(p.name)]

    def reset(self) -> None:
        self._reset()
        if self._dry is not None:
            self._dry.reset()

    def process(self, x: np.ndarray) -> np.ndarray:
        dry = self._dry.process(x)
        if self.fault is not None:
            return dry
        try:
            wet = self._process(x)
        except Exception as e:  # a stage fault costs the stage, not the process
            self.fault = f"raised {type(e).__name__}: {e}"
            return self._onto_dry(dry)
        if wet.shape != x.shape:
            self.fault = f"returned shape {wet.shape}, expected {x.shape}"
            return self._onto_dry(dry)
        if not all_finite(wet):
            self.fault = "returned NaN or Inf samples"
            self.fault_frame = int(np.argmax(~np.isfinite(wet).all(axis=0)))
            return self._onto_dry(dry)
        bypass = self.bypass
        if bypass == self._was_bypassed:
            out = dry if bypass else wet
        else:  # a bypass change: one block's linear crossfade, no click
            self._was_bypassed = bypass
            n = x.shape[1]
            ramp = np.linspace(0.0, 1.0, n, dtype=np.float32) if n else np.zeros(0, np.float32)
            if not bypass:
                ramp = ramp[::-1]
            out = wet * (1.0 - ramp) + dry * ramp
        if out.shape[1]:
            self._last = out[:, -1:].copy()
        return out

    def _onto_dry(self, dry: np.ndarray) -> np.ndarray:
        """The first dry block after a fault, without a step: it starts at
        the last sample the stage gave and falls onto the dry path over
        10 ms (the offset between the two fades out linearly)."""
        last = self._last
        n = dry.shape[1]
        if last is None or n == 0:
            return dry
        k = min(n, max(1, int(self.sample_rate) // 100))
        out = np.array(dry, np.float32, copy=True)
        out[:, :k] += (last - dry[:, :1]) * np.linspace(1.0, 0.0, k + 1, dtype=np.float32)[1:]
        return out


# --------------------------------------------------------------------------
# pedalboard built-ins


def _db(name, default, lo=-100.0, hi=24.0, doc=""):
    return Param(name, "float", default, lo, hi, "dB", doc=doc)


def _ms(name, default, lo=0.0, hi=5000.0):
    return Param(name, "float", default, lo, hi, "ms")


def _hz(name, default, lo=1.0, hi=20_000.0):
    return Param(name, "float", default, lo, hi, "Hz")


def _unit(name, default, lo=0.0, hi=1.0):
    return Param(name, "float", default, lo, hi)


_Q = Param("q", "float", 0.7071067690849304, 0.05, 20.0)

#: stage type -> (pedalboard class name, parameters)
BUILTINS: dict[str, tuple[str, ParamSet]] = {
    "highpass": ("HighpassFilter", ParamSet.of(_hz("cutoff_frequency_hz", 50.0))),
    "lowpass": ("LowpassFilter", ParamSet.of(_hz("cutoff_frequency_hz", 50.0))),
    "high_shelf": ("HighShelfFilter", ParamSet.of(_hz("cutoff_frequency_hz", 440.0), _db("gain_db", 0.0, -48, 48), _Q)),
    "low_shelf": ("LowShelfFilter", ParamSet.of(_hz("cutoff_frequency_hz", 440.0), _db("gain_db", 0.0, -48, 48), _Q)),
    "peak": ("PeakFilter", ParamSet.of(_hz("cutoff_frequency_hz", 440.0), _db("gain_db", 0.0, -48, 48), _Q)),
    "ladder": ("LadderFilter", ParamSet.of(
        Param("mode", "choice", "LPF12", choices=("LPF12", "HPF12", "BPF12", "LPF24", "HPF24", "BPF24")),
        _hz("cutoff_hz", 200.0), _unit("resonance", 0.0), Param("drive", "float", 1.0, 1.0, 100.0))),
    "compressor": ("Compressor", ParamSet.of(
        _db("threshold_db", 0.0), Param("ratio", "float", 1.0, 1.0, 100.0), _ms("attack_ms", 1.0, 0.01, 1000.0),
        _ms("release_ms", 100.0, 1.0))),
    "limiter": ("Limiter", ParamSet.of(_db("threshold_db", -10.0, -100.0, 0.0), _ms("release_ms", 100.0, 1.0))),
    "brickwall_limiter": ("BrickwallLimiter", ParamSet.of(
        _db("ceiling_db", -1.0, -60.0, 0.0), _ms("release_ms", 100.0, 1.0), _ms("lookahead_ms", 5.0, 0.0, 50.0),
        Param("true_peak", "bool", False))),
    "noise_gate": ("NoiseGate", ParamSet.of(
        _db("threshold_db", -100.0, -120.0, 0.0), Param("ratio", "float", 10.0, 1.0, 100.0),
        _ms("attack_ms", 1.0, 0.01, 1000.0), _ms("release_ms", 100.0, 1.0))),
    "clipping": ("Clipping", ParamSet.of(_db("threshold_db", -6.0, -60.0, 0.0))),
    "distortion": ("Distortion", ParamSet.of(_db("drive_db", 25.0, 0.0, 80.0))),
    "bitcrush": ("Bitcrush", ParamSet.of(Param("bit_depth", "float", 8.0, 1.0, 32.0))),
    "invert": ("Invert", ParamSet.of()),
    "chorus": ("Chorus", ParamSet.of(
        _hz("rate_hz", 1.0, 0.0, 100.0), _unit("depth", 0.25), _ms("centre_delay_ms", 7.0, 0.0, 100.0),
        _unit("feedback", 0.0, -1.0, 1.0), _unit("mix", 0.5))),
    "phaser": ("Phaser", ParamSet.of(
        _hz("rate_hz", 1.0, 0.0, 100.0), _unit("depth", 0.5), _hz("centre_frequency_hz", 1300.0),
        _unit("feedback", 0.0, -1.0, 1.0), _unit("mix", 0.5))),
    "delay": ("Delay", ParamSet.of(
        Param("delay_seconds", "float", 0.5, 0.0, 10.0, "s"), _unit("feedback", 0.0), _unit("mix", 0.5))),
    "reverb": ("Reverb", ParamSet.of(
        _unit("room_size", 0.5), _unit("damping", 0.5), _unit("wet_level", 0.33), _unit("dry_level", 0.4),
        _unit("width", 1.0), _unit("freeze_mode", 0.0))),
    "convolution": ("Convolution", ParamSet.of(
        Param("impulse_response_filename", "str", None,
              doc="path of an impulse-response audio file (relative paths are relative to the chain file)"),
        _unit("mix", 1.0))),
    "mp3_compressor": ("MP3Compressor", ParamSet.of(Param("vbr_quality", "float", 2.0, 0.0, 10.0))),
    "gsm_compressor": ("GSMFullRateCompressor", ParamSet.of()),
    "resample": ("Resample", ParamSet.of(Param("target_sample_rate", "float", 8000.0, 1000.0, 192_000.0, "Hz"))),
}

#: other spellings accepted for built-in types
ALIASES = {
    "highpass_filter": "highpass", "lowpass_filter": "lowpass", "high_shelf_filter": "high_shelf",
    "low_shelf_filter": "low_shelf", "peak_filter": "peak", "ladder_filter": "ladder",
    "noisegate": "noise_gate", "gate": "noise_gate", "gsm_full_rate_compressor": "gsm_compressor",
}

#: pedalboard built-ins we refuse, with why
UNSUPPORTED = {
    "pitch_shift": "pedalboard's PitchShift does not stream (reset=False output is misaligned at small blocks)",
    "gsm_compressor": "pedalboard's GSMFullRateCompressor does not stream (reset=False returns near silence at "
                      "live block sizes and fewer frames than it is given at any size); for a telephone voice "
                      "use a highpass at 300 Hz and a lowpass at 3400 Hz",
}


def _pb_value(param: Param, value):
    if param.name == "mode":
        import pedalboard

        return getattr(pedalboard.LadderFilter.Mode, value)
    return value


#: pedalboard filters whose coefficients change at once when a parameter is
#: set (the shelves and the peak filter also clear their state): a change is
#: made by a fresh instance, pre-rolled on the recent input, crossfaded in
_CROSSFADED = {"HighpassFilter", "LowpassFilter", "HighShelfFilter", "LowShelfFilter", "PeakFilter", "LadderFilter",
               "Compressor", "NoiseGate", "Limiter", "BrickwallLimiter", "Clipping", "Distortion"}
#: pedalboard built-ins of which some parameters are crossfaded the same way:
#: a new delay time moves the delay line's read position at once, a click
#: (ramped in steps, one click a step: a second difference 75 times the
#: signal's own for a delay, 110 times for a chorus's centre delay); their
#: other parameters (mix, feedback, depth, rate) ramp without a step, and so
#: do all of the reverb's (JUCE smooths them as well, and a fresh reverb
#: would lose its tail)
_CROSSFADED_PARAMS = {"Delay": frozenset({"delay_seconds"}), "Chorus": frozenset({"centre_delay_ms"})}
_PREROLL = 4096  # frames of input history a new filter instance is run over first
#: how far back a new delay or chorus instance is pre-rolled at most for its
#: feedback echoes (to -60 dB), and the most input kept for its first echo
#: (one echo of the longest delay): a pre-roll costs about 2 ms a second of
#: stereo input, on the engine thread, spread over blocks (:data:`_PREROLL_STEP_S`)
_ECHO_BUDGET_S = 2.0
#: how much of a new instance's pre-roll is run in one block, in seconds of
#: one channel's input (about 0.4 ms; at least :data:`_PREROLL` frames): a
#: longer pre-roll is spread over the next blocks while the old instance
#: plays on, and the crossfade comes when it has caught up. In one go, a
#: 2 s pre-roll of 8 channels took 35 ms of a 10 ms hop (a missed deadline:
#: the live engine's dry fallback)
_PREROLL_STEP_S = 0.5
#: the least time between two crossfades of a delay or chorus to new values: changes that come
#: faster (a knob sweeping the delay time) are made together at the next one, at most this late
_SWAP_GAP_S = 0.05
_ECHO_HISTORY_S = 10.0
_SUBBLOCKS = 8  # a ramped parameter moves in this many steps across one block
#: the same for a hosted plugin's continuous parameters: one that does not
#: smooth them steps at each (our test plugin's gain, 0 to -20 dB on a loud
#: low tone: a step 10 times the signal's own largest at once, 3.4 times in 8
#: steps, 1.4 times in 32); each step is a process call (~25 us)
_PLUGIN_SUBBLOCKS = 32
#: input a hosted plugin stage keeps for its spare's pre-roll (beyond :data:`_PREROLL`), and how far
#: its bypass path's delay can grow live with the input it needs: a plugin latency up to this long
_PLUGIN_HISTORY_S = 1.0


def _echo_span_s(cls_name: str, values: dict) -> float:
    """How far back a delay or chorus with these values still echoes its
    input, to -60 dB, in seconds (inf with feedback 1); 0 for other types."""
    if cls_name == "Delay":
        d, fb = float(values.get("delay_seconds", 0.5)), float(values.get("feedback", 0.0))
    elif cls_name == "Chorus":
        d, fb = float(values.get("centre_delay_ms", 7.0)) / 1000.0, float(values.get("feedback", 0.0))
    else:
        return 0.0
    fb = abs(fb)
    if fb >= 1.0:
        return math.inf
    echoes = 1 if fb < 1e-3 else 1 + math.ceil(math.log(1e-3) / math.log(fb))
    return d * echoes


class PedalboardStage(Stage):
    """A pedalboard plugin (built-in or hosted) streamed with ``reset=False``.

    A live parameter change never steps. pedalboard's built-ins apply a new
    value at once, and its shelf and peak filters also clear their state:
    a fader would tick. So for the filters (:data:`_CROSSFADED`) the
    change builds a new instance, runs it over the last :data:`_PREROLL`
    frames of input (85 ms: a filter's state is then what it would have
    been; a compressor's or gate's envelope, with a longer release, only
    close to it), and crossfades to it across the next block. A delay's
    ``delay_seconds`` and a chorus's ``centre_delay_ms``
    (:data:`_CROSSFADED_PARAMS`) are crossfaded the same way, the new
    instance run over as much input as its echoes reach back: the new delay
    time, times the echoes feedback keeps above -60 dB, within
    :data:`_ECHO_BUDGET_S` (older echoes fade out with the old instance),
    but always the first echo, up to :data:`_ECHO_HISTORY_S` (0.35 s of
    pre-roll, about 1 ms, for a 0.25 s stereo delay without feedback; 2 s,
    about 4 ms, with feedback 0.5). A pre-roll longer than
    :data:`_PREROLL_STEP_S` of one channel's input is spread over the next
    blocks, the old instance playing on, so no block costs more than about
    0.4 ms of it: a 2 s stereo pre-roll lands the new delay time 8 blocks
    (80 ms) after the change. For the other built-ins and parameters a
    numeric value moves from its old value to the new one across the next
    block in :data:`_SUBBLOCKS` steps. A hosted plugin's continuous
    parameters ramp the same way (see :class:`PluginStage`)."""

    type_name = "pedalboard"
    _subblocks = _SUBBLOCKS

    def __init__(self, name, sample_rate, channels, params: ParamSet, plugin, values: dict):
        super().__init__(name, sample_rate, channels, params)
        self.plugin = plugin
        self.values = dict(values)
        self._guard = _ShapeGuard(channels, getattr(plugin, "pb_channels", channels))
        cls_name = type(plugin).__name__
        # the parameters whose change is a crossfade to a new instance (None: all)
        self._xfade = None if cls_name in _CROSSFADED else _CROSSFADED_PARAMS.get(cls_name, frozenset())
        self._cls = type(plugin) if self._xfade is None or self._xfade else None
        keep = _PREROLL + (math.ceil(_ECHO_HISTORY_S * self.sample_rate) if cls_name in _CROSSFADED_PARAMS else 0)
        self._hist = _History(channels, keep if self._cls else 0)
        self._swap = False  # a crossfade to a new instance is due
        # a new instance still being pre-rolled, block by block: (instance, its input still to run)
        self._pending: tuple | None = None
        self._step = max(_PREROLL, math.ceil(_PREROLL_STEP_S * self.sample_rate / max(1, channels)))
        self._ramps: dict[str, tuple] = {}  # parameter -> (from, to) across the next block
        self._at_once: set[str] = set()  # parameters seen to move a plugin's latency: never ramped
        # frames since the last swap, and how many must pass before the next (delay, chorus: their
        # pre-roll is long; a knob sweeping the delay time makes one swap per gap, not one per block)
        self._swap_gap = math.ceil(_SWAP_GAP_S * self.sample_rate) if cls_name in _CROSSFADED_PARAMS else 0
        self._since_swap = self._swap_gap
        self.latency = probe_latency(self._run, self._reset_plugin, channels)
        self._fifo = _AlignedFifo(channels, self.latency)
        self._finish_init()

    def _run(self, x: np.ndarray) -> np.ndarray:
        x = self._guard.take(x)
        n = x.shape[1]
        if n == 0:
            return x
        if self._pending is not None:
            return self._run_pending(x)
        if self._swap and self._since_swap >= self._swap_gap:
            return self._run_swap(x)
        self._since_swap += n  # (a delay's or chorus's next swap waits: see _SWAP_GAP_S)
        y = self._run_ramps(x) if self._ramps else self._plain(self.plugin, x)
        if self._hist.capacity:
            self._hist.write(x)
        return y

    def _plain(self, plugin, x: np.ndarray) -> np.ndarray:
        return plugin.process(x, float(self.sample_rate), buffer_size=max(1, min(x.shape[1], 8192)), reset=False)

    def _new_instance(self):
        kwargs = {k: _pb_value(self.param_set.get(k), v) for k, v in self.values.items() if k in self.param_set}
        return self._cls(**kwargs)

    def _preroll_frames(self) -> int:
        """How much recent input a new instance runs over before it is
        crossfaded in: :data:`_PREROLL`, and as far back as a delay's or
        chorus's echoes reach with the new values."""
        vals = {p.name: self.values.get(p.name, p.default) for p in self.param_set}
        span = _echo_span_s(self._cls.__name__, vals)  # (the first echo's is the delay itself)
        first = _echo_span_s(self._cls.__name__, vals | {"feedback": 0.0})
        span = min(span, max(first, _ECHO_BUDGET_S), _ECHO_HISTORY_S)
        return _PREROLL + math.ceil(span * self.sample_rate)

    def _run_swap(self, x: np.ndarray) -> np.ndarray:
        self._swap = False
        self._ramps = {}  # the new instance has every new value: the crossfade is their ramp too
        # its state as if it had run with the new values all along: run over the recent input first
        self._pending = (self._new_instance(), [self._hist.last(self._preroll_frames())])
        return self._run_pending(x)

    def _run_pending(self, x: np.ndarray) -> np.ndarray:
        """A block while a new instance is pre-rolled: at most
        :attr:`_step` frames of its pre-roll run per block, the old
        instance playing meanwhile; in the block where what is left fits
        (and no other parameter is ramping), the new instance runs it and
        this block, and is crossfaded in across the block."""
        new, backlog = self._pending
        left = sum(b.shape[1] for b in backlog)
        if left <= self._step and not self._ramps:
            self._pending = None
            self._since_swap = 0
            if left:
                self._plain(new, backlog[0] if len(backlog) == 1 else np.concatenate(backlog, axis=1))
            for p in self.param_set:  # values set at once meanwhile went to the old instance
                if self._xfade is not None and p.name not in self._xfade and hasattr(new, p.name):
                    setattr(new, p.name, getattr(self.plugin, p.name))
            a, b = self._plain(self.plugin, x), self._plain(new, x)
            self._hist.write(x)
            self.plugin = new
            if a.shape != b.shape:  # (a filter has no latency; should never differ)
                return b
            return _crossfade(a, b)
        backlog.append(x.copy())
        take, k = [], self._step + x.shape[1]  # (the backlog shrinks by a step a block)
        while k > 0 and backlog:
            b = backlog[0]
            if b.shape[1] <= k:
                take.append(backlog.pop(0))
                k -= b.shape[1]
            else:
                take.append(b[:, :k])
                backlog[0] = b[:, k:]
                k = 0
        self._plain(new, take[0] if len(take) == 1 else np.concatenate(take, axis=1))
        self._since_swap += x.shape[1]
        y = self._run_ramps(x) if self._ramps else self._plain(self.plugin, x)
        self._hist.write(x)
        return y

    def _run_ramps(self, x: np.ndarray) -> np.ndarray:
        ramps, self._ramps = self._ramps, {}
        n = x.shape[1]
        k = min(self._subblocks, n)
        edges = [round(i * n / k) for i in range(k + 1)]
        out, lat = [], None
        for i in range(k):
            for name, (a, b) in ramps.items():
                self._set_ramped(name, b if i + 1 == k else a + (b - a) * (i + 1) / k)
            out.append(self._plain(self.plugin, x[:, edges[i]:edges[i + 1]]))
            if i == 0:  # (a value set at once before this block may have moved it in this first step)
                lat = self._plugin_latency()
            elif lat is not None and i + 1 < k and self._plugin_latency() != lat:
                # the plugin's latency follows the ramp: no walk through the latencies in between, and
                # these parameters are set at once from now on
                for name, (_, b) in ramps.items():
                    self._set_ramped(name, b)
                    self._at_once.add(name)
                out.append(self._plain(self.plugin, x[:, edges[i + 1]:]))
                break
        return np.concatenate(out, axis=1)

    def _plugin_latency(self) -> int | None:
        """A hosted plugin's latency as it last reported it (None: a built-in)."""
        return None

    def _rampable(self, p: Param, v) -> bool:
        return (p.kind == "float" and isinstance(v, (int, float)) and not isinstance(v, bool)
                and p.name not in self._at_once)

    def _ramp_ends(self, name: str, v) -> tuple[float, float] | None:
        """A ramp to ``v`` as (from, to) in the units :meth:`_set_ramped`
        takes, from the value the plugin runs now (a pending ramp has not
        touched it yet); None when there is nothing to ramp."""
        cur, v = float(getattr(self.plugin, name)), float(v)
        return (cur, v) if cur != v and math.isfinite(cur) and math.isfinite(v) else None

    def _set_ramped(self, name: str, u: float) -> None:
        setattr(self.plugin, name, u)

    def _set_now(self, name: str, v) -> None:
        setattr(self.plugin, name, v)

    def _reset_plugin(self) -> None:
        if self._pending is not None:  # (its values are this stage's now)
            self._pending, self._swap = None, True
        if self._swap:  # a change not crossfaded in yet: made at once (nothing is playing)
            self.plugin = self._new_instance()
        self.plugin.reset()
        self._guard.reset()
        self._hist.reset()
        self._swap = False
        self._since_swap = self._swap_gap
        for name, (_, b) in self._ramps.items():
            self._set_ramped(name, b)
        self._ramps = {}

    def _process(self, x: np.ndarray) -> np.ndarray:
        if x.shape[1]:
            self._fifo.push(self._run(x))
        return self._fifo.pull(x.shape[1])

    def _reset(self) -> None:
        self._reset_plugin()
        self._fifo.reset()

    def _apply_param(self, name, value):
        p = self.param_set.get(name)
        v = _pb_value(p, value)
        if self._cls is not None and (self._xfade is None or name in self._xfade):
            # the new instance takes it (Stage.set_param stores the value)
            self.values[name] = value
            self._swap = True
            return
        if self._rampable(p, v):
            ends = self._ramp_ends(name, v)
            if ends is not None:
                self._ramps[name] = ends
                return
        self._ramps.pop(name, None)  # (a value set back within one block: no ramp left behind)
        self._set_now(name, v)


def build_builtin(type_name: str, name: str, sample_rate: int, channels: int, values: dict) -> PedalboardStage:
    import pedalboard

    cls_name, params = BUILTINS[type_name]
    kwargs = {k: _pb_value(params.get(k), v) for k, v in values.items()}
    if type_name == "convolution":
        _check_impulse_response(kwargs["impulse_response_filename"])
    plugin = getattr(pedalboard, cls_name)(**kwargs)
    return PedalboardStage(name, sample_rate, channels, params, plugin, values)


def _check_impulse_response(path: str) -> None:
    """ValueError unless ``path`` is an audio file with frames in it:
    pedalboard's Convolution checks only that the file exists, and then
    passes the audio through unchanged when it cannot read it."""
    from pedalboard.io import AudioFile

    try:
        with AudioFile(path) as f:
            frames = f.frames
    except Exception as e:
        raise ValueError(f"impulse response {path!r} is not an audio file that can be read ({e})") from None
    if frames <= 0:
        raise ValueError(f"impulse response {path!r} holds no audio")


# --------------------------------------------------------------------------
# hosted plugins

PLUGIN_PARAMS = ParamSet.of(
    Param("path", "str", None, doc="path of a .vst3 bundle"),
    Param("plugin_name", "str", None, doc="which plugin of a multi-plugin bundle"),
    Param("params", "dict", {}, doc="initial values of the plugin's own parameters, by name"),
    Param("live_latency", "bool", False,
          doc="follow the plugin's latency when a live value moves it (a look-ahead): the output stays on the "
              "stage's latency, crossfaded to spare instances; costs three times the plugin's memory and load time "
              "and a round trip to the daemon's supervisor (~50 ms) for every live value of the stage. Off: a "
              "live value that moves the plugin's latency shifts the stage's output by as much"),
    Param("min_latency", "int", 0, 0, 480_000, "samples",
          doc="with live_latency: the least latency the stage declares, room for the plugin's latency to grow "
              "live (a look-ahead turned up) where the chain's latency may not (the live daemon); 0: the "
              "plugin's own"),
)


def _plugin_param_set(plugin) -> ParamSet:
    """Our Param view of a hosted plugin's parameters (pedalboard names)."""
    out = []
    for key, p in plugin.parameters.items():
        try:
            lo, hi = float(p.min_value), float(p.max_value)
        except (TypeError, ValueError):
            out.append(Param(key, "str", None))
            continue
        unit = p.label or ""
        step = getattr(p, "step_size", None)
        cur = float(getattr(plugin, key)) if not isinstance(getattr(plugin, key), (str, bool)) else getattr(plugin, key)
        if step == 1.0 and (lo, hi) == (0.0, 1.0):
            out.append(Param(key, "bool", bool(cur)))
        elif step == 1.0 and lo.is_integer() and hi.is_integer():
            out.append(Param(key, "int", int(cur), lo, hi, unit))
        else:
            out.append(Param(key, "float", cur, lo, hi, unit))
    return ParamSet.of(*out)


def _is_continuous(prm) -> bool:
    """Whether a hosted plugin's parameter (pedalboard's view of it) takes
    any value in its range: automatable, not a switch, and without steps
    (VST3 declares a step count of 0, which JUCE reports as its default
    0x7fffffff steps; a switch has 2, a list of n choices n, our test
    plugin's ``delay_samples`` 4801)."""
    try:
        return (bool(prm.is_automatable) and not bool(prm.is_boolean)
                and int(prm.num_steps) >= 0x7FFFFFFF)
    except (AttributeError, TypeError, ValueError):
        return False


def set_plugin_param(plugin, key: str, value) -> None:
    """Set a hosted plugin's parameter exactly. Plain attribute assignment
    snaps to pedalboard's 1000-step scan of the parameter (-6 dB becomes
    -5.988 dB); asking the plugin to parse the value's text is exact."""
    prm = plugin.parameters[key]
    text = ("1" if value else "0") if isinstance(value, bool) else repr(value)
    try:
        prm.raw_value = prm.get_raw_value_for_text(text)
    except Exception:
        setattr(plugin, key, value)


def load_vst3(path: str, plugin_name: str | None = None):
    """Load a VST3 plugin with a clear error naming the path."""
    import pedalboard

    if not os.path.exists(path):
        raise PluginLoadError(path, "no such file or folder")
    try:
        return pedalboard.load_plugin(path, plugin_name=plugin_name)
    except Exception as e:  # pedalboard raises ImportError/ValueError/RuntimeError
        raise PluginLoadError(path, f"could not be loaded: {_first_line(e)}") from None


def _first_line(e: Exception) -> str:
    s = str(e).strip()
    return s.splitlines()[0] if s else type(e).__name__


class _ChannelAdapter:
    """Runs a plugin whose bus layout differs from the chain's: a stereo
    plugin on a mono chain gets the signal on both inputs and its outputs
    averaged; a mono plugin on a multichannel chain runs one instance per
    channel."""

    def __init__(self, instances: list, mode: str):
        self.instances = instances
        self.mode = mode  # "same", "up", "split"
        self.pb_channels = {"up": 2, "split": 1}.get(mode)

    def process(self, x, sr, buffer_size, reset):
        if self.mode == "same":
            return self.instances[0].process(x, sr, buffer_size=buffer_size, reset=reset)
        if self.mode == "up":
            y = self.instances[0].process(np.repeat(x, 2, axis=0), sr, buffer_size=buffer_size, reset=reset)
            return y.mean(axis=0, keepdims=True)
        ys = [p.process(x[i:i + 1], sr, buffer_size=buffer_size, reset=reset) for i, p in enumerate(self.instances)]
        n = min(y.shape[1] for y in ys)
        return np.concatenate([y[:, :n] for y in ys], axis=0)

    def reset(self):
        for p in self.instances:
            p.reset()


class PluginStage(PedalboardStage):
    """A VST3 plugin: its own parameters are settable by their pedalboard
    names (``stage.set_param("gain_db", -6)``); ``path`` is fixed.

    A live change of a continuous parameter (:func:`_is_continuous`: one
    that takes any value in its range) ramps across the next block in
    :data:`_PLUGIN_SUBBLOCKS` steps of the plugin's normalised value, as a
    built-in's does, and ends on the exact value: many plugins apply a value
    at once (our test plugin's gain, 0 to -20 dB set at once, stepped 10
    times as far as the signal's own largest step). A discrete one (a
    switch, a list of choices, a whole number of samples) is set at once:
    each step in between would be a step of its own, and a plugin's latency
    would walk through each of them. A continuous parameter seen to move the
    plugin's latency during a ramp jumps to its value there and is set at
    once from then on.

    By default (``live_latency`` False) that is all: one set of instances,
    and a value that moves the plugin's latency shifts the stage's output
    by as much (the declared latency does not follow). With
    ``live_latency`` every live value of the plugin's own (continuous ones
    too) is first asked of a prober instance (:meth:`foresee`, several
    together; :meth:`_latency_with`): with the same latency it is applied
    as above (set at once or ramped), with another the spare instances
    take every value and take over crossfaded (:meth:`_latency_swap`): a
    shorter latency is padded to the stage's, a longer one lengthens the
    stage's (refused where :attr:`may_grow` is off; ``min_latency``
    declares room ahead). pedalboard's ``reported_latency_samples`` follows
    a change only on JUCE's message thread (the one that loaded the first
    plugin): the live daemon foresees there and sets on the engine thread.
    Three sets of instances are then loaded (running, spare, one prober):
    three times a plugin's memory and load time."""

    type_name = "plugin"
    _subblocks = _PLUGIN_SUBBLOCKS

    def __init__(self, name, sample_rate, channels, path, plugin_name=None, params=None, min_latency: int = 0,
                 live_latency: bool = False):
        if int(min_latency) and not live_latency:
            raise ParameterError(f"{name}.min_latency", "is room for a plugin latency moved live: give the stage "
                                                        "live_latency = true too")
        first = load_vst3(path, plugin_name)
        own = _plugin_param_set(first)
        values = {}
        problems = []
        for k, v in (params or {}).items():
            try:
                values[k] = own.get(k, name).check(v, name)
            except ParameterError as e:
                problems.append(str(e))
        if problems:
            raise ParameterError("", "; ".join(problems))
        instances, mode = self._fit_channels(first, path, plugin_name, channels, sample_rate)
        for inst in instances:
            for k, v in values.items():
                set_plugin_param(inst, k, v)
        self.path = path
        self._instances = instances
        self._continuous = frozenset(k for k, prm in first.parameters.items()
                                     if k in own and own.get(k).kind == "float" and _is_continuous(prm))
        adapter = _ChannelAdapter(instances, mode)
        adapter.pb_channels = adapter.pb_channels or channels
        #: whether the stage follows a live move of the plugin's latency (the chain stage's live_latency)
        self.live_latency = bool(live_latency)
        #: (name, value) -> [latency, sets still to come, swap]: what foresee said of a value set next
        self._foreseen: dict[tuple[str, Any], list] = {}
        #: values foreseen whose set has not come yet: a value foreseen after them is foreseen with them
        self._ahead: dict[str, Any] = {}
        self._swap_lat: int | None = None  # the plugin latency a pending swap to the spare brings
        #: whether the stage may declare a longer latency live (the daemon's chains may not: see
        #: ChainProcessor.fix_latency); a change that would need it is refused
        self.may_grow = True
        #: live moves of the plugin's latency the stage followed after the fact (not foreseen by the spare)
        self.unforeseen_latency_moves = 0
        #: pedalboard's trimming after a reset, checked on the first output: id of the instances' adapter ->
        #: [frames fed, the plugin's latency, frames still to drop (None: no output yet)] (pedalboard trims
        #: its cached latency, which is stale where the plugin's latency moved on another thread than JUCE's)
        self._trims: dict[int, list[int]] = {}
        if not self.live_latency:  # one set of instances, every value set or ramped on them
            self._spare = self._spare_instances = self._prober = None
            super().__init__(name, sample_rate, channels, own, adapter, values)
            return
        # a second set of instances, loaded here (a hosted plugin loads on the main thread only): it tells
        # what latency a value would give before the running plugin takes it, and takes over, crossfaded,
        # when it moves the latency (_latency_swap)
        spares = [load_vst3(path, plugin_name) for _ in instances]
        for inst in spares:
            for k, v in values.items():
                set_plugin_param(inst, k, v)
        self._spare = _ChannelAdapter(spares, mode)
        self._spare.pb_channels = adapter.pb_channels
        self._spare_instances = spares
        # one more, only ever asked what latency a value would give (foresee: on JUCE's message thread, the
        # one that loaded the first plugin, where a plugin's new latency is known at once; on another thread
        # pedalboard's reported_latency_samples keeps its old value)
        self._prober = load_vst3(path, plugin_name)
        # an instance's first block, and the first value set after it, cost ~25 ms with our test plugin
        # (JUCE and the plugin prepare): here, not in the live hop of the first swap (it took 24 ms)
        for inst in (*spares, self._prober):
            inst.process(np.zeros((self._spare.pb_channels or channels, 64), np.float32), float(sample_rate),
                         buffer_size=64, reset=False)
            for prm in list(inst.parameters.values())[:1]:
                prm.raw_value = prm.raw_value
            inst.reset()
        super().__init__(name, sample_rate, channels, own, adapter, values)
        self._hist = _History(channels, _PREROLL + math.ceil(_PLUGIN_HISTORY_S * self.sample_rate))
        self._plug_lat = self._plugin_latency()  # the running plugin's latency
        self._reported = self._plug_lat  # what pedalboard last said it was
        self._slack = max(0, self.latency - self._plug_lat)  # what a block-size shortfall adds (_ShapeGuard)
        if int(min_latency) > self.latency:  # room declared ahead for a longer latency: padded until then
            self.latency = int(min_latency)
            self._fifo = _AlignedFifo(channels, self.latency)
        self._dry = MovableDelay(channels, self.latency, math.ceil(_PLUGIN_HISTORY_S * self.sample_rate))

    @staticmethod
    def _fit_channels(plugin, path, plugin_name, channels, sample_rate):
        def accepts(p, c):
            try:
                p.process(np.zeros((c, 32), np.float32), float(sample_rate), reset=True)
                return True
            except ValueError:
                return False

        if accepts(plugin, channels):
            plugin.reset()
            return [plugin], "same"
        if channels == 1 and accepts(plugin, 2):
            plugin.reset()
            return [plugin], "up"
        if channels > 1 and accepts(plugin, 1):
            plugin.reset()
            return [plugin] + [load_vst3(path, plugin_name) for _ in range(channels - 1)], "split"
        raise PluginLoadError(path, f"accepts neither {channels}-channel audio nor a mono/stereo layout quietcast can adapt")

    def _rampable(self, p: Param, v) -> bool:
        return p.name in self._continuous and super()._rampable(p, v)

    def _ramp_ends(self, name: str, v) -> tuple[float, float] | None:
        # in the plugin's normalised (raw) units: its own mapping, whatever its curve, and a raw value is
        # set without the text parsing that makes set_plugin_param exact (the ramp ends on that exact value)
        prm = self._instances[0].parameters[name]
        try:
            cur, goal = float(prm.raw_value), float(prm.get_raw_value_for_text(repr(float(v))))
        except Exception:
            return None
        return (cur, goal) if cur != goal else None

    def _set_ramped(self, name: str, u: float) -> None:
        for inst in self._instances:
            inst.parameters[name].raw_value = u

    def _set_now(self, name: str, v) -> None:
        for inst in self._instances:
            set_plugin_param(inst, name, v)

    def _plugin_latency(self) -> int | None:
        return int(self._instances[0].reported_latency_samples)

    # -- a live change of the plugin's latency

    def _sync(self, instances) -> None:
        for inst in instances:
            for k, v in self.values.items():
                set_plugin_param(inst, k, v)

    def _latency_with(self, changes: dict) -> int:
        """The latency the plugin reports with the stage's values and
        ``changes`` (name -> value, all together): asked of the prober
        instance (set, then one short block of silence, after which a
        plugin has announced it)."""
        probe = self._prober
        for k, v in {**self.values, **self._ahead, **changes}.items():
            set_plugin_param(probe, k, v)
        probe.process(np.zeros((self._spare.pb_channels or self.channels, 64), np.float32), float(self.sample_rate),
                      buffer_size=64, reset=False)
        return int(probe.reported_latency_samples)

    def needs_foresight(self, name: str) -> bool:
        """Whether a live value of ``name`` is to be :meth:`foresee`-n
        first where :meth:`set_param` does not run on JUCE's message thread:
        every parameter of the plugin's own, continuous ones too, where the
        stage follows live latency (:attr:`live_latency`); none elsewhere."""
        return self.live_latency and name in self.param_set

    def foretell(self, changes: dict) -> tuple[int, bool]:
        """``(latency, swap)``: the plugin's latency with ``changes`` (name
        -> value, checked, applied together), and whether they go to the
        spare instances (the latency moves, or, several together, one of
        them alone would move it: a ramp or a value set before the others
        would walk the latency). Raises ParameterError where it would
        lengthen a latency that may not grow (:attr:`may_grow`). Changes
        nothing: :meth:`foresee` keeps it for the sets that follow."""
        changes = {k: self.param_set.get(k, self.name).check(v, self.name) for k, v in changes.items()}
        lat = self._latency_with(changes)
        name, value = next(iter(changes.items()))
        if len(changes) > 1:  # (refused: named by the first, the message gives them all)
            value = ", ".join(f"{k} = {v:g}" if isinstance(v, float) else f"{k} = {v!r}" for k, v in changes.items())
        self._check_growth(name, value, lat, together=len(changes) > 1)
        swap = lat != self._plug_lat
        if not swap and len(changes) > 1:
            swap = any(self._latency_with({k: v}) != self._plug_lat for k, v in changes.items())
        return lat, swap

    def remember(self, changes: dict, lat: int, swap: bool) -> None:
        """Keep what :meth:`foretell` said of ``changes`` for their
        :meth:`set_param` that follows (on another thread)."""
        if len(self._foreseen) > 64:  # (values foreseen and never set: a refused set elsewhere)
            self._foreseen.clear()
            self._ahead.clear()
        for k, v in changes.items():
            key = (k, self.param_set.get(k, self.name).check(v, self.name))
            # (the same value twice: two sets)
            self._foreseen[key] = [lat, self._foreseen.get(key, [0, 0])[1] + 1, swap]
            self._ahead[k] = key[1]

    def foresee(self, changes: dict, keep: bool = True) -> int:
        """The plugin's latency with ``changes`` (name -> value, applied
        together), asked now, for the :meth:`set_param` of each that follows
        (the live daemon asks on its main thread, JUCE's message thread, and
        sets the values on the engine thread, where a plugin's new latency
        is not seen). Raises ParameterError where it would lengthen a
        latency that may not grow (:attr:`may_grow`). ``keep``: False to
        check only (no set follows)."""
        lat, swap = self.foretell(changes)
        if keep:
            self.remember(changes, lat, swap)
        return lat

    def _check_growth(self, name: str, value, lat: int, together: bool = False) -> None:
        if lat + self._slack > self.latency and not self.may_grow:
            shown = value if together else f"{value:g}" if isinstance(value, float) else repr(value)
            raise ParameterError(f"{self.name}.{name}", f"value{'s' if together else ''} {shown} would make the "
                                 f"plugin's latency {lat} samples, more than the {self.latency - self._slack} the latency this running chain "
                                 f"declared has room for; to declare more, set the value in the chain (or give the stage "
                                 f"min_latency = {lat + self._slack} or more) and load the chain again")

    def _apply_param(self, name, value):
        if not self.live_latency:
            return super()._apply_param(name, value)
        seen = self._foreseen.get((name, value))
        if seen is not None:
            lat, swap = seen[0], seen[2]
            seen[1] -= 1
            if seen[1] <= 0:
                self._foreseen.pop((name, value), None)
                if self._ahead.get(name) == value:
                    del self._ahead[name]
        else:
            self._ahead.pop(name, None)
            lat, swap = self._latency_with({name: value}), False
        swap = swap or lat != self._plug_lat  # (a swap made since it was foreseen: the running latency moved)
        if not swap and self._swap_lat is None:
            return super()._apply_param(name, value)  # the latency stays: set at once, or ramped
        need = max(self.latency, lat + self._slack)  # a shorter latency is padded: the stage's timing stays
        self._check_growth(name, value, lat)
        self._ramps.pop(name, None)
        self.values[name] = value  # (the spare takes every value at the swap)
        self._swap_lat = lat
        if need != self.latency:
            self.latency = need
            self._dry.set_delay(need)

    def _process(self, x):
        if not self.live_latency:
            return super()._process(x)
        if self._swap_lat is not None and x.shape[1]:
            return self._latency_swap(x)
        y = super()._process(x)
        lat = self._plugin_latency()
        if lat != self._reported:  # (on another thread than JUCE's message thread it never changes)
            self._reported = lat
            if lat != self._plug_lat:
                self._follow(lat)
        return y

    def _plain(self, plugin, x: np.ndarray) -> np.ndarray:
        y = super()._plain(plugin, x)
        if not self._trims:
            return y
        t = self._trims.get(id(plugin))
        if t is None:
            return y
        t[0] += x.shape[1]
        if t[2] is None:
            if not y.shape[1]:
                return y
            # the first output since the reset: pedalboard trimmed what it took for the latency (fed - got
            # frames), the plugin's output is delayed by its real one
            t[2] = t[1] - (t[0] - y.shape[1])
            if t[2] < 0:  # it trimmed too much: the output is that much early
                y = np.concatenate([np.zeros((y.shape[0], -t[2]), np.float32), y], axis=1)
                t[2] = 0
        if t[2] > 0:  # too little: the rest of the plugin's delay goes
            k = min(t[2], y.shape[1])
            y, t[2] = y[:, k:], t[2] - k
        if t[2] == 0:
            del self._trims[id(plugin)]
        return y

    def _latency_swap(self, x: np.ndarray) -> np.ndarray:
        """The block after a change that moves the plugin's latency: the
        spare instances take every value, are run over the recent input
        (:data:`_PREROLL` frames and their latency, as a built-in's new
        instance is) and take over, crossfaded across this block from the
        running ones; both are aligned to the stage's latency, so nothing
        is skipped or played twice, and the stage's timing moves only when
        its latency grew (the crossfade then goes from the old timing to the
        new one)."""
        lat, self._swap_lat = self._swap_lat, None
        new, spares = self._spare, self._spare_instances
        self._sync(spares)  # (a ramp's end value too: the running instances end their ramps in this block)
        new.reset()
        self._trims[id(new)] = [0, lat, None]
        fifo = _AlignedFifo(self.channels, self.latency)
        guard = _ShapeGuard(self.channels, new.pb_channels or self.channels)
        guard._pending = self._guard._pending.copy()
        pre = self._hist.last(_PREROLL + lat)
        if pre.shape[1] > guard.limit:
            fifo.push(self._plain(new, pre))
            fifo.pull(pre.shape[1])  # (what it made of the past: not heard)
        a = PedalboardStage._process(self, x)  # the running instances, at the old latency
        xs = guard.take(x)
        if xs.shape[1]:
            fifo.push(self._plain(new, xs))
        b = fifo.pull(x.shape[1])
        self.plugin, self._spare = new, self.plugin
        self._instances, self._spare_instances = spares, self._instances
        self._fifo, self._guard = fifo, guard
        self._ramps = {}
        self._plug_lat, self._reported = lat, self._plugin_latency()
        return _crossfade(a, b)

    def _follow(self, lat: int) -> None:
        """The plugin's latency moved without the spare foreseeing it (a
        plugin that changes it by itself, or a continuous parameter seen to
        move it during a ramp): its output shifted in this block. From the
        next block on it is put back at the stage's latency (samples
        dropped or held); when the new latency does not fit under it, the
        stage's latency grows to it. (Seen only on JUCE's message thread:
        elsewhere pedalboard's reported latency does not move.)"""
        self.unforeseen_latency_moves += 1
        need = max(self.latency, lat + self._slack)  # (a latency that may not grow grows: nothing else is true)
        self._fifo.shift(self.latency + lat - self._plug_lat - need)
        self._plug_lat = lat
        if need != self.latency:
            self.latency = self._fifo.latency = need
            self._dry.set_delay(need)

    def _reset(self):
        if not self.live_latency:
            return super()._reset()
        if self._swap_lat is not None:  # a pending swap is made at once (nothing is playing)
            self._plug_lat, self._swap_lat = self._swap_lat, None
            self._sync(self._spare_instances)
            self.plugin, self._spare = self._spare, self.plugin
            self._instances, self._spare_instances = self._spare_instances, self._instances
            self._ramps = {}
        super()._reset()
        self._fifo = _AlignedFifo(self.channels, self.latency)
        self._trims = {id(self.plugin): [0, self._plug_lat, None]}
        self._reported = self._plugin_latency()


# --------------------------------------------------------------------------
# quietcast stages

DENOISE_PARAMS = ParamSet.of(
    Param("model", "str", "default", doc="suppressor name: 'default', 'dsp', ... (quietcast models list), "
                                         "or a neural bundle folder (a path with a '/', relative to the chain file)"),
    Param("strength", "float", 1.0, 0.0, 1.0, doc="share of max_attenuation_db to allow (fader)"),
    Param("max_attenuation_db", "float", None, 0.0, 60.0, "dB",
          doc="largest attenuation of noise at strength 1 (default: the model's own)"),
    Param("pitch_filter", "float", None, 0.0, 1.0,
          doc="strength of the pitch (comb) filter that cleans between a voice's harmonics, neural models only "
              "(default: the model's own; 0 = off)"),
    Param("pause_db", "float", None, 0.0, 60.0, "dB",
          doc="the pause gate: how much further the output falls in the pauses of the voice, neural models with a "
              "pause head only (default: the model's own; 0 = off)"),
    Param("pause_threshold", "float", None, 0.01, 1.0,
          doc="the pause gate closes where the pause head's speech probability is below this: higher closes "
              "more eagerly, neural models with a pause head only (default: the model's own)"),
)


#: denoise parameters passed to the suppressor itself, and what a model
#: without them lacks (in the error)
_MODEL_ONLY = {"pitch_filter": "pitch filter (neural models do)",
               "pause_db": "pause head (the shipped neural models do)",
               "pause_threshold": "pause head (the shipped neural models do)"}


def _round_half_away(v: Fraction) -> int:
    """``std::round``: to the nearest whole number, halves away from 0."""
    return math.floor(v + Fraction(1, 2)) if v >= 0 else -math.floor(-v + Fraction(1, 2))


def resampled_offset(sample_rate: int, rate: int, in_latency: float, out_latency: float) -> Fraction:
    """Where pedalboard's :class:`~pedalboard.io.StreamResampler` pair
    ``sample_rate -> rate -> sample_rate`` puts its output: frame ``i`` of
    what the pair returns is the input at ``i - e`` (``e`` in frames at
    ``sample_rate``, exact).

    Each resampler's filter delays its output by its ``input_latency``
    (frames at its input rate); it trims that many frames *of its output
    rate*, rounded to a whole frame, and the rest of its delay stays in
    its output: ``r - round(r)``, a fraction of a frame. ``in_latency`` and
    ``out_latency``: the two resamplers' ``input_latency``.
    """
    r1 = Fraction(in_latency) * rate / sample_rate  # the first's delay, in frames at ``rate``
    r2 = Fraction(out_latency) * sample_rate / rate  # the second's, in frames at ``sample_rate``
    return (r1 - _round_half_away(r1)) * sample_rate / rate + (r2 - _round_half_away(r2))


def whole_frame_trim(sample_rate: int, rate: int, offset: Fraction, most_kept: int,
                     most: int | None = None) -> tuple[int, int, Fraction]:
    """How many frames more to trim at ``rate`` between the two resamplers
    (negative: fewer, at most ``most_kept`` fewer) so that the pair's output
    lands on a whole frame at ``sample_rate``: each frame at ``rate``
    moves it by ``sample_rate / rate`` frames, so a pair with ``offset``
    (:func:`resampled_offset`) lands at ``offset - m * sample_rate / rate``.

    Returns ``(m, k, error)``: the trim, the whole frame it lands on and how
    far from it. ``most``: the largest trim tried either way, 960 frames
    (20 ms at 48 kHz) unless given; the smallest trim of those with the
    least error is taken. The error is 0 wherever ``rate / gcd(sample_rate,
    rate)`` is at most ``most`` + 1 (160 at 44.1 kHz), and for pedalboard's
    resamplers (whose two delays are the same number of input frames, 64)
    at any rate from 3 kHz up, with ``m`` = that number minus the first
    resampler's trim (-6 at 44.1 kHz): 0 at every one of 300 rates drawn
    from 1 to 384 kHz."""
    step = Fraction(sample_rate, rate)
    most = 2 * (rate // 100) if most is None else int(most)
    most = min(most, rate // math.gcd(sample_rate, rate) - 1)  # the landing repeats after that many
    best = None
    for m in sorted(range(-min(most, most_kept), most + 1), key=abs):
        e = offset - m * step
        k = _round_half_away(e)
        err = e - k
        if best is None or abs(err) < abs(best[2]):
            best = (m, k, err)
            if err == 0:
                break
    return best


class DenoiseStage(Stage):
    """A quietcast suppressor. It runs at 48 kHz: at another chain rate the
    block is resampled in and out (pedalboard's ``StreamResampler``), and the
    declared latency includes the resamplers' delay.

    That delay is a whole number of frames. Each resampler leaves a fraction
    of a frame of its filter's delay in its output (:func:`resampled_offset`;
    the pair alone lands 0.5125 frames early at 44.1 kHz, 0.5469 late at
    22.05 kHz, 0.3333 early at 32 and 8 kHz and late at 16 kHz, 0.7125 early
    at 88.2 kHz, the same at every frequency: it is linear-phase). So the
    stage trims a few frames more or fewer of the suppressor's own latency
    at 48 kHz, each moving the output by ``sample_rate / 48000`` of a frame,
    until it lands on a whole frame (:func:`whole_frame_trim`; at 44.1 kHz
    6 fewer: 6 x 0.91875 = 5.5125), at no cost per block. It lands exactly
    (measured within 0.0002 frames of :attr:`latency` from 200 Hz to 19 kHz
    at 22.05, 32, 44.1 and 88.2 kHz, 0.005 at 11.025 and 176.4 kHz: the
    measurement's own scatter); :attr:`resample_error`
    would say how far off it is at a rate where no trim is exact (none of
    300 rates drawn from 1 to 384 kHz, with pedalboard's resamplers).

    The round trip is flat within 0.003 dB to 0.9 x Nyquist at 22.05 to
    44.1 kHz (0.05 dB at 16 kHz, 0.22 dB at 11.025 kHz, 0.4 dB at 8 kHz),
    -0.04 dB at 0.92, -1.3 dB at 0.95 x Nyquist; above 48 kHz flat to
    20 kHz (0.001 dB at 88.2 and 96 kHz, 0.09 dB at 176.4 kHz) and nothing
    above 24 kHz (the suppressor's band). At strength 0 the output is the
    delayed input: bit-exact at 48 kHz, elsewhere to within the round trip
    (-88 dB of difference at 44.1 kHz for a signal below 0.9 x Nyquist,
    -80 dB at 22.05 kHz).
    """

    type_name = "denoise"

    def __init__(self, name, sample_rate, channels, model="default", strength=1.0, max_attenuation_db=None,
                 whole_hops: bool = False, device: str = "cpu", pitch_filter=None, pause_db=None,
                 pause_threshold=None):
        super().__init__(name, sample_rate, channels, DENOISE_PARAMS)
        from quietcast.models import create_suppressor

        self.suppressor = create_suppressor(model, channels, device=device)
        if hasattr(self.suppressor, "set_stems"):  # a stage passes on the output only
            self.suppressor.set_stems(False)
        if whole_hops and self.sample_rate == self.suppressor.sample_rate and hasattr(self.suppressor, "set_aligned"):
            # the caller (the live engine) passes whole hops only: no hop of buffering
            self.suppressor.set_aligned(True)
        self.model = self.suppressor.name
        if max_attenuation_db is None:
            max_attenuation_db = float(self.suppressor.PARAMS["strength_db"][2])
        self.values = {"model": model, "strength": strength, "max_attenuation_db": max_attenuation_db}
        # the strength ramp (live changes only: built or reset, a stage starts at its value)
        self._floor_now: float | None = None
        self._live = self._opening = False
        self._ramp_left = 0
        self._apply_strength()
        for name, value in (("pitch_filter", pitch_filter), ("pause_db", pause_db),
                            ("pause_threshold", pause_threshold)):
            if value is not None:
                self._apply_param(name, value)
            elif name in self.suppressor.PARAMS:  # the model's own
                self.values[name] = float(self.suppressor.get_param(name))
        sr = self.sample_rate
        if sr == self.suppressor.sample_rate:
            self._resampled = False
            self.latency = self.suppressor.latency
            self.resample_error = 0.0
        else:
            from pedalboard.io import StreamResampler

            self._resampled = True
            self._rin = StreamResampler(sr, self.suppressor.sample_rate, channels)
            self._rout = StreamResampler(self.suppressor.sample_rate, sr, channels)
            rate = self.suppressor.sample_rate
            offset = resampled_offset(sr, rate, self._rin.input_latency, self._rout.input_latency)
            m, lands, err = whole_frame_trim(sr, rate, offset, most_kept=self.suppressor.latency)
            #: how far (in frames, + late) the output is from :attr:`latency`: 0 at every common rate
            self.resample_error = float(err)
            self._skip_at_start = self.suppressor.latency + m
            self._skip = self._skip_at_start
            self._guard = _ShapeGuard(channels, channels)
            self._guard_out = _ShapeGuard(channels, channels)
            fill = probe_latency(self._run_resampled, self._reset, channels)
            self._fifo = _AlignedFifo(channels, fill)
            # the aligned output's frame i is the input at i - lands: the fifo's fill delays it further
            self.latency = fill + lands
        self._finish_init()

    def lacks(self, name):
        if name in _MODEL_ONLY and name not in self.suppressor.PARAMS:
            return f"model {self.values['model']!r} has no {_MODEL_ONLY[name]}"
        return None

    #: a live strength change reaches its value over this long, in steps of one block
    RAMP_S = 0.2

    def _apply_strength(self):
        """The suppressor's floor for ``strength`` x ``max_attenuation_db``.
        Set at once when the stage is built or reset; a live change moves
        the floor (linear gain) there over :attr:`RAMP_S`, one step per
        block (twenty 10 ms steps live): set in one go, the neural model's
        background jumps in or out between two samples, a click wherever
        there is hum or a noise bed."""
        goal = 10.0 ** (-self.values["strength"] * self.values["max_attenuation_db"] / 20.0)
        self._end_opening()  # a new value while the gate was opening: ramp on from here
        if self._floor_now is None or not self._live:
            self._set_floor(goal)
            self._ramp_left = 0
        else:
            self._floor_from, self._ramp_left = self._floor_now, self._ramp_total
        self._floor_goal = goal

    @property
    def _ramp_total(self) -> int:
        """A strength ramp's length in frames at the suppressor's rate."""
        return max(1, int(self.RAMP_S * self.suppressor.sample_rate))

    def _end_opening(self) -> None:
        """The pause gate's depth back after the opening step of a ramp to
        strength 0 (:meth:`_step_floor`), if one is under way."""
        if self._opening:
            self._opening = False
            self.suppressor.set_param("pause_db", self.values["pause_db"])

    def _set_floor(self, floor: float) -> None:
        self._floor_now = floor
        self.suppressor.set_param("strength_db", min(60.0, max(0.0, -20.0 * math.log10(max(floor, 1e-3)))))

    def _step_floor(self, n: int) -> None:
        """Advance a strength ramp by ``n`` frames (at the suppressor's rate).

        A ramp to strength 0 (floor 1: the delayed input, where the neural
        model's pause gate is not applied) holds one block short of it with
        the gate's depth at 0, so a closed gate opens (ramped, within that
        block) before the output becomes the input."""
        if self._opening:  # the gate is open: the last step
            self._end_opening()
            self._ramp_left = 0
            self._set_floor(self._floor_goal)
            return
        self._ramp_left = max(0, self._ramp_left - n)
        g = self._floor_goal
        floor = g + (self._floor_from - g) * self._ramp_left / self._ramp_total
        if floor >= 1.0 and float(self.values.get("pause_db") or 0.0) > 0.0 and "pause_db" in self.suppressor.PARAMS:
            self._opening, self._ramp_left = True, 1
            self.suppressor.set_param("pause_db", 0.0)
            floor = min(self._floor_now, 10.0 ** (-0.01 / 20.0))
        self._set_floor(floor)

    def _apply_param(self, name, value):
        if name == "model":
            raise ParameterError(f"{self.name}.{name}", "cannot be changed while running; load a new chain")
        if name in _MODEL_ONLY:  # the suppressor's own parameters, which some models lack
            why = self.lacks(name)
            if why:
                raise ParameterError(f"{self.name}.{name}", why)
            self.suppressor.set_param(name, value)
            self.values[name] = float(self.suppressor.get_param(name))
            return
        self.values[name] = value
        self._apply_strength()

    def _run_resampled(self, x: np.ndarray) -> np.ndarray:
        x = self._guard.take(x)
        if x.shape[1] == 0:
            return x
        r = self._rin.process(x)
        y48 = self.suppressor.process(r) if r.shape[1] else r
        if self._skip:  # make the suppressor's output aligned, like the resamplers'
            drop = min(self._skip, y48.shape[1])
            y48 = y48[:, drop:]
            self._skip -= drop
        y48 = self._guard_out.take(y48)
        if y48.shape[1] == 0:
            return y48
        return self._rout.process(y48)

    def _process(self, x):
        self._live = True  # from the first block on, strength changes ramp
        if self._ramp_left and x.shape[1]:
            n = x.shape[1] if not self._resampled else round(x.shape[1] * self.suppressor.sample_rate / self.sample_rate)
            self._step_floor(max(1, n))
        if not self._resampled:
            return self.suppressor.process(x)
        if x.shape[1]:
            self._fifo.push(self._run_resampled(x))
        return self._fifo.pull(x.shape[1])

    def _reset(self):
        self.suppressor.reset()
        self._live = False  # a reset stage starts at its value
        self._apply_strength()
        if self._resampled:
            self._rin.reset()
            self._rout.reset()
            self._guard.reset()
            self._guard_out.reset()
            self._skip = self._skip_at_start
            if hasattr(self, "_fifo"):
                self._fifo.reset()


GAIN_PARAMS = ParamSet.of(Param("gain_db", "float", 0.0, -96.0, 24.0, "dB", allow_neg_inf=True))


def _db_to_lin(db: float) -> float:
    return 0.0 if db == -math.inf else 10.0 ** (db / 20.0)


class GainStage(Stage):
    """A gain in dB (-inf mutes). A change ramps linearly over one block."""

    type_name = "gain"

    def __init__(self, name, sample_rate, channels, gain_db=0.0):
        super().__init__(name, sample_rate, channels, GAIN_PARAMS)
        self.values = {"gain_db": gain_db}
        self._g = self._target = _db_to_lin(gain_db)
        self._finish_init()

    def _apply_param(self, name, value):
        self._target = _db_to_lin(value)

    def _process(self, x):
        n = x.shape[1]
        if self._g == self._target or n == 0:
            return x * np.float32(self._g)
        ramp = np.linspace(self._g, self._target, n, dtype=np.float32)
        self._g = self._target
        return x * ramp

    def _reset(self):
        self._g = self._target


MIX_PARAMS = ParamSet.of(Param("wet", "float", 1.0, 0.0, 1.0, doc="share of the processed signal; the rest is the chain input"))


class MixStage(Stage):
    """Blends the output of the stages before it (wet) with the chain's own
    input (dry), delayed to line up; no latency of its own."""

    type_name = "mix"

    def __init__(self, name, sample_rate, channels, wet=1.0, dry_delay=0):
        super().__init__(name, sample_rate, channels, MIX_PARAMS)
        self.values = {"wet": wet}
        self._wet = self._target = float(wet)
        # (a stage before it whose latency grows live moves it: crossfaded, with the input it needs)
        self._chain_dry = MovableDelay(channels, dry_delay, math.ceil(_PLUGIN_HISTORY_S * self.sample_rate))
        self._chain_in: np.ndarray | None = None
        self._finish_init()

    @property
    def dry_delay(self) -> int:
        """How far the chain's input is delayed to line up with the stages before it."""
        return self._chain_dry._to if self._chain_dry._to is not None else self._chain_dry.delay

    def set_dry_delay(self, delay: int) -> None:
        """The stages before it now have latency ``delay``: the chain's input
        follows, crossfaded across the next block (as their output does)."""
        self._chain_dry.set_delay(delay)

    def feed_chain_input(self, x: np.ndarray) -> None:
        self._chain_in = self._chain_dry.process(x)

    def _apply_param(self, name, value):
        self._target = float(value)

    def _process(self, x):
        d = self._chain_in
        n = x.shape[1]
        if self._wet == self._target or n == 0:
            w = np.float32(self._wet)
        else:
            w = np.linspace(self._wet, self._target, n, dtype=np.float32)
            self._wet = self._target
        return x * w + d * (np.float32(1.0) - w)

    def _reset(self):
        self._wet = self._target
        self._chain_dry.reset()


OWN_TYPES: dict[str, ParamSet] = {
    "plugin": PLUGIN_PARAMS,
    "denoise": DENOISE_PARAMS,
    "gain": GAIN_PARAMS,
    "mix": MIX_PARAMS,
}


def all_types() -> list[str]:
    return sorted(list(OWN_TYPES) + [t for t in BUILTINS if t not in UNSUPPORTED])


def params_of(type_name: str) -> ParamSet:
    if type_name in OWN_TYPES:
        return OWN_TYPES[type_name]
    return BUILTINS[type_name][1]


def resolve_type(type_name: Any) -> tuple[str | None, Problem | None]:
    """Canonical stage type for ``type_name``, or a problem saying why not."""
    if not isinstance(type_name, str):
        return None, Problem("", f"'type' must be a string, got {type_name!r}")
    t = type_name.strip().lower().replace("-", "_")
    t = ALIASES.get(t, t)
    if t in UNSUPPORTED:
        return None, Problem("", f"type {type_name!r} is not supported: {UNSUPPORTED[t]}")
    if t in OWN_TYPES or t in BUILTINS:
        return t, None
    return None, Problem(
        "", f"unknown type {type_name!r}{did_you_mean(t, all_types() + list(ALIASES))}; known types: {', '.join(all_types())}"
    )


def build_stage(type_name: str, name: str, values: dict, sample_rate: int, channels: int, dry_delay: int = 0,
                device: str = "cpu") -> Stage:
    """Build a runtime stage from checked ``values`` (without ``bypass``);
    ``device``: where a denoise stage runs its model."""
    if type_name == "plugin":
        st = PluginStage(name, sample_rate, channels, values["path"], values.get("plugin_name"), values.get("params"),
                         min_latency=values.get("min_latency", 0), live_latency=values.get("live_latency", False))
    elif type_name == "denoise":
        st = DenoiseStage(name, sample_rate, channels, device=device, **values)
    elif type_name == "gain":
        st = GainStage(name, sample_rate, channels, **values)
    elif type_name == "mix":
        st = MixStage(name, sample_rate, channels, dry_delay=dry_delay, **values)
    else:
        st = build_builtin(type_name, name, sample_rate, channels, values)
    return st
