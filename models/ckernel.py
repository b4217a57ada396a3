"""The compiled streaming step of the ``neural`` suppressor (CPU).

``models/qcstep.c`` is :func:`quietcast.models.neural._fused_step` in plain
C, one call per hop for all channels. setuptools builds it at install time
as the optional extension module ``quietcast.models._qcstep`` (no
``PyInit``: :func:`quietcast.models.native.load_extension` finds and loads
it). An install without a C compiler has none, and the torch step runs
instead.

Why: at one channel the torch step is about 60 operator dispatches a hop,
0.32 ms on one thread, ten times its arithmetic; the C step is the same
arithmetic in one call (bench/speed.py compares the two). The torch step
stays the reference: tests/models/test_ckernel.py holds them equal on the
shipped bundles and on every option the C step supports.

Supported architectures: any ``harm_bins``, ``floor_input``, ``fine_bins``,
``warm_start`` and ``pause_head`` (with the pause gate at any depth), and
the pitch filter at any strength; ``df_order``
must be 0 and ``pitch_input`` 0 (no shipped bundle uses them).
:func:`unsupported` says why not, in words. With the pitch filter on, the
two steps agree to rounding except where the pitch search meets a near
tie between two lags (in noise), which rounding can break either way;
the outputs then differ by 80 dB or so below the signal.

The C step works in place on the suppressor's own state tensors (running
means, GRU states, overlap-add tail, previous hop), so everything that
reads or resets them (``reset_core``, the CUDA fallback) keeps working; it
writes ``[output; voice; background]`` straight into the suppressor's hop
buffer and the gain-reduction meter into its array.
"""

from __future__ import annotations

import ctypes
import pathlib

import numpy as np
import torch

from .native import load_extension

ABI = 5
BLOCK = 8  # channels per block in qcstep.c (QC_BLK)
MAX_BANDS = 128  # QC_MAXB

_f = ctypes.POINTER(ctypes.c_float)
_i64 = ctypes.c_int64
_INTS = ["abi", "C", "H", "nb", "kd", "hh", "ed", "dd", "nh", "nfl", "nfine", "warm", "nfac"]
_CONST = ["fac", "win", "tw", "rtw", "fe_ptr", "fe_idx", "fe_val", "fi_ptr", "fi_idx", "fi_val", "A", "Bm", "be2", "Wd", "bd", "W6", "W7", "b8", "W9", "b10",
          "W11", "b12", "W13", "b14", "W15", "b16", "W19", "W20", "b21", "W22", "W23"]
_STATE = ["m", "u", "fl", "fresh", "h1", "h2", "prev", "ola", "pbuf", "out", "gr", "scratch"]
_FLOATS = ["alpha", "le_eps", "le_max", "xn_max", "f_fall", "f_rise", "f_min", "g_min", "silent_ms", "pf"]
_PAUSE = ["bp", "pause_close", "pause_onset", "pause_pl_a", "pause_pl_none", "floor",
          "remix"]  # after Wp, pg, pause_db, pause_thr


class _NN(ctypes.Structure):
    _fields_ = ([(n, _i64) for n in _INTS] + [(n, ctypes.c_void_p) for n in _CONST + _STATE]
                + [(n, ctypes.c_float) for n in _FLOATS]
                + [(n, ctypes.c_void_p) for n in ("Wp", "pg", "pause_db", "pause_thr")]
                + [(n, ctypes.c_float) for n in _PAUSE])


_lib: tuple | None = None


def library() -> tuple[ctypes.CDLL | None, str]:
    """The compiled step: ``(library, path)``, or ``(None, why not)``."""
    global _lib
    if _lib is None:
        _lib = _load()
    return _lib


def _declare(lib: ctypes.CDLL) -> None:
    lib.qc_nn_step.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_float]
    lib.qc_nn_step.restype = ctypes.c_int
    lib.qc_nn_scratch.argtypes = [ctypes.c_void_p]
    lib.qc_nn_scratch.restype = _i64
    for fn in (lib.qc_nn_rfft, lib.qc_nn_irfft):
        fn.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p]
        fn.restype = None


def _load() -> tuple[ctypes.CDLL | None, str]:
    return load_extension(f"{__package__}._qcstep", pathlib.Path(__file__).with_name("qcstep.c"), "qc_nn_layout",
                          (ABI, ctypes.sizeof(_NN), _NN.scratch.offset, BLOCK), _declare)


def unsupported(net) -> str | None:
    """Why the C step cannot run ``net`` (a :class:`QCNet`), or None."""
    if net.df_order:
        return f"df_order {net.df_order} (the deep filter) is torch-only"
    if net.pitch_input:
        return "the pitch input is torch-only"
    if net.n_bands > MAX_BANDS:
        return f"{net.n_bands} bands (the C step takes at most {MAX_BANDS})"
    return None


def _factors(n: int) -> list[int]:
    """Radices of an ``n``-point FFT, 4s first (at most 8 each)."""
    out = []
    for p in (4, 2, 3, 5, 7):
        while n % p == 0:
            out.append(p)
            n //= p
    if n != 1:
        raise ValueError(f"FFT size has a prime factor above 7: {n}")
    return out


def _csr(name: str, a: np.ndarray) -> dict:
    """The non-zeros of ``a[F, nb]`` row by row (CSR): ``name_ptr``,
    ``name_idx``, ``name_val``."""
    rows, cols = np.nonzero(a)
    ptr = np.zeros(a.shape[0] + 1, np.int64)
    np.add.at(ptr, rows + 1, 1)
    return {f"{name}_ptr": np.cumsum(ptr).astype(np.int64), f"{name}_idx": cols.astype(np.int64),
            f"{name}_val": np.ascontiguousarray(a[rows, cols], np.float32)}


