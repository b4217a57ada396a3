"""``quietcast process --ray``: files as tasks on a real local Ray instance
(started once for this module, 2 CPUs), with the local path's summary and
no-data-loss rules; long files split at digital silence and stitched back
exactly (compared with the single pass, byte for byte); the missing-extra
message. Skipped where Ray is not installed, except under CI, which
installs the ``cluster`` extra."""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from pedalboard.io import AudioFile

import quietcast.daemon
from quietcast.bridge import Chain
from quietcast.bridge import cluster as C
from quietcast.bridge.offline import plan_jobs, process_file, process_files

SR = 48_000


def write(path, x, sr, **kw):
    os.makedirs(os.path.dirname(str(path)), exist_ok=True)
    with AudioFile(str(path), "w", sr, x.shape[0], **kw) as f:
        f.write(x)


def leftovers(folder):
    return [f for _, _, fs in os.walk(folder) for f in fs if ".qc-tmp-" in f or ".qc-seg-" in f]


DEMO = os.path.join(os.path.dirname(os.path.abspath(quietcast.daemon.__file__)), "assets", "demo")


def _demo(name: str) -> np.ndarray:
    with AudioFile(os.path.join(DEMO, name)) as f:  # 48 kHz mono, 11 s
        return f.read(f.frames)[0]


def programme(seconds: float, sr: int = SR, channels: int = 2, seed: int = 0, gaps: bool = True) -> np.ndarray:
    """An edited programme of real audio: items of 4-10 s cut from the demo
    clip's speech (LJ Speech) over its recorded room noise, each at its own
    levels, with runs of digital silence (0.3-2 s) between most items.
    (Taken as ``sr`` whatever its true rate: only the samples matter.)"""
    rng = np.random.default_rng(seed)
    clean, noise = _demo("clean.flac"), _demo("noise.flac")
    n_total = int(seconds * sr)
    parts, n = [], 0
    while n < n_total:
        k = int(rng.uniform(4, 10) * sr)
        sp = np.resize(np.roll(clean, -int(rng.integers(clean.size))), k)
        nz = np.resize(np.roll(noise, -int(rng.integers(noise.size))), k)
        parts.append((sp * rng.uniform(0.5, 2.0) + nz * rng.uniform(0.2, 1.5)).astype(np.float32))
        n += k
        if gaps and rng.random() < 0.6:
            z = int(rng.uniform(0.3, 2.0) * sr)
            parts.append(np.zeros(z, np.float32))
            n += z
    mono = np.concatenate(parts)[:n_total]
    return np.stack([mono * (0.9 ** c) for c in range(channels)]).astype(np.float32)


def speech_chain() -> Chain:
    """The default chain with its suppressor pinned to ``dsp``: model
    "default" becomes the neural one once its bundle ships, and a neural
    chain is never split (see ``cluster.keeps_state``)."""
    doc = Chain.default().to_dict()
    for st in doc["stage"]:
        if st["type"] == "denoise":
            st["model"] = "dsp"
    return Chain.from_dict(doc, source="default (dsp)")


# --------------------------------------------------------------------------
# without Ray


def test_without_the_extra_ray_says_how_to_install_it(tmp_path):
    write(tmp_path / "a.wav", programme(1, channels=1), SR)
    argv = ["process", "dry", str(tmp_path / "a.wav"), "-o", str(tmp_path / "o.wav"), "--ray"]
    code = ("import sys; sys.modules['ray'] = None  # import ray now fails, as without the extra\n"
            f"from quietcast.daemon.cli import main\nsys.exit(main({argv!r}))")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert p.returncode == 2, p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1, p.stderr
    assert lines[0].startswith("quietcast: error: --ray needs Ray") and "pip install 'quietcast[cluster]'" in lines[0]
    assert not (tmp_path / "o.wav").exists()


