"""The ``dsp`` suppressor: a classic, weight-free streaming noise suppressor.

It is the always-available fallback and the baseline the neural model must
beat. Everything here is numpy (no scipy, no torch), so importing it costs
nothing and offline processing stays small.

Signal path, per 10 ms hop, every channel in one batch (channel axis 0):

1. STFT: periodic sqrt-Hann window of 960 samples (20 ms), hop 480,
   960-point real FFT (481 bins, 50 Hz apart), the same window for
   synthesis. sqrt-Hann squared sums to exactly 1 at 50 % overlap, so with
   unit gain the output is the input delayed by ``window - hop`` = 480
   samples; with the 480-sample hop buffer of :class:`HopSuppressor` the
   latency is 960 samples (20 ms).
2. Noise power spectrum: IMCRA (Cohen 2003, "improved minima controlled
   recursive averaging"). The periodogram is smoothed over frequency and
   time; minimum statistics over ~1.44 s (8 sub-windows of 180 ms) in two
   iterations, the second excluding bins that look like speech; a soft
   a-priori speech absence probability from the ratios to those minima;
   the noise estimate is a recursive average that speech presence slows
   down (speech bins are not averaged in), with IMCRA's bias factor.
   Anything shorter than the minimum window (a held vowel up to ~1.5 s) is
   not learnt as noise; a rising noise floor is followed within ~1.5-2 s, a
   falling one within a few hops.
   Start-up and digital silence: frames with an all-zero hop feed neither
   the minima nor the noise estimate (the estimate from before a mute is
   kept); a channel's first frames are smoothed as a running mean, so the
   estimate converges within ~0.1-0.2 s of a clip, and until minima exist
   the noise estimate follows the minimum of what was seen and speech
   presence is "unknown" (0.5), so a clip that starts on a word does not
   lose it entirely.
3. Gain: OM-LSA (Cohen & Berdugo 2001): decision-directed a-priori SNR, the
   MMSE log-spectral-amplitude gain ``G_H1`` (exponential integral tabulated
   at import, numpy only), combined with the speech presence probability
   ``p`` as ``G0 = G_H1**p * G_ref**(1 - p)`` with a fixed reference floor
   ``G_ref`` = -20 dB; ``strength_db`` then scales that curve in dB:
   ``G = G0**(strength_db / 20)``, so noise-only bins end on the
   ``-strength_db`` floor, speech bins stay near 0 dB, 0 dB is an exact
   delay and the estimator's state does not depend on the strength. No gate
   anywhere: the attenuation is a continuous function of the per-bin SNR
   estimate, never more than ``strength_db``, and an onset opens the gain
   in its own hop (the posterior-SNR term of the a-priori SNR reacts at
   once).
4. Against musical noise: in noise-only bins ``p`` is mostly ~0, so the
   gain sits on the floor and the residual is a scaled copy of the input
   noise rather than random tones; above ~1.6 kHz the gain is also
   smoothed over frequency (boxcar about half an ERB wide); below,
   harmonics stay resolved. DC and Nyquist bins follow their neighbours.

``strength_db`` (maximum attenuation) defaults to 15 dB: about the most
that keeps the residual bed natural and speech onsets and tails intact on
live speech (speexdsp's noise suppressor uses the same default); more
attenuation buys little on non-stationary noise and makes speech
distortion audible. 0 dB turns the suppressor into an exact delay.
Stationary noise alone comes out ~14 dB down at 15 dB (white; ~13 dB for
pink), ~27 dB at 30 dB and ~43 dB at 60 dB: at high settings random
spectral peaks that read as possible speech are what is left.
"""

from __future__ import annotations

import math

import numpy as np

from .base import HOP, SAMPLE_RATE, HopSuppressor

__all__ = ["DspSuppressor"]

_F32 = np.float32