class CStep:
    """One suppressor's C step: the struct of pointers and the arrays it
    points at (kept alive here). Build a new one whenever the suppressor's
    state tensors are re-created (``reset_core``)."""

    def __init__(self, lib: ctypes.CDLL, sup, constants: dict):
        net = sup.net
        why = unsupported(net)
        if why:
            raise ValueError(why)
        self._lib = lib
        H, C = sup.hop, sup.channels
        w = [t.detach().to(torch.float32).contiguous().numpy() for t in sup._w[:24]]  # 25-26: the torch pitch search's
        M = H
        fac = np.array(_factors(M), np.int64)
        j = np.arange(M)
        tw = np.exp(-2j * np.pi * j / M).astype(np.complex64).view(np.float32)
        k = np.arange(M + 1)
        rtw = np.exp(-2j * np.pi * k / (2 * M)).astype(np.complex64).view(np.float32)
        nf = net.fine_bins
        keep = {
            "fac": fac, "win": sup._win.numpy(), "tw": tw, "rtw": rtw,
            **_csr("fe", sup._fb_e.numpy()), **_csr("fi", sup._fb_i.numpy().T),
            "A": w[1], "Bm": w[2], "be2": w[3], "Wd": w[4], "bd": w[5],
            "W6": w[6], "W7": w[7], "b8": w[8], "W9": w[9], "b10": w[10],
            "W11": w[11], "b12": w[12], "W13": w[13], "b14": w[14], "W15": w[15], "b16": w[16],
            "W19": w[19], "W20": w[20], "b21": w[21], "W22": w[22], "W23": w[23],
        }
        self._keep = keep
        nn_ = _NN(abi=ABI, C=C, H=H, nb=net.n_bands, kd=net.df_bins, hh=net.hidden, ed=net.enc.out_features,
                  dd=net.df_enc.out_features, nh=net.harm_bins, nfl=net.floor_input, nfine=nf,
                  warm=net.warm_start, nfac=len(fac))
        for n, a in keep.items():
            setattr(nn_, n, a.ctypes.data if a.size else None)
        for n, t in (("m", sup._m), ("u", sup._u), ("fl", sup._fl), ("fresh", sup._fresh), ("h1", sup._h1),
                     ("h2", sup._h2), ("prev", sup._prev), ("ola", sup._ola), ("pbuf", sup._pbuf)):
            assert t.is_contiguous() and t.device.type == "cpu"
            setattr(nn_, n, t.data_ptr() if t.numel() else None)
        self.out = sup._hop_buf  # [3C, H] float32
        self.gr = np.zeros(C, np.float32)
        nn_.out = self.out.ctypes.data
        nn_.gr = self.gr.ctypes.data
        nn_.alpha = net.alpha
        nn_.pf = float(sup.pitch_filter)
        if net.pause is not None:  # the pause gate
            self._wp = sup._w[27].detach().to(torch.float32).contiguous().numpy().reshape(-1).copy()
            nn_.Wp = self._wp.ctypes.data
            nn_.bp = float(sup._w[28][0])
            assert sup._pg.is_contiguous() and sup._pg.shape == (C, 2)
            nn_.pg = sup._pg.data_ptr()
            assert sup._pause_c.dtype == np.float32 and sup._pause_c.shape == (C,)
            assert sup._thr_c.dtype == np.float32 and sup._thr_c.shape == (C,)
            # the suppressor writes the depths and thresholds in place; the C step reads them each hop
            self._pause_c, self._thr_c = sup._pause_c, sup._thr_c
            nn_.pause_db = sup._pause_c.ctypes.data
            nn_.pause_thr = sup._thr_c.ctypes.data
        for n, v in constants.items():
            setattr(nn_, n, v)
        self.scratch = np.zeros(int(lib.qc_nn_scratch(ctypes.byref(nn_))), np.float32)
        nn_.scratch = self.scratch.ctypes.data
        self._nn = nn_
        self._ref = ctypes.addressof(nn_)
        self._step = lib.qc_nn_step

    def set_pitch_filter(self, k: float) -> None:
        """The pitch filter's strength (0..1) from the next hop."""
        self._nn.pf = float(k)

    def set_mix(self, floor: float, remix: float) -> None:
        """The two parts of the mix (``max(floor, remix)``: the pause gate
        lowers the floor only), from the next hop. (The gate's depths and
        thresholds are read from the suppressor's arrays each hop.)"""
        self._nn.floor = float(floor)
        self._nn.remix = float(remix)

    def step(self, hop: np.ndarray, mix: float) -> None:
        """One hop ``float32[C, H]`` (C-contiguous)."""
        if self._step(self._ref, hop.ctypes.data, mix) != 0:
            raise RuntimeError("qcstep.c: struct built for another ABI")

    def rfft(self, x: np.ndarray) -> np.ndarray:
        """For tests: the C step's real FFT of one frame ``float32[2H]``."""
        x = np.ascontiguousarray(x, np.float32)
        X = np.zeros(2 * (x.size // 2 + 1), np.float32)
        self._lib.qc_nn_rfft(self._ref, x.ctypes.data, X.ctypes.data)
        return X.view(np.complex64)

    def irfft(self, X: np.ndarray) -> np.ndarray:
        """For tests: the C step's inverse real FFT (``n = 2H``)."""
        X = np.ascontiguousarray(X, np.complex64)
        x = np.zeros(2 * (X.size - 1), np.float32)
        self._lib.qc_nn_irfft(self._ref, X.view(np.float32).ctypes.data, x.ctypes.data)
        return x
