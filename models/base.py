"""The streaming interface every quietcast suppressor shares.

A suppressor takes blocks of audio shaped ``[channels, frames]`` (float32,
any ``frames`` >= 0, the same ``channels`` on every call) at its own sample
rate (48 kHz for every suppressor in this package) and returns a block of the
same shape. Output is the input delayed by a fixed, declared number of
samples, :attr:`Suppressor.latency`, whatever the block sizes: feeding one
long block or the same samples in blocks of 1, 64 or 8193 frames gives
bit-identical output. State is per channel; one call processes every
channel in one batch.

Internally a suppressor works on hops (10 ms = 480 samples at 48 kHz).
:class:`HopSuppressor` turns arbitrary block sizes into hops with one hop of
buffering: ``latency = hop + algorithmic_latency``.

Input hygiene is part of the contract: NaN and +-Inf samples are replaced by
0 before processing, values are clipped to +-``MAX_ABS`` and denormals are
flushed to zero, so nothing non-finite ever comes out. The number of
replaced samples is counted in :attr:`Suppressor.bad_samples`.
"""

from __future__ import annotations

import abc
import math

import numpy as np

SAMPLE_RATE = 48_000
HOP = 480  # 10 ms at 48 kHz
MAX_ABS = 64.0  # +36 dBFS: anything above is clipped before processing
_TINY = np.float32(1e-30)


def all_finite(x: np.ndarray) -> bool:
    """Whether every sample of ``x`` is finite: one pass (a finite sum
    means no NaN or Inf), no mask; the exact check only when the sum is
    not finite (also when huge finite samples overflow it)."""
    with np.errstate(over="ignore", invalid="ignore"):
        if math.isfinite(float(x.sum())):
            return True
    return bool(np.isfinite(x).all())


def sanitize(block: np.ndarray) -> tuple[np.ndarray, int]:
    """Return a float32 copy of ``block`` with NaN/Inf zeroed, huge values
    clipped to +-MAX_ABS and denormals flushed; and how many samples were
    not finite."""
    x = np.array(block, dtype=np.float32, copy=True)
    bad = 0
    if not all_finite(x):
        finite = np.isfinite(x)
        bad = int(x.size - np.count_nonzero(finite))
        x[~finite] = 0.0
    np.clip(x, -MAX_ABS, MAX_ABS, out=x)
    x[np.abs(x) < _TINY] = 0.0
    return x, bad


class Suppressor(abc.ABC):
    """Streaming noise suppressor: ``process(block[C, N]) -> block[C, N]``.

    Attributes:
        sample_rate: the rate the suppressor runs at (Hz).
        channels: number of channels; fixed at construction.
        latency: output delay in samples, constant for the object's life.
        bad_samples: NaN/Inf input samples replaced by 0 so far.
    """

    name: str = "suppressor"
    #: where it runs, in words (the neural suppressor may say "cuda-graph (...)")
    backend: str = "cpu"
    sample_rate: int = SAMPLE_RATE
    #: live parameters: name -> (min, max, default, unit)
    PARAMS: dict = {"strength_db": (0.0, 60.0, 0.0, "dB")}

    def __init__(self, channels: int = 1):
        self.channels = self.check_channels(channels)
        self.bad_samples = 0
        for n, spec in self.PARAMS.items():  # defaults, unless a subclass set them already
            if not hasattr(self, f"_{n}"):
                setattr(self, f"_{n}", float(spec[2]))

    @staticmethod
    def check_channels(channels) -> int:
        """``channels`` as an int, or a ValueError unless it is an integer >= 1
        (a subclass that sets up per-channel state first calls this before)."""
        if not isinstance(channels, (int, np.integer)) or channels < 1:
            raise ValueError(f"channels must be an integer >= 1, got {channels!r}")
        return int(channels)

    @property
    @abc.abstractmethod
    def latency(self) -> int:
        """Delay from input to output, in samples at :attr:`sample_rate`."""

    @abc.abstractmethod
    def process(self, block: np.ndarray) -> np.ndarray:
        """Process ``block[channels, frames]``; returns the same shape."""

    @abc.abstractmethod
    def reset(self) -> None:
        """Forget all state, as if newly built."""

    def check_param(self, name: str, value) -> float:
        """``value`` as a float for the live parameter ``name``, or a
        ValueError naming the parameter, the value and the allowed range
        (an unknown name, a non-number, NaN, or out of range)."""
        if name not in self.PARAMS:
            raise ValueError(f"{self.name}: unknown parameter {name!r}; known: {', '.join(self.PARAMS)}")
        lo, hi = self.PARAMS[name][:2]
        try:
            if isinstance(value, (bool, np.bool_, str, bytes)):
                raise TypeError
            v = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"{self.name}: {name}={value!r} is not a number; allowed range [{lo:g}, {hi:g}]") from None
        if not (lo <= v <= hi):  # also refuses NaN
            raise ValueError(f"{self.name}: {name}={value!r} is out of range [{lo:g}, {hi:g}]")
        return v

    def set_param(self, name: str, value) -> None:
        """Set a live parameter (stored as ``self._NAME``); subclasses that
        derive state from it extend this. Takes effect at the next hop."""
        setattr(self, f"_{name}", self.check_param(name, value))

    def get_param(self, name: str) -> float:
        """Current value of a parameter listed in :attr:`PARAMS`."""
        if name not in self.PARAMS:
            self.check_param(name, 0.0)  # the unknown-name error
        return float(getattr(self, f"_{name}"))

    @property
    def strength_db(self) -> float:
        """Maximum attenuation in dB (0: the output is the delayed input)."""
        return self._strength_db

    @strength_db.setter
    def strength_db(self, value) -> None:
        self.set_param("strength_db", value)

    def _check_block(self, block: np.ndarray) -> np.ndarray:
        block = np.asarray(block)
        if block.ndim != 2 or block.shape[0] != self.channels:
            raise ValueError(
                f"{self.name}: block must be shaped [channels={self.channels}, frames], "
                f"got {tuple(block.shape)}"
            )
        return block