def _expint_e1(x: np.ndarray) -> np.ndarray:
    """Exponential integral E1(x) for x > 0 (float64, numpy only; ~1e-12)."""
    x = np.asarray(x, dtype=np.float64)
    out = np.empty_like(x)
    small = x <= 1.0
    xs = x[small]
    if xs.size:  # power series: -gamma - ln x + sum (-1)^(n+1) x^n / (n n!)
        acc = np.zeros_like(xs)
        term = np.ones_like(xs)
        for n in range(1, 40):
            term = term * (-xs) / n
            acc -= term / n
        out[small] = -0.5772156649015329 - np.log(xs) + acc
    xl = x[~small]
    if xl.size:  # continued fraction, evaluated bottom-up
        t = xl + 2 * 80 + 1
        for i in range(80, 0, -1):
            t = xl + 2 * i - 1 - (i * i) / t
        out[~small] = np.exp(-xl) / t
    return out


# exp(0.5 * E1(v)) tabulated on a uniform grid of ln(v): the LSA gain factor.
_LSA_LNV = np.linspace(-12.0, 5.0, 1701)
_LSA_F = np.exp(0.5 * _expint_e1(np.exp(_LSA_LNV)))
_LSA_SCALE = (len(_LSA_LNV) - 1) / (_LSA_LNV[-1] - _LSA_LNV[0])
_LSA_LAST = len(_LSA_LNV) - 1.0001  # keeps index + 1 inside the table
_LSA_F32 = _LSA_F.astype(_F32)
_LSA_D32 = np.append(np.diff(_LSA_F), 0.0).astype(_F32)