def test_seam_grid_follows_the_hop_and_resampler_phase():
    assert C.seam_grid(Chain.load("dry"), 48_000) == 1
    assert C.seam_grid(speech_chain(), 48_000) == 8640  # 18 hops of 480: the minimum-statistics sub-window
    g = C.seam_grid(speech_chain(), 44_100)
    assert g % 147 == 0 and (g * 48_000 // 44_100) % 8640 == 0 and (g * 48_000) % 44_100 == 0


def test_chains_that_never_forget_are_known():
    from quietcast.models import available_models

    assert C.keeps_state(speech_chain()) is None
    tails = Chain([{"name": "v", "type": "reverb"}, {"name": "d", "type": "delay", "feedback": 0.3}])
    assert C.keeps_state(tails) is None  # they merge on signal: their seams are checked like any other
    lfo = Chain([{"name": "hp", "type": "highpass"}, {"name": "ph", "type": "phaser"}])
    assert "'ph' (phaser) never forgets" in C.keeps_state(lfo)
    assert C.keeps_state(Chain([{"name": "ch", "type": "chorus", "bypass": True}])) is None
    if "neural" in available_models():
        assert "neural" in C.keeps_state(Chain([{"name": "nr", "type": "denoise", "model": "neural"}]))
    # every neural model, not only the one called "neural" (a split of these failed every seam check
    # and ran again in one pass: twice the work, and an alarming warning)
    import quietcast.models

    if "neural-clean" in available_models():
        assert "neural" in C.keeps_state(Chain([{"name": "nr", "type": "denoise", "model": "neural-clean"}]))
        folder = os.path.join(os.path.dirname(quietcast.models.__file__), "assets", "clean")
        assert "neural" in C.keeps_state(Chain([{"name": "nr", "type": "denoise", "model": folder}]))
    assert C.keeps_state(Chain([{"name": "nr", "type": "denoise", "model": "dsp"}])) is None


def test_plan_puts_seams_after_silence_on_the_grid():
    sr, grid = SR, 8640
    frames = 300 * sr
    gaps = [(int(s * sr), int((s + 1.2) * sr)) for s in (20, 55, 61, 118, 190, 250, 280)]
    segs = C.plan_segments(frames, sr, gaps, split_seconds=60, warmup_seconds=15, overlap_seconds=10, grid=grid)
    assert len(segs) >= 3
    assert segs[0].read_start == segs[0].start == 0 and segs[-1].end == segs[-1].verify_end == frames
    for prev, seg in zip(segs, segs[1:]):
        assert prev.end == seg.start and prev.verify_end == seg.start + 10 * sr == seg.start + seg.check
        assert seg.read_start % grid == 0
        gap = next(g for g in gaps if g[0] <= seg.read_start < g[1])  # starts cold inside the silence
        assert seg.start == gap[1] + 15 * sr  # 15 s of audio after it before its output counts
    # no silence, no split
    assert len(C.plan_segments(frames, sr, [], split_seconds=60, grid=grid)) == 1


def test_seam_check_wants_agreement_on_real_audio():
    rng = np.random.default_rng(0)
    y = rng.standard_normal((2, 10 * SR)).astype(np.float32)
    active = np.packbits(np.ones(10 * SR, bool))
    assert C.check_seam(y, y.copy(), active, 10 * SR, SR) == (0, "ok")
    z = y.copy()
    z[1, : 2 * SR] += 1e-7  # differs for 2 s, then identical for good
    off, _ = C.check_seam(y, z, active, 10 * SR, SR)
    assert off == 2 * SR
    z[0, 8 * SR] += 1e-7  # identical only for the last 2 s: not enough
    assert C.check_seam(y, z, active, 10 * SR, SR)[0] is None
    silent = np.packbits(np.zeros(10 * SR, bool))  # agreement over digital silence proves nothing
    off, why = C.check_seam(y, y, silent, 10 * SR, SR)
    assert off is None and "non-silent" in why


@pytest.mark.parametrize("rate, channels, kw, ext, seconds, split", [(48_000, 2, {"bit_depth": 16}, ".wav", 80, 20),
                                                                     (44_100, 1, {"bit_depth": 24}, ".flac", 70, 15)])
def test_segments_stitch_back_to_the_single_pass_in_process(tmp_path, rate, channels, kw, ext, seconds, split):
    """The split machinery without Ray: plan, run each segment cold, check
    the seams, stitch; the file equals the single pass byte for byte (at
    44.1 kHz too, where the suppressor runs behind resamplers)."""
    x = programme(seconds, rate, channels, seed=5)
    src = tmp_path / f"in{ext}"
    write(src, x, rate, **kw)
    chain = speech_chain()
    assert process_file(chain, str(src), str(tmp_path / f"single{ext}")).ok
    frames, sr, gaps = C.find_gaps(str(src), int(0.5 * rate))
    assert frames == x.shape[1] and sr == rate and gaps
    segs = C.plan_segments(frames, sr, gaps, split_seconds=split, grid=C.seam_grid(chain, sr))
    assert len(segs) >= 3
    paths = [str(tmp_path / f"s{s.index}.f32") for s in segs]
    outs = [C.run_segment(chain, str(src), s, p) for s, p in zip(segs, paths)]
    bad, cuts = C.check_and_stitch(str(src), str(tmp_path / f"stitched{ext}"), segs, paths,
                                   [(o["active"], o["active_n"]) for o in outs], channels=channels, sample_rate=sr)
    assert bad == [] and len(cuts) == len(segs)
    with AudioFile(str(tmp_path / f"single{ext}")) as f:
        single = f.read(f.frames)
    with AudioFile(str(tmp_path / f"stitched{ext}")) as f:
        stitched = f.read(f.frames)
    assert stitched.shape == single.shape == x.shape
    np.testing.assert_array_equal(stitched, single)
    assert (tmp_path / f"stitched{ext}").read_bytes() == (tmp_path / f"single{ext}").read_bytes()


def test_a_segment_says_when_default_ran_as_dsp(tmp_path, monkeypatch):
    """With the shipped bundle damaged, ``default`` resolves to ``dsp``,
    a chain is split, and each segment (run in a Ray worker) reports the
    warning a single pass gives; the stitched result carries it once.
    Here the segment runs in this process, where the damage is visible."""
    import shutil

    from quietcast.models import bundle

    seg = C.plan_segments(SR * 4, SR, [], split_seconds=0, grid=C.seam_grid(speech_chain(), SR))[0]
    write(tmp_path / "a.wav", programme(4, SR, 1, seed=4), SR)
    assert C.run_segment(Chain.default(), str(tmp_path / "a.wav"), seg, str(tmp_path / "s0.f32"))["note"] is None
    shutil.copytree(bundle.ASSETS, tmp_path / "assets")
    monkeypatch.setattr(bundle, "ASSETS", tmp_path / "assets")
    w = tmp_path / "assets" / "default" / "weights.safetensors"
    w.write_bytes(w.read_bytes()[:-1000])
    assert C.keeps_state(Chain.default()) is None  # as dsp, the default chain may be split
    out = C.run_segment(Chain.default(), str(tmp_path / "a.wav"), seg, str(tmp_path / "s1.f32"))
    assert out["note"].startswith(f"model 'default' ran as 'dsp' (no neural suppression): {w}: sha256 mismatch")
    assert C.run_segment(speech_chain(), str(tmp_path / "a.wav"), seg, str(tmp_path / "s2.f32"))["note"] is None


def test_a_cold_start_a_few_frames_before_a_block_edge_is_still_exact(tmp_path):
    """A segment whose first read would be shorter than pedalboard's
    largest chunk (8192): pedalboard would prepare its plugins again, state
    reset, when the full blocks follow; the first read is longer instead."""
    grid = C.seam_grid(speech_chain(), SR)
    rs = next(k * grid for k in range(20 * SR // grid, 40 * SR // grid) if (k * grid) % 65_536 > 65_536 - 8192)
    x = programme(rs / SR + 30, SR, 1, seed=3, gaps=False)
    x[:, rs - SR:rs + SR] = 0.0  # the silence the seam needs
    write(tmp_path / "in.wav", x, SR, bit_depth=32)
    single = tmp_path / "single.wav"
    assert process_file(speech_chain(), str(tmp_path / "in.wav"), str(single)).ok
    with AudioFile(str(single)) as f:
        whole = f.read(f.frames)
    n = x.shape[1]
    seg = C.Segment(1, rs, rs + 16 * SR, n, n)
    C.run_segment(speech_chain(), str(tmp_path / "in.wav"), seg, str(tmp_path / "seg.f32"))
    cold = C.read_raw(str(tmp_path / "seg.f32"), seg.start, seg.start, n - seg.start, 1)
    np.testing.assert_array_equal(cold, whole[:, seg.start:])


def test_a_segment_names_where_a_stage_faulted_in_the_file(tmp_path):
    """A segment of a split file reports a stage fault by the file's time:
    the block it started (it said the end of the block) and the first bad
    sample (a segment read from 2.0 s, a sample that overflows at 2.5 s)."""
    from quietcast.bridge.errors import BridgeError

    x = np.zeros((1, 4 * SR), np.float32)
    x[0, int(2.5 * SR)] = 2.0
    write(tmp_path / "in.wav", x, SR, bit_depth=32)
    chain = Chain([{"name": f"g{i}", "type": "gain", "gain_db": 24.0} for i in range(32)])  # x 2.5e38: 2.0 -> Inf
    seg = C.Segment(1, 2 * SR, 2 * SR, 4 * SR, 4 * SR)
    with pytest.raises(BridgeError) as e:
        C.run_segment(chain, str(tmp_path / "in.wav"), seg, str(tmp_path / "seg.f32"), block=SR // 10)
    assert str(e.value) == ("stage 'g31' failed in the block starting at 2.50 s (returned NaN or Inf samples, "
                            "the first at 2.50 s); output not written")
    assert not (tmp_path / "seg.f32").exists()


# --------------------------------------------------------------------------
# on a real local Ray instance


@pytest.fixture(scope="module")
def ray_local():
    try:
        import ray
    except ImportError:
        if os.environ.get("CI"):
            pytest.fail("CI must install the cluster extra (ray): pip install -e '.[test,cluster]'")
        pytest.skip("ray is not installed: pip install 'quietcast[cluster]'")
    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.ERROR, log_to_driver=False,
                 object_store_memory=200 * 1024 * 1024)
    yield ray
    ray.shutdown()


@pytest.fixture
def tree(tmp_path):
    src = tmp_path / "in"
    write(src / "a.wav", programme(2, 44_100, 2, seed=1), 44_100)
    write(src / "sub" / "b.flac", programme(3, SR, 1, seed=2), SR)
    (src / "broken.wav").write_bytes(b"RIFF\x10\x00\x00\x00WAVEfmt junk junk junk" * 40)
    (src / "notes.txt").write_text("not audio, ignored")
    return src


def test_folder_with_a_corrupt_file(ray_local, tree, tmp_path):
    out = tmp_path / "out"
    s = C.process_files_ray(Chain.default(), plan_jobs([str(tree)], str(out)))
    assert [os.path.basename(r.src) for r in s.results] == ["a.wav", "broken.wav", "b.flac"]  # in job order
    assert len(s.failed) == 1 and s.failed[0].src.endswith("broken.wav")
    assert "cannot be read as audio" in s.failed[0].error and "(retried once)" in s.failed[0].error
    assert not (out / "broken.wav").exists() and leftovers(out) == []
    assert "1 failed" in s.text() and "FAILED" in s.text()
    # the same bytes as the local path
    local = tmp_path / "local"
    process_files(Chain.default(), plan_jobs([str(tree)], str(local)))
    for rel in ("a.wav", os.path.join("sub", "b.flac")):
        assert (out / rel).read_bytes() == (local / rel).read_bytes()


def test_truncated_files_are_reported_whole_or_split(ray_local, tmp_path):
    """A file cut short (which pedalboard pads with zeros) fails in the
    file task and in the silence scan of a long file alike: reported,
    nothing written, the other file done."""
    src = tmp_path / "in"
    write(src / "ok.wav", programme(2, SR, 1, seed=3), SR)
    for name, seconds in (("short.flac", 2), ("long.flac", 6)):
        write(tmp_path / name, programme(seconds, SR, 2, seed=4), SR)
        b = (tmp_path / name).read_bytes()
        (src / name).write_bytes(b[:len(b) * 2 // 3])
    out = tmp_path / "out"
    s = C.process_files_ray(speech_chain(), plan_jobs([str(src)], str(out)), split_seconds=3)
    by_name = {os.path.basename(r.src): r for r in s.results}
    assert by_name["ok.wav"].ok
    for name, seconds in (("short.flac", 2), ("long.flac", 6)):
        r = by_name[name]
        assert not r.ok and r.error.startswith(f"truncated: the header declares {seconds * SR} frames"), r.error
    assert sorted(os.listdir(out)) == ["ok.wav"] and leftovers(out) == []


def test_a_stage_fault_is_retried_once_then_reported_and_nothing_is_written(ray_local, tmp_path, qcgain_vst3):
    write(tmp_path / "in.wav", programme(2, SR, 2), SR)
    chain = Chain([{"name": "v", "type": "plugin", "path": str(qcgain_vst3), "params": {"fault": True}}])
    s = C.process_files_ray(chain, plan_jobs([str(tmp_path / "in.wav")], str(tmp_path / "out" / "o.wav")))
    (r,) = s.results
    assert not r.ok and "stage 'v' failed" in r.error and "NaN" in r.error and "(retried once)" in r.error
    assert not (tmp_path / "out" / "o.wav").exists() and leftovers(tmp_path) == []


def test_an_existing_output_is_refused_not_retried(ray_local, tree, tmp_path):
    dst = tmp_path / "o.wav"
    dst.write_bytes(b"precious")
    s = C.process_files_ray(Chain.load("dry"), plan_jobs([str(tree / "a.wav")], str(dst)))
    assert "--overwrite" in s.failed[0].error and "retried" not in s.failed[0].error
    assert dst.read_bytes() == b"precious"
    s = C.process_files_ray(Chain.load("dry"), plan_jobs([str(tree / "a.wav")], str(dst)), overwrite=True)
    assert not s.failed and dst.read_bytes() != b"precious"


def test_a_long_file_is_split_and_stitched_back_exactly(ray_local, tmp_path):
    """The test the issue asks for: a file with silent gaps, split into
    segments on Ray, equals the single pass (latency aligned) byte for
    byte."""
    x = programme(80, SR, 2, seed=5)
    write(tmp_path / "in" / "sub" / "long.wav", x, SR, bit_depth=16)
    write(tmp_path / "in" / "short.wav", programme(5, SR, 2, seed=6), SR, bit_depth=16)
    chain = speech_chain()
    single = tmp_path / "single.wav"
    assert process_file(chain, str(tmp_path / "in" / "sub" / "long.wav"), str(single)).ok
    out = tmp_path / "out"
    s = C.process_files_ray(chain, plan_jobs([str(tmp_path / "in")], str(out)), split_seconds=20)
    assert not s.failed, s.text()
    long = next(r for r in s.results if r.src.endswith("long.wav"))
    assert long.segments >= 3 and long.warnings == [] and long.seconds == pytest.approx(80)
    assert long.format == "WAV PCM_16"  # (said by the driver, as the stitching task wrote it)
    assert next(r for r in s.results if r.src.endswith("short.wav")).segments == 1
    assert (out / "sub" / "long.wav").read_bytes() == single.read_bytes()
    assert leftovers(out) == []


def _bwf(path, x: np.ndarray, chunks: list[tuple[bytes, bytes]], mask: int) -> None:
    """A 16-bit WAVE_FORMAT_EXTENSIBLE file of ``x`` (``[channels, frames]``)
    with ``chunks`` before its data, written here byte by byte."""
    import struct

    def chunk(cid, body):
        return cid + struct.pack("<I", len(body)) + body + b"\0" * (len(body) & 1)

    ch = x.shape[0]
    fmt = (struct.pack("<HHIIHHHHI", 0xFFFE, ch, SR, SR * 2 * ch, 2 * ch, 16, 22, 16, mask)
           + bytes.fromhex("0100000000001000800000aa00389b71"))
    data = np.clip(np.rint(x.T * 32767), -32768, 32767).astype("<i2").tobytes()
    body = chunk(b"fmt ", fmt) + b"".join(chunk(c, b) for c, b in chunks) + chunk(b"data", data)
    path.write_bytes(b"RIFF" + struct.pack("<I", 4 + len(body)) + b"WAVE" + body)


def _chunk(path, cid: bytes) -> bytes | None:
    import struct

    b, pos = path.read_bytes(), 12
    while pos + 8 <= len(b):
        n = struct.unpack("<I", b[pos + 4:pos + 8])[0]
        if b[pos:pos + 4] == cid:
            return b[pos + 8:pos + 8 + n]
        pos += 8 + n + (n & 1)
    return None


def test_a_split_file_keeps_its_bwf_metadata(ray_local, tmp_path):
    """A long BWF production recording split on Ray and downmixed to mono:
    the stitched output carries its bext (TimeReference), iXML (without the
    track list) and cue points, byte for byte as the single pass writes
    them, with the same warnings (the channel mask and the track list,
    which no longer fit, and the source's loudness values, unset)."""
    import struct

    time_ref = 52_000 * SR
    bext = (b"Scene 4 take 1".ljust(256, b"\0") + b"Zoom F8n".ljust(64, b"\0") + b"2024-05-17" + b"14:26:40"
            + struct.pack("<QH", time_ref, 2) + bytes(254) + b"A=PCM,F=48000,W=16,M=stereo,T=Zoom F8n\r\n")
    ixml = (b"<BWFXML><SCENE>4</SCENE><TAKE>1</TAKE><TRACK_LIST><TRACK_COUNT>2</TRACK_COUNT></TRACK_LIST>"
            b"</BWFXML>")
    cue = struct.pack("<I", 1) + struct.pack("<II4sIII", 1, 30 * SR, b"data", 0, 0, 30 * SR)
    src = tmp_path / "in" / "take.wav"
    src.parent.mkdir()
    _bwf(src, programme(60, SR, 2, seed=8), [(b"bext", bext), (b"iXML", ixml), (b"cue ", cue)], mask=0x3)
    chain = speech_chain()
    single = tmp_path / "single.wav"
    one = process_file(chain, str(src), str(single), channels=1)
    assert one.ok, one.error
    s = C.process_files_ray(chain, plan_jobs([str(tmp_path / "in")], str(tmp_path / "out")), split_seconds=20,
                            channels=1)
    assert not s.failed, s.text()
    (r,) = s.results
    out = tmp_path / "out" / "take.wav"
    assert r.segments >= 2 and r.warnings == one.warnings and len(r.warnings) == 3, r.warnings
    assert "channel mask (0x3" in r.warnings[0] and "loudness values" in r.warnings[1] \
        and "TRACK_LIST" in r.warnings[2]
    assert struct.unpack("<Q", _chunk(out, b"bext")[338:346])[0] == time_ref
    assert b",M=mono,T=quietcast " in _chunk(out, b"bext")[602:]
    assert _chunk(out, b"iXML") == b"<BWFXML><SCENE>4</SCENE><TAKE>1</TAKE></BWFXML>"
    assert _chunk(out, b"cue ") == cue
    assert out.read_bytes() == single.read_bytes()
    with AudioFile(str(out)) as f:
        assert f.frames == 60 * SR and f.num_channels == 1
    assert leftovers(tmp_path / "out") == []


@pytest.mark.parametrize("warmup, overlap, collapses", [(4, 6, False), (1, 4, True)])
def test_a_seam_that_does_not_verify_is_repaired(ray_local, tmp_path, warmup, overlap, collapses):
    """Warm-ups too short for the noise tracker to catch up: the seams
    that fail their check have their segments joined and re-run (all of
    them: one pass), and the output is still the single pass's."""
    write(tmp_path / "long.wav", programme(60, SR, 1, seed=7), SR, bit_depth=16)
    assert process_file(speech_chain(), str(tmp_path / "long.wav"), str(tmp_path / "single.wav")).ok
    s = C.process_files_ray(speech_chain(), plan_jobs([str(tmp_path / "long.wav")], str(tmp_path / "o.wav")),
                            split_seconds=12, warmup_seconds=warmup, overlap_seconds=overlap)
    (r,) = s.results
    assert r.ok and any("did not verify" in w for w in r.warnings), r.warnings
    if collapses:
        assert r.segments == 1 and "processed in one pass" in r.warnings[-1]
    else:
        assert r.segments >= 2 and "re-ran" in r.warnings[-1]
    assert (tmp_path / "o.wav").read_bytes() == (tmp_path / "single.wav").read_bytes()
    assert leftovers(tmp_path) == []


def test_a_chain_that_keeps_its_state_is_not_split(ray_local, tmp_path):
    """A chorus's LFO runs free: no cold start ever catches up with it."""
    write(tmp_path / "long.wav", programme(30, SR, 1, seed=7), SR)
    chain = Chain([{"name": "hp", "type": "highpass"}, {"name": "ch", "type": "chorus"}])
    s = C.process_files_ray(chain, plan_jobs([str(tmp_path / "long.wav")], str(tmp_path / "o.wav")), split_seconds=10)
    (r,) = s.results
    assert r.ok and r.segments == 1 and any("'ch' (chorus) never forgets" in w for w in r.warnings)


def test_without_silence_a_long_file_is_processed_in_one_pass(ray_local, tmp_path):
    write(tmp_path / "hiss.wav", programme(30, SR, 1, seed=8, gaps=False), SR)
    s = C.process_files_ray(speech_chain(), plan_jobs([str(tmp_path / "hiss.wav")], str(tmp_path / "o.wav")),
                            split_seconds=10)
    (r,) = s.results
    assert r.ok and r.segments == 1 and any("no digital silence" in w for w in r.warnings)


def _kill_writers(folder, name: str, times: int, stop: threading.Event, killed: list) -> None:
    """SIGKILL the Ray worker writing ``name`` (its pid is in the
    temporary file's name), ``times`` times."""
    pat = re.compile(r"^\." + re.escape(name) + r"\.qc-tmp-(\d+)-")
    while len(killed) < times and not stop.is_set():
        try:
            entries = os.listdir(folder)
        except OSError:
            entries = []
        for e in entries:
            m = pat.match(e)
            if m and int(m.group(1)) not in killed:
                killed.append(int(m.group(1)))
                os.kill(int(m.group(1)), signal.SIGKILL)
        time.sleep(0.005)


@pytest.mark.parametrize("kills", [1, 2])
def test_a_killed_worker_is_retried_once_and_leaves_no_partial_output(ray_local, tmp_path, kills):
    write(tmp_path / "in.wav", programme(40, SR, 2, seed=9), SR)
    out = tmp_path / "out"
    out.mkdir()
    stop, killed = threading.Event(), []
    th = threading.Thread(target=_kill_writers, args=(out, "in.wav", kills, stop, killed), daemon=True)
    th.start()
    try:
        s = C.process_files_ray(Chain.default(), plan_jobs([str(tmp_path / "in.wav")], str(out)), split_seconds=0)
    finally:
        stop.set()
        th.join()
    assert len(killed) == kills
    (r,) = s.results
    if kills == 1:  # Ray re-ran it; the output is whole and the same as a local run
        assert r.ok, r.error
        assert any("worker died" in w for w in r.warnings)
        assert process_file(Chain.default(), str(tmp_path / "in.wav"), str(tmp_path / "ref.wav")).ok
        assert (out / "in.wav").read_bytes() == (tmp_path / "ref.wav").read_bytes()
    else:  # died on the retry too: reported, nothing written
        assert not r.ok and "worker failed twice" in r.error
        assert not (out / "in.wav").exists()
    assert leftovers(out) == []


def test_cli_process_with_ray(ray_local, tree, tmp_path, capsys):
    from quietcast.daemon.cli import main

    out = tmp_path / "out"
    rc = main(["process", "dry", str(tree), "-o", str(out), "--json", "--ray", "--split-seconds", "0"])
    assert rc == 1  # broken.wav
    doc = json.loads(capsys.readouterr().out)
    assert doc["failed"] == 1 and [f["ok"] for f in doc["files"]] == [True, False, True]
    assert (out / "a.wav").exists() and (out / "sub" / "b.flac").exists() and leftovers(out) == []
    # `... INPUT --ray INPUT2`: the second input is not a cluster address
    rc = main(["process", "dry", str(tree / "a.wav"), "-o", str(tmp_path / "two"), "-q",
               "--ray", str(tree / "sub" / "b.flac")])
    assert rc == 0 and (tmp_path / "two" / "a.wav").exists() and (tmp_path / "two" / "b.flac").exists()


def test_cli_joins_a_running_cluster_by_address(ray_local, tree, tmp_path):
    """``--ray HOST:PORT``: a second driver (a separate quietcast process)
    joins the cluster this module started; an address that does not
    answer is one error line, at once."""
    addr = ray_local.get_runtime_context().gcs_address
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "quietcast.daemon.cli", "process", "dry", str(tree), "-o", str(out), "-q"]
    p = subprocess.run([*cmd, f"--ray={addr}"], capture_output=True, text=True, timeout=300)
    assert p.returncode == 1, p.stderr  # broken.wav
    assert "FAILED" in p.stderr and "broken.wav" in p.stderr
    assert (out / "a.wav").exists() and (out / "sub" / "b.flac").exists() and leftovers(out) == []
    cmd[cmd.index("-o") + 1] = str(tmp_path / "none")
    p = subprocess.run([*cmd, "--ray=127.0.0.1:1"], capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and p.stderr.strip().splitlines() == [
        "quietcast: error: cannot reach the Ray cluster at '127.0.0.1:1': Connection refused"]


def test_a_task_given_a_gpu_runs_its_denoise_stages_there():
    """A Ray task that reserved a GPU (``--gpus-per-task``) runs its
    denoise stages on it (until session 25 every stage ran on the CPU
    while the task held a GPU: parallelism was capped at the GPU count for
    nothing); without CUDA the stage falls back to the CPU and says why."""
    import torch

    from quietcast.bridge.offline import _processor
    from quietcast.models import available_models

    assert C.task_device([0]) == "cuda" and C.task_device([]) == "cpu"
    if "neural" not in available_models():
        pytest.skip("no neural bundle")
    chain = Chain([{"name": "nr", "type": "denoise", "model": "neural"}])
    backend = _processor(chain, 48_000, 1, "cuda").stage("nr").suppressor.backend
    if torch.cuda.is_available():
        assert backend.startswith("cuda"), backend
    else:
        assert backend.startswith("cpu (fallback"), backend
    assert _processor(chain, 48_000, 1).stage("nr").suppressor.backend == "cpu"