class HopSuppressor(Suppressor):
    """Adapts a hop-by-hop core to any block size at a fixed latency.

    Subclasses implement :meth:`process_hop` (``[C, hop] -> [C, hop]``,
    output delayed by :attr:`algorithmic_latency`) and :meth:`reset_core`.
    One hop of zeros is pre-filled at the output, so any block size can be
    served at once: total latency = ``hop + algorithmic_latency``.
    """

    hop: int = HOP
    algorithmic_latency: int = 0
    _aligned = False

    def __init__(self, channels: int = 1):
        super().__init__(channels)
        self._init_fifos()

    def _init_fifos(self) -> None:
        cap = 4 * self.hop
        self._in = np.zeros((self.channels, cap), np.float32)
        self._in_n = 0
        self._out = np.zeros((self._out_rows(), cap), np.float32)
        self._out_n = 0 if self._aligned else self.hop  # one hop of pre-filled zeros

    def _out_rows(self) -> int:
        """Rows of the output fifo: the channels; a subclass that also
        streams stems keeps them in more rows (see :meth:`_hop_out`)."""
        return self.channels

    def _hop_out(self, hop: np.ndarray) -> np.ndarray:
        """The ``[_out_rows(), hop]`` rows one input hop pushes into the
        output fifo (default: :meth:`process_hop`)."""
        return self.process_hop(hop)

    def set_aligned(self, on: bool = True) -> None:
        """For a caller that only ever passes whole hops (blocks of a
        multiple of :attr:`hop` frames, from the first call on; the live
        engine does): no hop of buffering is needed, so the latency drops
        to :attr:`algorithmic_latency`. State is reset."""
        self._aligned = bool(on)
        self._init_fifos()

    @property
    def latency(self) -> int:
        return (0 if self._aligned else self.hop) + self.algorithmic_latency

    def reset(self) -> None:
        self._init_fifos()
        self.bad_samples = 0
        self.reset_core()

    @abc.abstractmethod
    def process_hop(self, hop: np.ndarray) -> np.ndarray:
        """Process exactly ``[channels, hop]`` clean float32 samples."""

    @abc.abstractmethod
    def reset_core(self) -> None:
        """Reset the hop core's state."""

    def process(self, block: np.ndarray) -> np.ndarray:
        return self._stream(block)

    def _stream(self, block: np.ndarray) -> np.ndarray:
        """Any block size through the hop core: ``[_out_rows(), N]``."""
        block = self._check_block(block)
        n = block.shape[1]
        if self._aligned and n % self.hop:
            raise ValueError(f"{self.name}: in aligned mode blocks must be whole hops ({self.hop} frames), got {n}")
        x, bad = sanitize(block)
        self.bad_samples += bad
        out = np.empty((self._out.shape[0], n), np.float32)
        hop = self.hop
        if self._aligned:  # whole hops only, so both fifos are empty: straight through
            for k in range(0, n, hop):
                out[:, k:k + hop] = self._hop_out(x[:, k:k + hop])
            return out
        pos = 0  # read position in x
        done = 0  # samples written to out
        while pos < n:
            take = min(hop - self._in_n, n - pos)
            self._in[:, self._in_n:self._in_n + take] = x[:, pos:pos + take]
            self._in_n += take
            pos += take
            if self._in_n == hop:
                y = self._hop_out(self._in[:, :hop])
                self._in_n = 0
                # out fifo holds at most one hop before this push
                self._out[:, self._out_n:self._out_n + hop] = y
                self._out_n += hop
            # drain what the caller's block can take so far
            give = min(self._out_n, pos - done)
            if give:
                out[:, done:done + give] = self._out[:, :give]
                self._out[:, :self._out_n - give] = self._out[:, give:self._out_n]
                self._out_n -= give
                done += give
        assert done == n
        return out


class Passthrough(HopSuppressor):
    """A suppressor that removes nothing: the input delayed by one hop.

    Useful as a stand-in in tests and as the reference for the bypass path.
    """

    name = "passthrough"

    def process_hop(self, hop: np.ndarray) -> np.ndarray:
        return hop.copy()

    def reset_core(self) -> None:
        pass