class DspSuppressor(HopSuppressor):
    """Streaming IMCRA noise estimate + OM-LSA gain; 48 kHz, 10 ms hop.

    Args:
        channels: number of channels (rows of each block), each with its own
            state, all processed in one batch.
        strength_db: maximum attenuation in dB (0 = no effect); see
            :attr:`PARAMS` for the range. Can be changed while streaming with
            :meth:`set_param` or the :attr:`strength_db` property; it takes
            effect at the next hop.

    Attributes:
        PARAMS: ``name -> (min, max, default, unit)`` of every parameter.
        gain_reduction_db: ``float32[channels]``, the last hop's gain
            reduction in dB (>= 0): how much quieter the hop's output is than
            its input, energy-weighted over frequency (0 for silent input).
            Computed when read (meters poll it at ~20 Hz, not per hop).
        gain: ``float32[channels, 481]``, the last hop's spectral gain.
        latency: 960 samples (20 ms): hop buffer 480 + ``algorithmic_latency``
            480 (window 960 - hop 480).
    """

    name = "dsp"
    sample_rate = SAMPLE_RATE
    hop = HOP
    window = 2 * HOP
    algorithmic_latency = window - hop
    n_bins = window // 2 + 1

    #: name -> (min, max, default, unit)
    PARAMS: dict[str, tuple[float, float, float, str]] = {
        "strength_db": (0.0, 60.0, 15.0, "dB"),
    }

    # --- IMCRA / OM-LSA constants: Cohen's values, time constants rescaled
    # from his 8 ms hop to our 10 ms hop ---
    _ALPHA_S = 0.9 ** 1.25  # periodogram time smoothing
    _ALPHA_D = 0.85 ** 1.25  # noise recursive averaging (speech absent)
    _BETA = 1.47  # bias compensation of the noise estimate
    _B_MIN = 1.66  # bias of the minimum statistics
    _GAMMA0 = 4.6  # first-iteration posterior-SNR threshold
    _GAMMA1 = 3.0  # a-priori absence: soft region upper bound
    _GAMMAQ = 1.5  # ... and lower bound (absence certain below; Cohen: 1)
    _ZETA0 = 1.67  # smoothed-SNR threshold
    _U = 8  # minimum sub-windows
    _V = 18  # hops per sub-window (8 x 18 x 10 ms = 1.44 s)
    _ALPHA_DD = 0.92  # decision-directed weight
    _XI_MIN = 10 ** (-25 / 10)  # a-priori SNR floor
    _REF_DB = 20.0  # OM-LSA floor the gain curve is computed for, then scaled
    _SMOOTH_ERB = 0.25  # gain smoothing: half-width of the boxcar in ERBs
    _N_WARM = 8  # hops of running-mean smoothing before minima are fed
    _KAPPA = 1.0  # 2nd-iteration minimum >= KAPPA x 1st (at sub-window ends)
    _EPS = 1e-20
    _BIG = 1e30  # "no minimum yet"

    def __init__(self, channels: int = 1, strength_db: float = 15.0):
        super().__init__(channels)
        self._strength_db = 0.0
        self._floor = (_F32(1.0), _F32(0.0))  # G_min, strength_db / REF_DB
        self.set_param("strength_db", strength_db)

        n, k = self.window, self.n_bins
        self._win = np.sqrt(0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n) / n)).astype(_F32)
        # Frequency smoothing of the gain: boxcar over bins [lo, hi), half
        # width _SMOOTH_ERB of an ERB (none below ~1.6 kHz, where harmonics
        # are resolved; ~0.5 ERB in all above).
        f = np.arange(k) * (self.sample_rate / n)
        erb_bins = 24.7 * (4.37e-3 * f + 1.0) / (self.sample_rate / n)
        half = np.floor(self._SMOOTH_ERB * erb_bins).astype(np.int64)
        k0 = int(np.argmax(half > 0)) if (half > 0).any() else k - 1
        idx = np.arange(k0, k)
        lo = np.clip(idx - half[k0:], k0, k - 1)
        hi = np.clip(idx + half[k0:] + 1, k0 + 1, k)
        self._g_k0 = k0  # first smoothed bin
        self._g_lo = lo - k0  # indices into [0, cumsum(G[:, k0:])]
        self._g_hi = hi - k0
        self._g_iw = (1.0 / (hi - lo)).astype(_F32)

        c = _F32
        self._c = {  # float32 constants of the per-hop code
            "a_s": c(self._ALPHA_S), "b_s": c(1.0) - c(self._ALPHA_S),
            "g0b": c(self._GAMMA0 * self._B_MIN), "z0b": c(self._ZETA0 * self._B_MIN),
            # q = (GAMMA1 - Sf / (B_MIN Smin~)) / (GAMMA1 - 1) = qa - Sf / (qb Smin~)
            "qa": c(self._GAMMA1 / (self._GAMMA1 - self._GAMMAQ)),
            "qb": c(self._B_MIN * (self._GAMMA1 - self._GAMMAQ)),
            "dd": c(self._ALPHA_DD), "dd1": c(1.0 - self._ALPHA_DD),
            "ximin": c(self._XI_MIN), "ad": c(self._ALPHA_D), "ad1": c(1.0 - self._ALPHA_D),
            "beta": c(self._BETA), "eps": c(self._EPS), "big": c(self._BIG),
            "gref": c(10 ** (-self._REF_DB / 20)), "lgref": c(-self._REF_DB / 20 * math.log(10)),
            "lsa0": c(_LSA_LNV[0]), "lsas": c(_LSA_SCALE), "lsal": c(_LSA_LAST),
        }
        self.reset_core()

    # ------------------------------------------------------------ parameters
    def set_param(self, name: str, value) -> None:
        """Set a parameter listed in :attr:`PARAMS`; takes effect next hop.

        Raises ValueError naming the parameter, the value and the allowed
        range for an unknown name, a non-number or a value out of range
        (e.g. ``dsp: strength_db=120 is out of range [0, 60]``)."""
        v = self.check_param(name, value)
        if name == "strength_db":
            gmin = 10.0 ** (-v / 20.0)
            # one tuple, swapped atomically under a concurrent process()
            self._floor = (_F32(gmin), _F32(v / self._REF_DB))
            self._strength_db = v

    # ---------------------------------------------------------------- meters
    @property
    def gain(self) -> np.ndarray:
        """The last hop's spectral gain, ``float32[channels, 481]``."""
        return self._last[1]

    @property
    def gain_reduction_db(self) -> np.ndarray:
        """The last hop's gain reduction per channel in dB (>= 0)."""
        P, G = self._last
        e_in = P.sum(axis=1, dtype=np.float64)
        e_out = (P * (G * G)).sum(axis=1, dtype=np.float64)
        gr = 10.0 * np.log10((e_in + 1e-30) / (e_out + 1e-30))
        return np.maximum(gr, 0.0).astype(_F32)

    # ----------------------------------------------------------------- state
    def reset_core(self) -> None:
        c, n, k = self.channels, self.window, self.n_bins
        big = self._BIG
        self._frame = np.zeros((c, n), _F32)  # last two hops of input
        self._ola = np.zeros((c, self.hop), _F32)  # overlap-add tail
        self._prev_unity = True  # last hop ran at strength 0 (ola is w^2 x)
        self._last = (np.zeros((c, k), _F32), np.ones((c, k), _F32))  # P, G
        self._S = np.zeros((c, k), _F32)  # smoothed periodogram
        self._St = np.zeros((c, k), _F32)  # same, speech bins excluded
        self._smin = np.full((c, k), big, _F32)  # minima of S
        self._smin_sw = np.full((c, k), big, _F32)  # ... in this sub-window
        self._stmin = np.full((c, k), big, _F32)  # minima of St
        self._stmin_sw = np.full((c, k), big, _F32)
        self._ring = np.full((self._U, c, k), big, _F32)  # sub-window minima
        self._ring_t = np.full((self._U, c, k), big, _F32)
        self._ring_i = 0
        self._sw_n = 0
        self._lam_t = np.zeros((c, k), _F32)  # noise PSD before bias factor
        self._lam = np.zeros((c, k), _F32)  # noise PSD estimate
        self._dd = np.zeros((c, k), _F32)  # ALPHA_DD * G_H1^2 * gamma, last hop
        # start-up / digital-silence bookkeeping
        self._prev_live = np.zeros((c, 1), bool)  # previous hop not all zeros
        self._prev_all_live = False
        self._live = np.zeros((c, 1), bool)  # has had a complete frame
        self._fresh = np.zeros((c, 1), bool)  # first warm-up, no minima yet
        self._age = np.zeros((c, 1), _F32)  # complete frames since (re)start
        self._steady = False  # every channel live and warmed up
        self._sw_data = np.zeros((c, 1), bool)  # minima fed in this sub-window
        self._sw_fast = False  # ... by the all-channels fast path
        self._cs = np.zeros((c, k - self._g_k0 + 1), _F32)

    # ---------------------------------------------------------------- helpers
    @staticmethod
    def _fsmooth(x: np.ndarray) -> np.ndarray:
        """[0.25, 0.5, 0.25] over frequency. The DC bin (real: twice the
        variance, and whatever offset the source has) is left out of bin
        1's average, which mirrors bin 2 instead; the two edge bins, whose
        own gain is not used, just lose a neighbour."""
        y = x * _F32(0.5)
        q = x * _F32(0.25)
        y[:, 2:] += q[:, 1:-1]
        y[:, :-1] += q[:, 1:]
        y[:, 1] += q[:, 2]
        return y

    def _unsteady(self, hop_live: np.ndarray, Sf: np.ndarray):
        """Start-up / digital-silence path, per channel (rarely taken).

        A frame is complete when neither of its two hops is all zeros.
        Incomplete frames feed neither the minima nor the noise estimate. A
        channel's first complete frame initialises its noise estimate; after
        start-up or silence the periodogram smoothing restarts as a running
        mean (fast and low-variance) and the minima are fed again only after
        _N_WARM hops, so half-empty frames never pull them down.

        Until a fresh channel has minima, nothing says whether its first
        frames are noise or speech (a clip may start on a word): the noise
        estimate follows the minimum of the smoothed periodogram and the
        a-priori speech absence is 0.5, so early words are not taken for
        noise; returned as the ``fresh`` mask."""
        c = self._c
        complete = hop_live & self._prev_live
        new = complete & ~self._live
        if new.any():
            self._live |= new
            self._fresh |= new
            np.copyto(self._lam_t, Sf, where=new)
            np.copyto(self._lam, Sf * c["beta"], where=new)
        fresh = self._fresh & complete
        age = self._age
        age[~complete] = 0.0
        # (re)start: the speech-excluding smoothing starts from this frame
        # (it may keep its previous value where every bin looks like speech)
        np.copyto(self._St, Sf, where=complete & (age == 0))
        a_s = np.minimum(c["a_s"], age / (age + _F32(1.0))).astype(_F32)
        b_s = _F32(1.0) - a_s
        feed = complete & (age >= self._N_WARM)
        age += complete
        self._fresh &= age <= self._N_WARM
        self._sw_data |= feed
        self._steady = bool(self._live.all() and (age > self._N_WARM).all())
        return a_s, b_s, complete, feed, (fresh if fresh.any() else None)

    def _next_subwindow(self, s_in: np.ndarray, st_in: np.ndarray) -> None:
        self._sw_n = 0
        i = self._ring_i
        # a sub-window that fed no frame (silence) keeps the older minimum
        d = self._sw_data | self._sw_fast
        np.copyto(self._ring[i], self._smin_sw, where=d)
        np.copyto(self._ring_t[i], self._stmin_sw, where=d)
        self._sw_data[:] = False
        self._sw_fast = False
        self._ring_i = (i + 1) % self._U
        np.minimum.reduce(self._ring, axis=0, out=self._smin)
        np.minimum.reduce(self._ring_t, axis=0, out=self._stmin)
        if self._KAPPA:
            # the second-iteration smoothing is frozen while everything looks
            # like speech, which would double the tracking delay of a rising
            # noise floor: its minimum never lags the first one by > 1/kappa
            np.maximum(self._stmin, self._smin * _F32(self._KAPPA), out=self._stmin)
        self._smin_sw[:] = s_in
        self._stmin_sw[:] = st_in

    # ------------------------------------------------------------------ core
    def process_hop(self, hop: np.ndarray) -> np.ndarray:
        c = self._c
        one = _F32(1.0)
        H = self.hop
        fr = self._frame
        fr[:, :H] = fr[:, H:]
        fr[:, H:] = hop
        X = np.fft.rfft(fr * self._win, axis=1)
        P = X.real * X.real
        P += X.imag * X.imag
        Sf = self._fsmooth(P)

        # --- IMCRA noise estimate --------------------------------------
        hop_live = hop.any(axis=1, keepdims=True)
        all_live = bool(hop_live.all())
        if self._steady and all_live and self._prev_all_live:
            self._sw_fast = True
            a_s, b_s, complete, feed, fresh = c["a_s"], c["b_s"], None, None, None
        else:
            a_s, b_s, complete, feed, fresh = self._unsteady(hop_live, Sf)
        self._prev_live = hop_live
        self._prev_all_live = all_live
        S = self._S
        S *= a_s
        S += b_s * Sf
        s_in = S if feed is None else np.where(feed, S, c["big"])
        np.minimum(self._smin, s_in, out=self._smin)
        np.minimum(self._smin_sw, s_in, out=self._smin_sw)

        # first iteration: rough speech-absence indicator, then the smoothed
        # periodogram of the bins it keeps, and its minima
        ind = np.less(P, self._smin * c["g0b"])
        ind &= np.less(S, self._smin * c["z0b"])
        indf = ind.astype(_F32)
        num = self._fsmooth(indf * P)
        den = self._fsmooth(indf)
        St = self._St
        Stf = np.where(den > 0, num / (den + c["eps"]), St)
        St *= a_s
        St += b_s * Stf
        st_in = St if feed is None else np.where(feed, St, c["big"])
        np.minimum(self._stmin, st_in, out=self._stmin)
        np.minimum(self._stmin_sw, st_in, out=self._stmin_sw)

        # second iteration: soft a-priori speech absence probability q
        stm = self._stmin * c["qb"]
        stm += c["eps"]
        q = Sf / stm
        np.subtract(c["qa"], q, out=q)
        np.maximum(q, _F32(0.0), out=q)
        np.minimum(q, one, out=q)
        stm *= c["z0b"] / c["qb"]
        q *= np.less(S, stm)
        if fresh is not None:
            np.copyto(q, _F32(0.5), where=fresh)

        self._sw_n += 1
        if self._sw_n == self._V:
            self._next_subwindow(s_in, st_in)

        # posterior SNR, decision-directed a-priori SNR, presence probability
        lam = self._lam
        gamma = lam + c["eps"]
        np.divide(P, gamma, out=gamma)
        xi = gamma - one
        np.maximum(xi, _F32(0.0), out=xi)
        xi *= c["dd1"]
        xi += self._dd
        np.maximum(xi, c["ximin"], out=xi)
        np.minimum(xi, _F32(1e6), out=xi)
        wr = xi + one
        v = np.divide(xi, wr)  # Wiener gain
        wr, v = v, v * gamma  # v = gamma * xi / (1 + xi)
        e = np.exp(-v)
        e *= xi + one
        e *= q
        p = one - q
        e += p
        e += _F32(1e-30)
        p /= e  # p = (1-q) / ((1-q) + q (1+xi) exp(-v))

        # noise update, slowed down where speech is present
        ad = p * c["ad1"]
        ad += c["ad"]
        if complete is not None and not complete.all():
            ad[~complete[:, 0]] = 1.0  # frozen through silence
        lt = self._lam_t
        if fresh is not None:
            lt_min = np.minimum(lt, Sf)
        lt -= P
        lt *= ad
        lt += P  # ad * lt + (1 - ad) * P
        if fresh is not None:
            np.copyto(lt, lt_min, where=fresh)
        np.multiply(lt, c["beta"], out=lam)

        # --- OM-LSA gain -----------------------------------------------
        # G_H1 = wr * exp(E1(v) / 2) (table); with the reference floor
        # G_ref: G0 = G_H1^p * G_ref^(1-p); strength scales it in dB:
        # G = G0^k, k = strength_db / REF_DB (noise-only bins end on the
        # strength floor exactly, speech bins stay near 0 dB)
        gmin, k = self._floor
        np.maximum(v, _F32(1e-30), out=v)
        t = np.log(v)
        t -= c["lsa0"]
        t *= c["lsas"]
        np.maximum(t, _F32(0.0), out=t)
        np.minimum(t, c["lsal"], out=t)
        i = t.astype(np.intp)
        t -= i
        t *= _LSA_D32[i]
        t += _LSA_F32[i]
        t *= wr  # G_H1
        np.maximum(t, c["gref"], out=t)
        np.minimum(t, one, out=t)
        lg = np.log(t)
        t *= t
        t *= gamma
        t *= c["dd"]
        self._dd = t
        lg -= c["lgref"]
        lg *= p
        lg += c["lgref"]
        lg *= k
        G = np.exp(lg)

        # smoothing over frequency (ERB-scaled boxcar above k0)
        k0 = self._g_k0
        cs = self._cs
        np.add.accumulate(G[:, k0:], axis=1, out=cs[:, 1:])
        Gh = cs[:, self._g_hi]
        Gh -= cs[:, self._g_lo]
        Gh *= self._g_iw
        G[:, k0:] = Gh
        np.maximum(G, gmin, out=G)
        np.minimum(G, one, out=G)
        # DC and Nyquist bins are real (chi-square with one degree of
        # freedom, twice the variance): they follow their neighbours
        G[:, 0] = G[:, 1]
        G[:, -1] = G[:, -2]
        self._last = (P, G)

        X *= G
        y = np.fft.irfft(X, n=self.window, axis=1)
        y *= self._win
        unity = gmin == one
        if unity and self._prev_unity:
            # strength 0 (this hop and the last): G is exactly 1, so the
            # output is exactly the delayed input. The state keeps tracking,
            # so raising the strength later starts from a converged estimate,
            # and both changes cross-fade through the overlap-add.
            out = fr[:, :H].copy()
        else:
            out = y[:, :H] + self._ola
        self._prev_unity = unity
        self._ola[:] = y[:, H:]
        return out
