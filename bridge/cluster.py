"""Offline processing on Ray: ``quietcast process CHAIN INPUTS -o OUT --ray``.

Files become Ray tasks; the results and failures come back into the same
:class:`~quietcast.bridge.offline.Summary`, progress display, exit status
and no-data-loss rules as the local path (:mod:`.offline`). Ray is an
optional extra (``pip install 'quietcast[cluster]'``) and is imported only
when this path runs.

Where the files live
    Workers read the inputs and write the outputs themselves: every path
    given (inputs, ``-o``, plugin and impulse-response files in the chain)
    must mean the same file on every node and on the machine that runs
    ``quietcast`` -- a shared filesystem (NFS, CephFS, Lustre ...) mounted
    at the same path everywhere, the normal case for an archive. Nothing
    travels through Ray's object store but small results. Every node needs
    the same quietcast installation (and model bundles).

No data loss, as on one machine
    A worker writes a hidden temporary file beside the target and renames
    it into place when complete; an existing output is never replaced
    without ``overwrite``; a corrupt input is reported and the others go on.
    A file that fails is retried once: Ray re-runs a task whose worker
    process or node died (``max_retries=1``), and a task that ran but
    failed (an exception, a stage fault, an I/O error) is submitted once
    more as a new task, possibly on another node. What still fails is
    reported. Temporary files left by a worker that was killed are removed
    at the end of the run.

Long files: split, processed in parallel, stitched back exactly
    A file longer than ``split_seconds`` is cut into segments that run as
    separate tasks. The chain is stateful (filters, compressor envelopes,
    the suppressor's noise tracker), so a segment cannot simply start
    cold at its first sample. What this module does, and why it is exact:

    * A seam is placed only after a run of digital silence (all channels
      exactly 0) of at least ``min_gap_seconds``. The segment after the
      seam starts cold at the silence (``read_start``, on the chain's
      processing grid, see :func:`seam_grid`) and processes a warm-up of
      ``warmup_seconds`` of the audio after it before its output is used
      (``start``). The block grid of reads is the single pass's grid.
    * Measured per stage type (``python bench/batch.py --exactness``):
      pedalboard IIR filters, compressors, limiters and gates forget
      exactly (state == fresh state) after 0.05-2 s of digital silence.
      IIR filters never merge on signal alone (rounding keeps two runs
      apart for good), which is why seams need silence. The ``dsp``
      suppressor never forgets on silence (its noise estimate is
      deliberately frozen through a mute), but its state merges bit for
      bit with a cold-started one after some seconds of real audio (3-13 s
      after the gap measured on speech in room noise; on a synthetic voice
      with steady harmonics it may never merge: speech presence stays ~1
      in those bins and freezes the noise estimate there). Reverb, delay
      with feedback and the brickwall limiter do not forget in 10 s of
      silence either, but merge on signal (3-22 s after the gap).
      Chorus/phaser (free-running LFO) never merge, nor does the neural
      suppressor (with the shipped bundle a cold start is still ~1.5e-3
      away from the single pass 30-50 s after a gap; not even within
      1e-6): chains with them are not split
      (:func:`keeps_state`); their files still run in parallel, one task
      each.
    * Cold starts must also be in phase with the single pass: segments
      start on :func:`seam_grid` and read on the single pass's block grid
      (pedalboard processes in chunks and flushes tiny values to zero at
      chunk ends, so a shifted grid changes the output by ~1e-19 right
      where a signal decays into silence), and the first read is never
      shorter than pedalboard's largest chunk (see :func:`block_end`).
    * So exactness is verified, not assumed: the segment before a seam
      also computes ``overlap_seconds`` past it, and before anything is
      written the two segments' outputs over that overlap are compared bit
      for bit (from their raw files, in the stitching task). The seam is
      put where they become identical, provided they then stay identical
      over at least ``agree_seconds`` of non-silent input to the end of
      the overlap. A chain is deterministic, so once the states agree the
      outputs agree for the rest of the file.
    * A seam that does not verify is repaired: the segments on both sides
      are joined and re-run as one task, until every seam verifies; in the
      worst case the file ends up processed in one pass (and says so).
      Files without silence near the split points are processed in one
      pass (a warning says so), as are lossy inputs (mp3/ogg seeks are not
      sample-exact) and files resampled with ``sample_rate``.

    The stitched output then equals the single-pass output sample for
    sample (and byte for byte for wav/flac/aiff), latency aligned. The
    caveat, stated plainly: agreement over the overlap shows that the two
    states produce the same output there; a state difference that stays
    invisible through the whole overlap and shows later cannot be ruled
    out by observation alone (a compressor envelope below threshold is
    invisible, for example). Requiring agreement over non-silent input
    makes that unlikely, not impossible. Segments must also run on the
    same kind of CPU as each other (SIMD code paths round differently);
    on a mixed cluster their seams fail to verify and are repaired.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
import uuid
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from .audiocheck import FlacCheck
from .chain import Chain
from .errors import AudioFileError, BridgeError
from .offline import (
    BLOCK, FLAC_DAMAGED, AudioWriter, FileResult, Job, Progress, Summary, WRITE_EXTS, _layout, _open_input,
    _default_fallback_note, _processor, _short, changes_audio, exists_error, process_file, split_existing,
)

INSTALL_HINT = "pip install 'quietcast[cluster]'"
SPLIT_SECONDS = 600.0
WARMUP_SECONDS = 15.0
OVERLAP_SECONDS = 10.0
MIN_GAP_SECONDS = 0.5
AGREE_SECONDS = 3.0
#: inputs whose seeks are sample-exact (decoded identically from any point)
SPLITTABLE_EXTS = (".wav", ".flac", ".aiff", ".aif", ".bwf")


class RayNotInstalled(BridgeError):
    """``--ray`` was asked for but Ray is not importable here."""

    def __init__(self, why: str = ""):
        super().__init__(f"--ray needs Ray, which is not installed here{f' ({why})' if why else ''}: "
                         f"{INSTALL_HINT}")


def require_ray():
    """Import and return the ``ray`` module, or raise :class:`RayNotInstalled`."""
    try:
        import ray
    except ImportError as e:
        raise RayNotInstalled(_short(e) if "No module named" not in str(e) else "") from None
    return ray


# --------------------------------------------------------------------------
# planning a split


@dataclass
class Segment:
    """One part of a split file. Output frames ``[start, end)`` are this
    segment's; it also computes ``[end, verify_end)`` so the seam with the
    next segment can be checked. Processing starts cold at ``read_start``
    (<= ``start``; the frames before ``start`` are the warm-up)."""

    index: int
    read_start: int
    start: int
    end: int
    verify_end: int
    check: int = 0  # frames after ``start`` returned for the seam check with the segment before


def seam_grid(chain: Chain, sample_rate: int) -> int:
    """Frames between possible cold starts: a segment must start where a
    single pass would be at the same phase of every hop-based stage. The
    ``denoise`` stages work on 480-frame hops at 48 kHz with 18-hop
    sub-windows of minimum statistics (8640 frames); at another rate the
    resamplers' phase repeats every ``sr / gcd(sr, 48000)`` frames."""
    if not any(s.type == "denoise" for s in chain.stages):
        return 1
    sr = int(sample_rate)
    p = 9 * sr // math.gcd(9 * sr, 50)  # smallest p with p * 48000 / sr a multiple of 8640
    return math.lcm(p, sr // math.gcd(sr, 48_000))


def find_gaps(src: str, min_frames: int, block: int = BLOCK) -> tuple[int, int, list[tuple[int, int]]]:
    """Stream ``src`` and return ``(frames, sample_rate, gaps)``: runs of
    digital silence (every channel exactly 0) at least ``min_frames`` long,
    as ``(first, end)`` frame pairs."""
    raw, reader = _open_input(src, None)
    try:
        sr = int(round(reader.samplerate))
        gaps: list[tuple[int, int]] = []
        run_start = None
        pos = 0
        check = FlacCheck.of(src)  # this scan reads the whole file once: the place to check it
        while True:
            try:
                x = reader.read(block)
            except Exception as e:
                raise AudioFileError(src, f"decoding failed after {pos / sr:.2f} s: {_short(e)}") from None
            n = x.shape[1]
            if n == 0:
                if check is not None and not check.ok():
                    raise AudioFileError(src, FLAC_DAMAGED)
                break
            if check is not None:
                check.update(x)
            zero = ~np.any(x != 0, axis=0)  # NaN counts as signal
            edges = np.flatnonzero(np.diff(zero.astype(np.int8)))
            bounds = [0, *(edges + 1).tolist(), n]
            for a, b in zip(bounds[:-1], bounds[1:]):
                if zero[a]:
                    if run_start is None:
                        run_start = pos + a
                else:
                    if run_start is not None and pos + a - run_start >= min_frames:
                        gaps.append((run_start, pos + a))
                    run_start = None
            pos += n
        if run_start is not None and pos - run_start >= min_frames:
            gaps.append((run_start, pos))
        return pos, sr, gaps
    finally:
        raw.close()


def plan_segments(frames: int, sample_rate: int, gaps: list[tuple[int, int]], *, split_seconds: float,
                  warmup_seconds: float = WARMUP_SECONDS, overlap_seconds: float = OVERLAP_SECONDS,
                  grid: int = 1) -> list[Segment]:
    """Choose seams near every ``split_seconds``: each after a silent gap
    (from :func:`find_gaps`), ``warmup_seconds`` after the audio resumes.
    Returns one segment (no split) when no gap fits."""
    sr = sample_rate
    split = int(split_seconds * sr)
    warm = int(warmup_seconds * sr)
    over = int(overlap_seconds * sr)
    tail_min = max(over, split // 4)
    cands = []  # (cold start, seam)
    for g0, g1 in gaps:
        s = -(-g0 // grid) * grid
        if s >= g1:  # no grid point inside this gap
            continue
        a = g1 + warm
        if a + tail_min <= frames:
            cands.append((s, a))
    seams: list[tuple[int, int]] = []
    pos = 0
    while split > 0:
        lo, target, hi = pos + split // 2, pos + split, pos + split + split // 2
        near = [c for c in cands if lo <= c[1] <= hi]
        if near:
            pick = min(near, key=lambda c: abs(c[1] - target))
        else:
            later = [c for c in cands if c[1] > hi]
            if not later:
                break
            pick = later[0]
        seams.append(pick)
        pos = pick[1]
    segs = []
    starts = [(0, 0), *seams]
    for i, (s, a) in enumerate(starts):
        last = i + 1 == len(starts)
        end = frames if last else starts[i + 1][1]
        check = segs[-1].verify_end - a if segs else 0
        segs.append(Segment(i, s, a, end, frames if last else min(frames, end + over), check))
    return segs


def merge_segments(a: Segment, b: Segment) -> Segment:
    """The segment that does the work of ``a`` and then ``b`` in one run."""
    return Segment(a.index, a.read_start, a.start, b.end, b.verify_end, a.check)


# --------------------------------------------------------------------------
# running segments, checking seams, stitching (plain functions; the Ray
# tasks below call them, and so can anyone without Ray)


def segment_path(dst: str, run_id: str, seg: Segment) -> str:
    """Where a segment's raw output goes: a hidden file beside the target."""
    folder = os.path.dirname(os.path.abspath(dst))
    return os.path.join(folder, f".{os.path.basename(dst)}.qc-seg-{run_id}-{seg.start}-{seg.verify_end}.f32")


#: the largest buffer_size a pedalboard stage is given (see stages.PedalboardStage)
PB_CHUNK = 8192


def block_end(pos: int, block: int = BLOCK, first: bool = False) -> int:
    """Where a read starting at frame ``pos`` ends so that reads follow the
    single pass's grid (multiples of ``block``). The first read of a cold
    start is at least :data:`PB_CHUNK` long: pedalboard prepares a plugin
    for the largest buffer it has seen, and a plugin first fed a short
    block is prepared again -- its state reset -- when a full one follows
    (the limiter's output then differs by up to 0.7 for a while)."""
    end = (pos // block + 1) * block
    if first and end - pos < PB_CHUNK:
        end += block
    return end


def run_segment(chain: Chain, src: str, seg: Segment, out_path: str, *, channels: int | None = None,
                block: int = BLOCK, device: str = "cpu") -> dict:
    """Process one segment of ``src``: start cold at ``seg.read_start``, read
    on the single pass's block grid, and write output frames
    ``[seg.start, seg.verify_end)`` as raw little-endian float32
    (frames x channels) to ``out_path``. Returns a small dict: ``active``
    (packed bits: which input frames of ``[start, start + check)`` are not
    digital silence, for the seam check), ``bad`` (NaN/Inf input samples
    in ``[start, end)``), ``channels``, ``note`` (the worker's warning
    that model ``default`` ran as ``dsp``, or None)."""
    raw, reader = _open_input(src, None)
    try:
        sr = int(round(reader.samplerate))
        n = reader.frames
        ch = channels or reader.num_channels
        proc = _processor(chain, sr, ch, device)
        L = proc.latency
        read_end = min(n, seg.verify_end + L)
        over_head = seg.start + min(seg.verify_end - seg.start, seg.check)
        active = np.zeros(over_head - seg.start, bool)
        bad = 0
        reader.seek(seg.read_start)
        os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
        pos = seg.read_start  # input frame of the next read
        opos = seg.read_start - L  # output frame of the next processed sample
        with open(out_path, "wb") as f:

            def take(y: np.ndarray, at: int) -> None:
                a, b = max(at, seg.start), min(at + y.shape[1], seg.verify_end)
                if a < b:
                    np.ascontiguousarray(y[:, a - at:b - at].T, dtype="<f4").tofile(f)

            while pos < read_end:
                want = min(read_end, block_end(pos, block, first=pos == seg.read_start)) - pos
                try:
                    x = reader.read(want)
                except Exception as e:
                    raise AudioFileError(src, f"decoding failed at {pos / sr:.2f} s: {_short(e)}") from None
                if x.shape[1] == 0:
                    raise AudioFileError(src, f"ended at {pos / sr:.2f} s, before its declared {n / sr:.2f} s")
                x = _layout(x, channels)
                k = x.shape[1]
                a, b = max(pos, seg.start), min(pos + k, seg.end)
                if a < b:
                    bad += int(np.count_nonzero(~np.isfinite(x[:, a - pos:b - pos])))
                a, b = max(pos, seg.start), min(pos + k, over_head)
                if a < b:
                    active[a - seg.start:b - seg.start] = np.any(x[:, a - pos:b - pos] != 0, axis=0)
                take(proc.process(x), opos)
                pos += k
                opos += k
                if proc.faults:
                    name = next(iter(proc.faults))  # (the processor's frames count from the segment's first read)
                    raise BridgeError(f"stage {name!r} failed {proc.fault_text(name, sr, origin=seg.read_start)}; "
                                      "output not written")
            if read_end == n and L:  # the end of the file: flush the latency, as the single pass does
                take(proc.process(np.zeros((ch, L), np.float32)), opos)
                if proc.faults:
                    name, why = next(iter(proc.faults.items()))
                    raise BridgeError(f"stage {name!r} failed at the end of the file ({why}); output not written")
        return {"active": np.packbits(active), "active_n": int(active.size), "bad": bad, "channels": ch,
                "note": _default_fallback_note(chain)}
    except BaseException:
        if os.path.exists(out_path):
            os.unlink(out_path)
        raise
    finally:
        raw.close()


def check_seam(tail: np.ndarray, head: np.ndarray, active_bits: np.ndarray, active_n: int, sample_rate: int,
               agree_seconds: float = AGREE_SECONDS) -> tuple[int | None, str]:
    """Compare the segment before a seam (``tail``, its output past its end)
    with the segment after it (``head``, its first output frames). Returns
    ``(offset, why)``: the offset from the seam where the two outputs
    become identical for good, or ``None`` when they do not agree over at
    least ``agree_seconds`` of non-silent input to the end of the overlap."""
    m = min(tail.shape[1], head.shape[1])
    if m == 0:
        return None, "no overlap to compare"
    diff = np.any(tail[:, :m] != head[:, :m], axis=0)
    idx = np.flatnonzero(diff)
    cut = int(idx[-1]) + 1 if idx.size else 0
    active = np.unpackbits(active_bits, count=active_n).astype(bool)[:m]
    agree = int(np.count_nonzero(active[cut:]))
    need = int(agree_seconds * sample_rate)
    if agree >= need:
        return cut, "ok"
    if idx.size:
        return None, (f"outputs differ until {cut / sample_rate:.2f} s into the {m / sample_rate:.1f} s overlap "
                      f"(max {float(np.abs(tail[:, :m] - head[:, :m]).max()):.2g})")
    return None, f"only {agree / sample_rate:.2f} s of non-silent audio in the overlap to compare"


def stitch(src: str, dst: str, parts: list[tuple[str, int, int, int]], *, channels: int, sample_rate: int,
           overwrite: bool = False, block: int = BLOCK, history: str | None = None,
           audio_changed: bool = True) -> tuple[str, list[str]]:
    """Write ``dst`` from raw segment files: ``parts`` = ``(path, file_start,
    first, end)`` -- frames ``[first, end)`` of the output, taken from a
    raw file whose first frame is output frame ``file_start``. Temporary
    file beside the target + rename, refusing to overwrite, written as the
    single pass writes it (:class:`~quietcast.bridge.offline.AudioWriter`),
    with the source's metadata (``history``: the chain, ``chain NAME``, for
    a ``bext`` coding history; ``audio_changed``: as for the writer).
    Returns what the writer chose, ``(format, notes)``: the container and
    subtype (``"WAV PCM_24"``) and its notes (why the source's subtype
    could not be kept, what metadata was left out)."""
    if os.path.exists(dst) and not overwrite:
        raise BridgeError(exists_error(dst))
    ext = os.path.splitext(dst)[1].lower()
    folder = os.path.dirname(os.path.abspath(dst))
    tmp = os.path.join(folder, f".{os.path.basename(dst)}.qc-tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}{ext}")
    ok = False
    try:
        with AudioWriter(tmp, sample_rate, channels, src, name=dst, history=history,  # (errors name dst)
                         audio_changed=audio_changed) as out:
            for path, file_start, first, end in parts:
                with open(path, "rb") as f:
                    f.seek((first - file_start) * channels * 4)
                    left = end - first
                    while left > 0:
                        k = min(block, left)
                        y = np.fromfile(f, dtype="<f4", count=k * channels)
                        if y.size != k * channels:
                            raise BridgeError(f"segment file {path} is short; output not written")
                        out.write(y.reshape(k, channels).T)
                        left -= k
        if os.path.exists(dst) and not overwrite:
            raise BridgeError(exists_error(dst))
        os.replace(tmp, dst)
        ok = True
    finally:
        if not ok and os.path.exists(tmp):
            os.unlink(tmp)
    return str(out.format), ([out.format.note] if out.format.note else []) + out.notes


def read_raw(path: str, file_start: int, first: int, count: int, channels: int) -> np.ndarray:
    """Frames ``[first, first + count)`` of a segment's raw output file whose
    first frame is ``file_start``, as ``[channels, frames]``."""
    with open(path, "rb") as f:
        f.seek((first - file_start) * channels * 4)
        y = np.fromfile(f, dtype="<f4", count=count * channels)
    if y.size != count * channels:
        raise BridgeError(f"segment file {path} is short; output not written")
    return np.ascontiguousarray(y.reshape(count, channels).T)


def check_and_stitch(src: str, dst: str, segs: list[Segment], paths: list[str], actives: list[tuple], *,
                     channels: int, sample_rate: int, overwrite: bool = False,
                     agree_seconds: float = AGREE_SECONDS, history: str | None = None,
                     notes: list[str] | None = None, audio_changed: bool = True, formats: list[str] | None = None
                     ) -> tuple[list[tuple[int, str]], list[int]]:
    """Check every seam of a split file from the segments' raw files
    (``actives[k]`` = segment k's ``(active, active_n)``); when all agree,
    write ``dst`` (:func:`stitch`). Returns ``(bad seams, cuts)``: bad
    seams as ``(index of the segment after it, why)`` -- then nothing is
    written -- and the output frame where each segment's part begins.
    ``history``, ``notes``: :func:`stitch`'s (its notes are added to ``notes``)."""
    bad, cuts = [], [0]
    for k in range(1, len(segs)):
        left, right = segs[k - 1], segs[k]
        m = left.verify_end - right.start
        tail = read_raw(paths[k - 1], left.start, right.start, m, channels)
        head = read_raw(paths[k], right.start, right.start, min(m, right.verify_end - right.start), channels)
        off, why = check_seam(tail, head, actives[k][0], actives[k][1], sample_rate, agree_seconds)
        if off is None:
            bad.append((k, why))
        else:
            cuts.append(right.start + off)
    if bad:
        return bad, []
    ends = [*cuts[1:], segs[-1].end]
    fmt, written = stitch(src, dst, [(p, s.start, c, e) for p, s, c, e in zip(paths, segs, cuts, ends)],
                          channels=channels, sample_rate=sample_rate, overwrite=overwrite, history=history,
                          audio_changed=audio_changed)
    if notes is not None:
        notes.extend(written)
    if formats is not None:
        formats.append(fmt)
    return [], cuts


#: stage types that never catch up with a single pass, silence or not: a
#: free-running LFO's phase is the time since the stage was built
KEEPS_STATE = {"chorus", "phaser"}


def keeps_state(chain: Chain) -> str | None:
    """Why no seam of this chain could be exact (its first stage that never
    forgets), or None. Splitting such a chain would only fail its checks.

    Besides :data:`KEEPS_STATE`, the neural suppressor is one: its
    recurrent state and running feature normalisation neither reset on
    silence nor merge on signal. Measured with the shipped bundle, a cold
    start at a silent gap is still ~1.5e-3 away from the single pass 30-50 s
    later (with random weights, ~2e-8 for good). Other stages that do
    not forget on silence (reverb, delay with feedback, the brickwall
    limiter) do merge on signal after a gap, in the 3-22 s measured; their
    seams are checked like any other."""
    from quietcast.models import resolve_model

    for st in chain.stages:
        if st.bypass:
            continue
        if st.type in KEEPS_STATE:
            return f"stage {st.name!r} ({st.type}) never forgets its state"
        if st.type == "denoise" and resolve_model(st.values.get("model", "default")) not in ("dsp", "passthrough"):
            # every neural model: the shipped ones ("neural", "neural-clean") and bundle folders
            return f"stage {st.name!r} (neural denoise) never forgets its state exactly"
    return None


def why_not_split(src: str, sample_rate: int | None, file_rate: int) -> str | None:
    """Why a file must be processed in one pass whatever its length."""
    ext = os.path.splitext(src)[1].lower()
    if ext not in SPLITTABLE_EXTS:
        return f"{ext or 'this format'} input cannot be split exactly (seeking is not sample-exact)"
    if sample_rate and int(sample_rate) != int(file_rate):
        return "resampled files are not split (the resampler's state runs through the whole file)"
    return None


# --------------------------------------------------------------------------
# worker side

_CHAINS: dict[str, Chain] = {}


def _worker_chain(doc: dict, source: str) -> Chain:
    key = json.dumps(doc, sort_keys=True) + "\0" + source
    chain = _CHAINS.get(key)
    if chain is None:
        if len(_CHAINS) > 8:
            _CHAINS.clear()
        chain = _CHAINS[key] = Chain.from_dict(doc, source=source)
    return chain


def _missing_input(src: str) -> FileResult | None:
    return None if os.path.exists(src) else FileResult(
        src, "", ok=False, error=f"no such file on worker {os.uname().nodename} (inputs and outputs must be on "
                                 "a filesystem every Ray node mounts at the same path)")


def task_device(gpu_ids) -> str:
    """Where a task's denoise stages run: on the GPU Ray gave it (Ray sets
    CUDA_VISIBLE_DEVICES to it, so it is "cuda"), else the CPU. A GPU that
    fails falls back to the CPU, as everywhere."""
    return "cuda" if gpu_ids else "cpu"


def _task_file(doc, source, src, dst, overwrite, sample_rate, channels) -> FileResult:
    import ray

    miss = _missing_input(src)
    if miss:
        miss.dst = dst
        return miss
    return process_file(_worker_chain(doc, source), src, dst, overwrite=overwrite,
                        sample_rate=sample_rate, channels=channels, device=task_device(ray.get_gpu_ids()))


def _task_scan(src, min_frames):
    return find_gaps(src, min_frames)


def _task_segment(doc, source, src, seg, out_path, channels):
    import ray

    return run_segment(_worker_chain(doc, source), src, seg, out_path, channels=channels,
                       device=task_device(ray.get_gpu_ids()))


def _task_stitch(src, dst, segs, paths, actives, channels, sample_rate, overwrite, history=None,
                 audio_changed=True):
    notes: list[str] = []
    formats: list[str] = []
    bad, cuts = check_and_stitch(src, dst, segs, paths, actives, channels=channels, sample_rate=sample_rate,
                                 overwrite=overwrite, history=history, notes=notes, audio_changed=audio_changed,
                                 formats=formats)
    if not bad:
        for path in paths:
            try:
                os.unlink(path)
            except OSError:
                pass
    return bad, cuts, notes, (formats[0] if formats else None)


# --------------------------------------------------------------------------
# driver side


def _pinned_doc(chain: Chain) -> dict:
    """The chain as sent to workers, with ``model = "default"`` resolved
    here, so every node (and every segment of a file) runs the same model."""
    from quietcast.models import resolve_model

    doc = chain.to_dict()
    for st in doc["stage"]:
        if st.get("type") == "denoise":
            st["model"] = resolve_model(st.get("model", "default"))
    return doc


def _not_retryable(error: str | None) -> bool:
    """Refusals that a second try cannot change."""
    e = error or ""
    return "pass --overwrite" in e or e.startswith("cannot write ")


def connect(address: str | None = None, num_cpus: int | None = None) -> bool:
    """Make sure Ray is initialised: a new local instance with ``num_cpus``
    CPUs when ``address`` is None (or ``"local"``), else connect to
    ``address`` (``"auto"``, ``"HOST:PORT"``, ``"ray://HOST:10001"``).
    Returns True when this call started Ray (the caller shuts it down)."""
    ray = require_ray()
    if ray.is_initialized():
        return False
    kw: dict[str, Any] = {"logging_level": logging.ERROR, "log_to_driver": False}
    if address in (None, "", "local"):
        kw.update(address="local", num_cpus=num_cpus or os.cpu_count() or 1, include_dashboard=False)
    else:
        _check_reachable(address)
        kw.update(address=address)
    try:
        ray.init(**kw)
    except (ConnectionError, RuntimeError, ValueError) as e:
        raise BridgeError(f"cannot connect to the Ray cluster at {address!r}: {_short(e)}") from None
    return True


def _check_reachable(address: str, timeout: float = 5.0) -> None:
    """Fail fast, in one line, when a ``HOST:PORT`` (or ``ray://HOST:PORT``)
    address does not answer: Ray itself retries for minutes."""
    import socket

    hostport = address.split("://", 1)[1] if "://" in address else address
    host, sep, port = hostport.rpartition(":")
    if not sep or not port.isdigit():
        return  # "auto" and the like: Ray says what is wrong quickly
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as e:
        raise BridgeError(f"cannot reach the Ray cluster at {address!r}: {e.strerror or e}") from None


@dataclass
class _Split:
    """Book-keeping of one split file."""

    job: Job
    frames: int
    sr: int
    segs: list[Segment]
    run_id: str
    out: dict  # seg.start -> run_segment's result
    paths: dict  # seg.start -> its raw output file
    tries: dict  # seg.start (or "stitch") -> failures so far
    notes: list = field(default_factory=list)
    t0: float = 0.0


def process_files_ray(
    chain: Chain,
    jobs: list[Job],
    *,
    address: str | None = None,
    num_cpus: int | None = None,
    overwrite: bool = False,
    sample_rate: int | None = None,
    channels: int | None = None,
    progress: Progress | None = None,
    split_seconds: float = SPLIT_SECONDS,
    warmup_seconds: float = WARMUP_SECONDS,
    overlap_seconds: float = OVERLAP_SECONDS,
    min_gap_seconds: float = MIN_GAP_SECONDS,
    gpus_per_task: float = 1.0,
    skip_existing: bool = False,
) -> Summary:
    """Process every job as Ray tasks; one failure never stops the others.
    ``skip_existing``: as for :func:`~quietcast.bridge.offline.process_files`.

    ``address``/``num_cpus``: see :func:`connect` (an already initialised
    Ray is used as it is). Tasks ask for one CPU each, and for
    ``gpus_per_task`` GPUs when the chain has a neural stage and the
    cluster has GPUs. Files longer than ``split_seconds`` (0: never) are
    split as the module documentation says."""
    ray = require_ray()
    t0 = time.monotonic()
    jobs, skipped = split_existing(jobs) if skip_existing else (jobs, [])
    started = connect(address, num_cpus)
    try:
        s = _run(ray, chain, jobs, t0, overwrite=overwrite, sample_rate=sample_rate, channels=channels,
                 progress=progress, split_seconds=split_seconds, warmup_seconds=warmup_seconds,
                 overlap_seconds=overlap_seconds, min_gap_seconds=min_gap_seconds, gpus_per_task=gpus_per_task)
        return Summary(skipped + s.results, s.elapsed)
    finally:
        if started:
            ray.shutdown()


def _run(ray, chain, jobs, t0, *, overwrite, sample_rate, channels, progress, split_seconds, warmup_seconds,
         overlap_seconds, min_gap_seconds, gpus_per_task) -> Summary:
    from pedalboard.io import AudioFile

    doc_ref = ray.put(_pinned_doc(chain))
    source = chain.source
    opts: dict[str, Any] = {"num_cpus": 1, "max_retries": 1, "retry_exceptions": False}
    if chain.needs_neural() and ray.cluster_resources().get("GPU", 0) > 0:
        opts["num_gpus"] = gpus_per_task
    f_file = ray.remote(_task_file).options(**opts)
    f_seg = ray.remote(_task_segment).options(**opts)
    f_scan = ray.remote(_task_scan).options(num_cpus=1, max_retries=1, retry_exceptions=False)
    f_stitch = ray.remote(_task_stitch).options(num_cpus=1, max_retries=1, retry_exceptions=False)

    results: list[FileResult | None] = [None] * len(jobs)
    pending: dict[Any, tuple] = {}  # ObjectRef -> (kind, job index, extra)
    splits: dict[int, _Split] = {}
    first_error: dict[int, str] = {}
    single_notes: dict[int, str] = {}
    if progress:
        progress.start(len(jobs))

    def done(i: int, r: FileResult, counted: bool = False) -> None:
        """Record a file's result; ``counted``: its seconds already went
        to the progress display segment by segment."""
        results[i] = r
        if progress:
            if not counted and progress.files <= 1 and r.ok:
                progress.advance(r.seconds)
            progress.file_done(replace(r, seconds=0.0) if counted else r)

    def submit_file(i: int) -> None:
        j = jobs[i]
        ref = f_file.remote(doc_ref, source, j.src, j.dst, overwrite, sample_rate, channels)
        pending[ref] = ("file", i, None)

    def submit_seg(i: int, seg: Segment) -> None:
        sp = splits[i]
        path = sp.paths[seg.start] = segment_path(sp.job.dst, sp.run_id, seg)
        ref = f_seg.remote(doc_ref, source, sp.job.src, seg, path, channels)
        pending[ref] = ("seg", i, seg)

    def file_failed(i: int, error: str) -> None:
        j = jobs[i]
        done(i, FileResult(j.src, j.dst, ok=False, error=error, elapsed=0.0))

    def submit_stitch(i: int) -> None:
        sp = splits[i]
        outs = [sp.out[s.start] for s in sp.segs]
        ref = f_stitch.remote(sp.job.src, sp.job.dst, list(sp.segs), [sp.paths[s.start] for s in sp.segs],
                              [(o["active"], o["active_n"]) for o in outs], outs[0]["channels"], sp.sr, overwrite,
                              f"chain {chain.name}", changes_audio(chain))
        pending[ref] = ("stitch", i, None)

    def repair(i: int, bad: list[tuple[int, str]]) -> None:
        """Join the segments on both sides of every seam that failed its
        check and re-run the joined ones (in parallel): at most about twice
        the work; with nothing left to split, one pass."""
        sp = splits[i]
        bad_at = dict(bad)
        segs: list[Segment] = []
        rerun: list[int] = []
        for k, seg in enumerate(sp.segs):
            if k in bad_at:
                segs[-1] = merge_segments(segs[-1], seg)
                if not rerun or rerun[-1] != len(segs) - 1:
                    rerun.append(len(segs) - 1)
            else:
                segs.append(seg)
        where = "; ".join(f"at {sp.segs[k].start / sp.sr:.1f} s: {why}" for k, why in bad)
        sp.notes.append(f"{len(bad)} seam(s) did not verify ({where})")
        for k in rerun:
            m = segs[k]
            for old in sp.segs:
                if m.start <= old.start < m.end:
                    sp.out.pop(old.start, None)
                    _unlink(sp.paths.pop(old.start, None))
            if progress:
                progress.advance(-(m.end - m.start) / sp.sr)
        sp.segs = segs
        if len(segs) == 1:  # nothing left to split: one pass, the local way
            _cleanup_split(sp)
            del splits[i]
            single_notes[i] = sp.notes[-1] + "; processed in one pass"
            submit_file(i)
            return
        sp.notes[-1] += "; re-ran " + ", ".join(
            f"{segs[k].start / sp.sr:.1f}-{segs[k].end / sp.sr:.1f} s" for k in rerun) + (
            " in one task" if len(rerun) == 1 else ", one task each")
        for k in rerun:
            submit_seg(i, segs[k])

    # start: whole files at once, long files get scanned for silence first
    stateful = keeps_state(chain)
    for i, j in enumerate(jobs):
        if os.path.exists(j.dst) and not overwrite:
            file_failed(i, exists_error(j.dst))
            continue
        if os.path.splitext(j.dst)[1].lower() not in WRITE_EXTS:
            submit_file(i)  # the worker reports it, as on one machine
            continue
        why = None
        if split_seconds:
            try:
                with AudioFile(j.src) as f:
                    long = f.duration > split_seconds
                    rate = int(round(f.samplerate))
            except Exception:
                long = False  # the task reports what is wrong with it
            if long:
                why = why_not_split(j.src, sample_rate, rate)
                if why is None and stateful:
                    why = f"{stateful}, so no seam could be exact"
                if why is None:
                    ref = f_scan.remote(j.src, int(min_gap_seconds * rate))
                    pending[ref] = ("scan", i, None)
                    continue
                single_notes[i] = f"not split: {why}; processed in one pass"
        submit_file(i)

    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1, timeout=1.0)
        for ref in ready:
            kind, i, extra = pending.pop(ref)
            j = jobs[i]
            if results[i] is not None:  # a late segment of a file that already failed
                continue
            try:
                value = ray.get(ref)
                err = None
            except Exception as e:  # the task raised, or its worker died twice
                value, err = None, _task_error(e)
            if kind == "file":
                if err is not None:
                    r = FileResult(j.src, j.dst, ok=False, error=err)
                    if i in first_error:
                        r.error = f"{err} (retried once; first try: {first_error[i]})"
                    done(i, r)
                    continue
                r = value
                if not r.ok and i not in first_error and not _not_retryable(r.error):
                    first_error[i] = r.error or "failed"
                    submit_file(i)  # one more try, maybe on another node
                    continue
                if i in first_error:
                    if r.ok:
                        r.warnings.append(f"first try failed ({first_error[i]}); the retry succeeded")
                    else:
                        r.error = f"{r.error} (retried once)"
                if i in single_notes:
                    r.warnings.append(single_notes[i])
                r.segments = 1
                done(i, r)
            elif kind == "scan":
                if err is not None:
                    submit_file(i)  # let the whole-file task report (and retry) it
                    continue
                frames, rate, gaps = value
                grid = seam_grid(chain, rate)
                segs = plan_segments(frames, rate, gaps, split_seconds=split_seconds, warmup_seconds=warmup_seconds,
                                     overlap_seconds=overlap_seconds, grid=grid)
                if len(segs) == 1:
                    single_notes[i] = (f"not split: no digital silence of {min_gap_seconds:g} s or more near the "
                                       f"split points; processed in one pass")
                    submit_file(i)
                    continue
                sp = splits[i] = _Split(j, frames, rate, segs, uuid.uuid4().hex[:10], {}, {}, {}, t0=time.monotonic())
                for seg in segs:
                    submit_seg(i, seg)
            elif kind == "seg":
                sp = splits[i]
                seg = extra
                if err is not None:
                    n = sp.tries.get(seg.start, 0) + 1
                    sp.tries[seg.start] = n
                    if n == 1 and not _not_retryable(err):
                        first_error.setdefault(i, err)
                        submit_seg(i, seg)
                        continue
                    _cleanup_split(sp)
                    file_failed(i, f"{err}{' (retried once)' if n > 1 else ''}")
                    continue
                sp.out[seg.start] = value
                if progress:
                    progress.advance((seg.end - seg.start) / sp.sr)
                if any(s.start not in sp.out for s in sp.segs):
                    continue
                # every segment is in: one task checks the seams and, when all agree, stitches
                submit_stitch(i)
            elif kind == "stitch":
                sp = splits[i]
                if err is not None:
                    sp.tries["stitch"] = sp.tries.get("stitch", 0) + 1
                    if sp.tries["stitch"] == 1 and not _not_retryable(err):
                        first_error.setdefault(i, err)
                        submit_stitch(i)
                        continue
                    _cleanup_split(sp)
                    file_failed(i, f"{err}{' (retried once)' if sp.tries['stitch'] > 1 else ''}")
                    continue
                bad, _cuts, meta_notes, fmt = value
                if bad:
                    repair(i, bad)
                    continue
                r = FileResult(j.src, j.dst, ok=True, seconds=sp.frames / sp.sr, elapsed=time.monotonic() - sp.t0)
                r.format = fmt  # (what the worker's writer chose, with its notes)
                r.warnings.extend(meta_notes)
                bad_samples = sum(o["bad"] for o in sp.out.values())
                if bad_samples:
                    r.warnings.append(f"{bad_samples} NaN/Inf input sample(s) were replaced by silence")
                r.warnings.extend(sp.notes)
                r.warnings.extend(dict.fromkeys(o["note"] for o in sp.out.values() if o.get("note")))
                if i in first_error:
                    r.warnings.append(f"a try failed ({first_error[i]}); the retry succeeded")
                r.segments = len(sp.segs)
                done(i, r, counted=True)

    leftovers = _remove_leftovers(jobs, t0)
    for r in results:
        if r is not None and r.ok and r.dst in leftovers:
            r.warnings.append("a worker died while writing it; Ray re-ran the task (its temporary file was removed)")
    if progress:
        progress.finish()
    return Summary([r for r in results if r is not None], time.monotonic() - t0)


def _unlink(path: str | None) -> None:
    if path:
        try:
            os.unlink(path)
        except OSError:
            pass


def _cleanup_split(sp: _Split) -> None:
    for p in list(sp.paths.values()):
        _unlink(p)
    sp.paths.clear()


def _remove_leftovers(jobs: list[Job], since: float) -> set[str]:
    """Remove temporary files that a killed worker left beside our targets:
    ``.NAME.qc-tmp-*`` and ``.NAME.qc-seg-*`` made during this run.
    Returns the targets that had some."""
    from .offline import hidden_beside

    wall0 = time.time() - (time.monotonic() - since) - 1.0
    found: set[str] = set()
    for path, target, _ in hidden_beside(jobs, (".qc-tmp-", ".qc-seg-")):
        try:
            if os.path.getmtime(path) >= wall0:
                os.unlink(path)
                found.add(target)
        except OSError:
            pass
    return found


def _task_error(e: Exception) -> str:
    """One line for a task that raised or whose worker died."""
    cause = getattr(e, "cause", None)
    if isinstance(cause, (AudioFileError, BridgeError)):
        return str(cause)
    if cause is not None and not isinstance(cause, type(e)):
        return f"{type(cause).__name__}: {_short(cause)}"
    name = type(e).__name__
    if "WorkerCrashed" in name or "NodeDied" in name or "ActorDied" in name or "ObjectLost" in name:
        return f"worker failed twice ({name}); the file was not written"
    return f"worker failed: {name}: {_short(e)}"
