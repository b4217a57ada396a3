"""Preallocated memory shared by the JACK callback and the engine.

Allocated once when a client opens, never in the callback (jackio.py
holds the real-time rules). Frame positions are absolute; index a ring at
``position & MASK``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

RING = 1 << 17  # frames per channel: 2.7 s at 48 kHz
MASK = RING - 1
TIMING_SLOTS = 4096

# counter slots (int64; written by the callback unless noted)
CYCLES = 0
IN_POS = 1  # absolute input frames written (published after the copy)
OUT_READY = 2  # absolute output frames the engine has written (engine writes)
DEADLINE_MISSES = 3  # cycles that needed the dry fallback (wholly or partly)
MISSED_FRAMES = 4  # frames served from the dry fallback
XRUNS = 5  # from JACK's xrun callback (non-RT thread)
LATE_START = 6  # cycles before the engine's first output (not misses)
N_COUNTERS = 8


@dataclass
class Buffers:
    inring: np.ndarray  # [inputs, RING] float32
    outring: np.ndarray  # [outputs, RING] float32
    silence: np.ndarray  # [RING] zeros, the fallback of background stems
    counters: np.ndarray  # [N_COUNTERS] int64
    timings: np.ndarray  # [TIMING_SLOTS] int64, callback durations in ns
    dry_gain: np.ndarray  # [outputs] float32, the dry fallback's gain per output (engine writes; 0 = muted)


def allocate(inputs: int, outputs: int) -> Buffers:
    b = Buffers(
        inring=np.zeros((inputs, RING), np.float32),
        outring=np.zeros((outputs, RING), np.float32),
        silence=np.zeros(RING, np.float32),
        counters=np.zeros(N_COUNTERS, np.int64),
        timings=np.zeros(TIMING_SLOTS, np.int64),
        dry_gain=np.ones(max(outputs, 1), np.float32),
    )
    for a in (b.inring, b.outring, b.silence):
        a.fill(0.0)  # np.zeros is calloc: untouched (huge) pages would fault in the real-time thread on first use
    return b
