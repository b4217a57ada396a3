"""Truncated WAV, AIFF and FLAC files are caught (pedalboard would pad them
with zeros, silently): whole files of every depth pass, files cut anywhere
are reported with the declared and present lengths, odd but whole files
(silent endings, chunks after the audio, tags, streamed headers) pass, and
nothing the check reads makes it raise. ``quietcast process`` reports a cut
file like any corrupt input."""

from __future__ import annotations

import json
import os
import re
import struct
import subprocess
import sys

import numpy as np
import pytest
from pedalboard.io import AudioFile

from conftest import quietcast_exe
from quietcast.bridge import Chain, audiocheck
from quietcast.bridge.audiocheck import truncation_problem
from quietcast.bridge.offline import plan_jobs, process_file, process_files

SR = 48_000
FLAC_BLOCK = 4096  # pedalboard's (libFLAC's) frame size


def write(path, x, sr=SR, **kw):
    with AudioFile(str(path), "w", sr, x.shape[0], **kw) as f:
        f.write(x)
    return path


def noise(ch=2, n=SR, seed=0):
    return (np.random.default_rng(seed).standard_normal((ch, n)) * 0.1).astype(np.float32)


def cut(path, keep, name="cut"):
    """A copy of ``path`` with only its first ``keep`` bytes (negative: all
    but the last ``-keep``)."""
    b = path.read_bytes()
    dst = path.with_name(f"{name}{path.suffix}")
    dst.write_bytes(b[:keep] if keep >= 0 else b[:len(b) + keep])
    return dst


def lengths(problem):
    m = re.fullmatch(r"truncated: the header declares (\d+) frames, the file holds (\d+) "
                     r"\(the last [0-9.]+ m?s are missing\)", problem or "")
    assert m, problem
    return int(m[1]), int(m[2])


def decoded(path, block=1024):
    """How many frames pedalboard's decoder really gets from ``path`` (up to
    the last one that is not zero, read in small blocks)."""
    with AudioFile(str(path)) as f:
        parts = []
        while True:
            y = f.read(block)
            if y.shape[1] == 0:
                break
            parts.append(y)
    nz = np.flatnonzero(np.any(np.concatenate(parts, axis=1) != 0, axis=0))
    return int(nz[-1]) + 1 if nz.size else 0


def wav_data(path):
    """``(offset of the first sample byte, data size)`` of a RIFF WAV."""
    b = path.read_bytes()
    i = b.index(b"data", 12)
    return i + 8, struct.unpack("<I", b[i + 4:i + 8])[0]


def flac_audio_start(path):
    b = path.read_bytes()
    pos = 4
    while True:
        last, n = b[pos] & 0x80, int.from_bytes(b[pos + 1:pos + 4], "big")
        pos += 4 + n
        if last:
            return pos


FORMATS = [("wav", 16), ("wav", 24), ("wav", 32), ("flac", 16), ("flac", 24), ("aiff", 16), ("aiff", 24)]


# --------------------------------------------------------------------------
# whole files


@pytest.mark.parametrize("ext,depth", FORMATS)
@pytest.mark.parametrize("ch,n", [(2, SR), (1, 100_003), (6, 20_000), (1, 1)])
def test_whole_files_pass(tmp_path, ext, depth, ch, n):
    p = write(tmp_path / f"a.{ext}", noise(ch, n), bit_depth=depth)
    assert truncation_problem(str(p)) is None


@pytest.mark.parametrize("ext,depth", FORMATS)
def test_audio_ending_in_digital_silence_is_not_truncation(tmp_path, ext, depth):
    x = noise()
    x[:, SR // 4:] = 0  # the last 0.75 s exactly 0
    p = write(tmp_path / f"a.{ext}", x, bit_depth=depth)
    assert truncation_problem(str(p)) is None
    p = write(tmp_path / f"b.{ext}", np.zeros((2, 3 * SR), np.float32), bit_depth=depth)
    assert truncation_problem(str(p)) is None


# --------------------------------------------------------------------------
# cut files


@pytest.mark.parametrize("depth", [16, 24, 32])
def test_wav_cut_anywhere_is_reported(tmp_path, depth):
    p = write(tmp_path / "a.wav", noise(), bit_depth=depth)
    start, size = wav_data(p)
    align = 2 * (depth // 8)
    for keep in (start, start + 1, start + size // 2, start + size - align - 1, start + size - 3):
        q = cut(p, keep)
        declared, present = lengths(truncation_problem(str(q)))
        assert declared == SR and present == (keep - start) // align, keep
        with AudioFile(str(q)) as f:
            assert f.frames == SR  # what pedalboard says, hence the check
        if present:
            assert decoded(q) in (present, present + 1)  # a partial last frame may half decode


def test_message_names_the_lengths_and_the_missing_time(tmp_path):
    p = write(tmp_path / "a.wav", noise(), bit_depth=16)
    start, size = wav_data(p)
    assert truncation_problem(str(cut(p, start + 23_990 * 4))) == (
        "truncated: the header declares 48000 frames, the file holds 23990 (the last 0.50 s are missing)")
    assert truncation_problem(str(cut(p, -3))) == (
        "truncated: the header declares 48000 frames, the file holds 47999 (the last 0.021 ms are missing)")


@pytest.mark.parametrize("depth", [16, 24])
@pytest.mark.parametrize("ch,n", [(2, SR), (1, 100_003), (6, 20_000)])
def test_flac_cut_anywhere_is_reported_with_what_the_decoder_gets(tmp_path, depth, ch, n):
    p = write(tmp_path / "a.flac", noise(ch, n), bit_depth=depth)
    size, audio = p.stat().st_size, flac_audio_start(p)
    keeps = [audio, audio + 3, audio + 40, audio + (size - audio) // 3, size // 2, size - 1000, size - 3, size - 1]
    for keep in keeps:
        q = cut(p, keep)
        declared, present = lengths(truncation_problem(str(q)))
        assert declared == n, keep
        assert present % FLAC_BLOCK == 0 and present < n
        assert present == decoded(q), keep


def test_flac_cut_a_few_bytes_before_the_end_loses_the_last_frame(tmp_path):
    p = write(tmp_path / "a.flac", noise(), bit_depth=16)
    assert lengths(truncation_problem(str(cut(p, -3)))) == (SR, SR // FLAC_BLOCK * FLAC_BLOCK)


def test_flac_cut_in_the_metadata_or_at_a_frame_boundary(tmp_path):
    p = write(tmp_path / "a.flac", noise(), bit_depth=16)
    assert lengths(truncation_problem(str(cut(p, 60)))) == (SR, 0)  # inside the metadata, after STREAMINFO
    # exactly where the second frame starts (its header: the first one's, frame number 1): the first is whole
    b, audio = p.read_bytes(), flac_audio_start(p)
    second = b.index(b[audio:audio + 4] + b"\x01", audio + 1)
    q = cut(p, second)
    assert lengths(truncation_problem(str(q))) == (SR, FLAC_BLOCK) and decoded(q) == FLAC_BLOCK


def test_a_cut_file_ending_in_silence_is_still_reported(tmp_path):
    x = noise(2, 2 * SR)
    x[:, SR // 2:] = 0
    for ext in ("wav", "flac"):
        p = write(tmp_path / f"a.{ext}", x, bit_depth=16)
        declared, present = lengths(truncation_problem(str(cut(p, -100))))
        assert declared == 2 * SR and present < declared


@pytest.mark.parametrize("depth", [16, 24])
def test_aiff_cut_is_reported(tmp_path, depth):
    p = write(tmp_path / "a.aiff", noise(), bit_depth=depth)
    b = p.read_bytes()
    start = b.index(b"SSND") + 16
    align = 2 * (depth // 8)
    for keep in (40, start, start + 1001, len(b) // 2, len(b) - 3):
        assert lengths(truncation_problem(str(cut(p, keep)))) == (SR, max(0, keep - start) // align), keep


# --------------------------------------------------------------------------
# odd but whole


def _chunk(cid, body):
    return cid + struct.pack("<I", len(body)) + body + (b"\0" if len(body) & 1 else b"")


def with_list_after_data(p):
    b = bytearray(p.read_bytes())
    b += _chunk(b"LIST", b"INFOICMT" + struct.pack("<I", 9) + b"a comment\0")
    b[4:8] = struct.pack("<I", len(b) - 8)
    p.write_bytes(bytes(b))
    return p


def test_wav_with_a_list_chunk_after_the_data(tmp_path):
    p = with_list_after_data(write(tmp_path / "a.wav", noise(), bit_depth=24))
    assert truncation_problem(str(p)) is None
    with AudioFile(str(p)) as f:
        assert f.frames == SR
    assert truncation_problem(str(cut(p, -5))) is None  # the LIST chunk is cut, the audio is whole
    start, size = wav_data(p)
    assert lengths(truncation_problem(str(cut(p, start + size - 6)))) == (SR, SR - 1)


def test_wav_odd_data_size_without_its_pad_byte(tmp_path):
    p = write(tmp_path / "a.wav", noise(1, 1001), bit_depth=24)  # 3003 bytes of data + a pad byte
    start, size = wav_data(p)
    assert size == 3003 and p.stat().st_size == start + size + 1
    assert truncation_problem(str(cut(p, -1))) is None
    assert lengths(truncation_problem(str(cut(p, -2)))) == (1001, 1000)


@pytest.mark.parametrize("size", [0, 0xFFFFFFFF])
def test_wav_streamed_with_unknown_size_is_reported_with_the_fix(tmp_path, size):
    """pedalboard reads 0 frames (size 0) or ~6 hours of zero padding
    (0xFFFFFFFF) from such a file: it is refused with what to do, not
    processed into nothing or into hours of silence."""
    x = noise()
    p = write(tmp_path / "a.wav", x, bit_depth=16)
    b = bytearray(p.read_bytes())
    i = b.index(b"data")
    b[i + 4:i + 8] = struct.pack("<I", size)
    b[4:8] = struct.pack("<I", size)
    p.write_bytes(bytes(b))
    msg = truncation_problem(str(p))
    assert msg.startswith(f"the WAV header leaves the length unknown (data size {size:#x}")
    assert f"the file holds {x.shape[1]} frames" in msg and "sox IN.wav OUT.wav" in msg
    p.write_bytes(bytes(b[:i + 8]))  # and no audio at all: the decoder's own "no frames" is enough
    assert truncation_problem(str(p)) is None


def _as_rf64(p, kind=b"RF64"):
    """The RIFF WAV ``p`` rewritten as RF64: a ds64 chunk in place of the
    JUNK chunk pedalboard reserves for it, 0xFFFFFFFF sizes."""
    b = bytearray(p.read_bytes())
    assert b[12:16] == b"JUNK"
    start, size = wav_data(p)
    ds64 = b"ds64" + struct.pack("<IQQQI", 28, len(b) - 8, size, size // 4, 0)
    n = struct.unpack("<I", b[16:20])[0]
    b[12:20 + n] = ds64 + _chunk(b"JUNK", bytes(n - len(ds64)))
    b[0:8] = kind + b"\xff\xff\xff\xff"
    i = b.index(b"data")
    b[i + 4:i + 8] = b"\xff\xff\xff\xff"
    p.write_bytes(bytes(b))
    return p


@pytest.mark.parametrize("kind", [b"RF64", b"BW64"])
def test_rf64(tmp_path, kind):
    p = _as_rf64(write(tmp_path / "a.wav", noise(), bit_depth=16), kind)
    assert truncation_problem(str(p)) is None
    start, size = wav_data(p)
    assert size == 0xFFFFFFFF  # the real size is in ds64
    assert lengths(truncation_problem(str(cut(p, start + 1000 * 4 + 1)))) == (SR, 1000)


def test_rf64_sizes_come_from_ds64_and_from_nowhere_else(tmp_path):
    """A chunk before the audio whose size (0xFFFFFFFF) ds64's table gives
    was skipped as 4 GiB long: a cut file passed unchecked. A ds64 too short
    to hold the data size was read on past its end (into the fmt chunk):
    a made-up length of 34 billion frames was reported. (The check now walks
    the chunks as the metadata reader does, :func:`wavmeta.walk_chunks`.)"""
    x = (noise(2, 1000) * 32767).astype("<i2")
    fmt = _chunk(b"fmt ", struct.pack("<HHIIHH", 1, 2, SR, SR * 4, 4, 16))
    data = x.T.tobytes()

    def rf64(ds64_body, extra=b""):
        body = (b"WAVE" + _chunk(b"ds64", ds64_body) + extra + fmt + b"data" + b"\xff\xff\xff\xff" + data)
        return b"RF64\xff\xff\xff\xff" + body

    extra = b"junk" + b"\xff\xff\xff\xff" + bytes(10)
    p = tmp_path / "a.wav"
    p.write_bytes(rf64(struct.pack("<QQQI4sQ", 0, len(data), 1000, 1, b"junk", 10), extra))
    assert truncation_problem(str(p)) is None
    assert lengths(truncation_problem(str(cut(p, -400)))) == (1000, 900)
    p.write_bytes(rf64(struct.pack("<Q", 0)))  # 8 bytes: no data size
    assert truncation_problem(str(p)) is None


def test_rifx_big_endian(tmp_path):
    x = (noise(2, 1000) * 32767).astype(">i2")
    fmt = struct.pack(">HHIIHH", 1, 2, SR, SR * 4, 4, 16)
    data = x.T.tobytes()
    body = b"WAVE" + b"fmt " + struct.pack(">I", 16) + fmt + b"data" + struct.pack(">I", len(data)) + data
    p = tmp_path / "a.wav"
    p.write_bytes(b"RIFX" + struct.pack(">I", len(body)) + body)
    assert truncation_problem(str(p)) is None
    assert lengths(truncation_problem(str(cut(p, -400)))) == (1000, 900)


def test_flac_tags_before_and_after(tmp_path):
    p = write(tmp_path / "a.flac", noise(), bit_depth=16)
    flac = p.read_bytes()
    id3v2 = b"ID3\x03\x00\x00" + bytes([0, 0, 0, 20]) + b"TIT2" + struct.pack(">I", 10) + b"\0\0" + b"\0title....."[:10]
    ape = b"APETAGEX" + struct.pack("<IIII", 2000, 32, 0, 0) + bytes(8)  # an APEv2 footer (no items)
    for before, after in [(id3v2, b""), (b"", b"TAG" + bytes(125)), (b"", ape), (id3v2, ape + b"TAG" + bytes(125))]:
        p.write_bytes(before + flac + after)
        assert truncation_problem(str(p)) is None, (before[:3], after[:3])
        p.write_bytes(before + flac[:-7])
        assert lengths(truncation_problem(str(p)))[1] == SR // FLAC_BLOCK * FLAC_BLOCK


@pytest.mark.parametrize("depth", [16, 24])
def test_flac_with_zero_padding_or_junk_after_the_last_frame(tmp_path, depth):
    p = write(tmp_path / "a.flac", noise(6, 20_000), bit_depth=depth)  # large frames (~60 KB at 24 bits)
    flac = p.read_bytes()
    for after in (bytes(1), bytes(3000), np.random.default_rng(1).integers(0, 256, 5000, dtype=np.uint8).tobytes()):
        p.write_bytes(flac + after)
        assert truncation_problem(str(p)) is None
        assert decoded(p) == 20_000  # the decoder copes with it too
        p.write_bytes(flac[:-2] + after)
        assert lengths(truncation_problem(str(p))) == (20_000, 16_384)


def _crc(table, data):
    c = 0
    for x in data:
        c = table[c ^ x] if table is audiocheck._CRC8 else ((c << 8) & 0xFFFF) ^ table[(c >> 8) ^ x]
    return c


def _bits(v, n):
    return format(int(v) & ((1 << n) - 1), f"0{n}b")


def _utf8(v):
    """FLAC's UTF-8-like coding of a frame or sample number (< 2**16 here)."""
    if v < 0x80:
        return bytes([v])
    if v < 0x800:
        return bytes([0xC0 | v >> 6, 0x80 | v & 63])
    return bytes([0xE0 | v >> 12, 0x80 | (v >> 6) & 63, 0x80 | v & 63])


def hand_made_flac(x, bps=16, blocks=(1024,), rate=SR):
    """A FLAC stream with what pedalboard's encoder does not write:
    VERBATIM subframes with wasted bits, FIXED with an escaped (unencoded)
    residual partition, CONSTANT, and variable block sizes when ``blocks``
    has several (cycled). ``x``: int samples [channels, n]."""
    ch, n = x.shape
    variable = len(blocks) > 1
    info = struct.pack(">HH", min(blocks), max(blocks)) + bytes(6)
    info += ((rate << 44) | ((ch - 1) << 41) | ((bps - 1) << 36) | n).to_bytes(8, "big") + bytes(16)
    out = bytearray(b"fLaC" + bytes([0x80, 0, 0, 34]) + info)
    starts = [0]
    while starts[-1] < n:
        starts.append(starts[-1] + blocks[(len(starts) - 1) % len(blocks)])
    for k, (a, b) in enumerate(zip(starts, starts[1:])):
        y = x[:, a:b]
        hdr = bytes([0xFF, 0xF8 | variable, 0x7A, (ch - 1) << 4 | {16: 4, 24: 6}[bps] << 1])
        hdr += _utf8(a if variable else k) + struct.pack(">H", y.shape[1] - 1)  # block size in 16 bits, 48 kHz
        hdr += bytes([_crc(audiocheck._CRC8, hdr)])
        bits = []
        for s in y:
            if np.all(s == s[0]):
                bits += ["00000000", _bits(s[0], bps)]  # CONSTANT
            elif np.all(s % 4 == 0):
                bits += ["00000011", "01"] + [_bits(v >> 2, bps - 2) for v in s]  # VERBATIM, 2 wasted bits
            else:  # FIXED order 0, one residual partition, escaped: 5-bit width, raw samples
                bits += ["00010000", "000000", "1111", format(bps, "05b")] + [_bits(v, bps) for v in s]
        b = "".join(bits)
        b += "0" * (-len(b) % 8)
        frame = hdr + int(b, 2).to_bytes(len(b) // 8, "big")
        out += frame + struct.pack(">H", _crc(audiocheck._CRC16, frame))
    return bytes(out)


@pytest.mark.parametrize("blocks,last", [((1024,), 4096), ((1024, 700, 1500, 333), 4581)])
def test_flac_subframes_and_blocking_pedalboard_does_not_write(tmp_path, blocks, last):
    rng = np.random.default_rng(0)
    n = 5000
    x = np.stack([rng.integers(-8000, 8000, n) * 4, rng.integers(-30000, 30000, n), np.full(n, -7)])
    x[0, 2048:3072] = 123
    p = tmp_path / "h.flac"
    p.write_bytes(hand_made_flac(x, blocks=blocks))
    with AudioFile(str(p)) as f:  # a valid stream: the decoder reads it back
        assert np.abs(np.round(f.read(f.frames) * 32768) - x).max() <= 1
    assert truncation_problem(str(p)) is None
    p.write_bytes(p.read_bytes() + bytes(100) + b"junk" * 100)
    assert truncation_problem(str(p)) is None
    for keep in (-1, -100):
        assert lengths(truncation_problem(str(cut(p, keep - 500)))) == (n, last)


def test_flac_of_unknown_length_is_not_checked(tmp_path):
    p = write(tmp_path / "a.flac", noise(), bit_depth=16)
    b = bytearray(p.read_bytes())
    # STREAMINFO's total samples: the low 36 bits of bytes 18..25 of the block (8 + 10 into the file)
    v = int.from_bytes(b[18:26], "big") & ~0xFFFFFFFFF
    b[18:26] = v.to_bytes(8, "big")
    p.write_bytes(bytes(b[: len(b) // 2]))
    assert truncation_problem(str(p)) is None


def test_other_formats_are_not_checked(tmp_path):
    for ext in ("mp3", "ogg"):
        p = write(tmp_path / f"a.{ext}", noise())
        assert truncation_problem(str(p)) is None
        assert truncation_problem(str(cut(p, p.stat().st_size // 2))) is None


def test_never_raises(tmp_path):
    rng = np.random.default_rng(7)
    assert truncation_problem(str(tmp_path / "missing.wav")) is None
    (tmp_path / "empty.wav").write_bytes(b"")
    assert truncation_problem(str(tmp_path / "empty.wav")) is None
    assert truncation_problem(str(tmp_path)) is None  # a folder
    files = [write(tmp_path / f"a.{e}", noise(2, 10_000), bit_depth=16) for e in ("wav", "flac", "aiff")]
    for p in files:
        good = p.read_bytes()
        for k in range(150):
            b = bytearray(good[:int(rng.integers(1, len(good)))] if k % 3 == 0 else good)
            for _ in range(int(rng.integers(1, 6))):  # damage the header or the last bytes
                i = int(rng.integers(0, min(len(b), 80))) if rng.random() < 0.7 else int(rng.integers(0, len(b)))
                b[i] = int(rng.integers(0, 256))
            q = tmp_path / f"fuzz{p.suffix}"
            q.write_bytes(bytes(b))
            r = truncation_problem(str(q))
            assert r is None or r.startswith("truncated: ")
    for magic in (b"fLaC", b"RIFF\xff\xff\xff\xffWAVE", b"FORM\0\0\0\0AIFF", b"ID3\x04\0\0\x7f\x7f\x7f\x7f"):
        (tmp_path / "junk.bin").write_bytes(magic + rng.integers(0, 256, 5000, dtype=np.uint8).tobytes())
        r = truncation_problem(str(tmp_path / "junk.bin"))
        assert r is None or r.startswith("truncated: ")


def test_reads_only_the_header_and_the_tail(tmp_path, monkeypatch):
    """Cheap whatever the length: a one-minute FLAC (about 11 MB) is
    checked, whole and cut, reading well under 200 KiB."""
    import builtins


    p = tmp_path / "long.flac"
    with AudioFile(str(p), "w", SR, 2, bit_depth=16) as f:
        for seed in range(6):
            f.write(noise(2, 10 * SR, seed))
    read = []

    class Counting:
        def __init__(self, f):
            self.f = f

        def read(self, n=-1):
            b = self.f.read(n)
            read.append(len(b))
            return b

        def __getattr__(self, name):
            return getattr(self.f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    monkeypatch.setattr(audiocheck, "open", lambda *a, **k: Counting(builtins.open(*a, **k)), raising=False)
    assert truncation_problem(str(p)) is None
    assert lengths(truncation_problem(str(cut(p, -10))))[1] == 60 * SR // FLAC_BLOCK * FLAC_BLOCK
    assert p.stat().st_size > 5_000_000 and 0 < sum(read) < 2 * 200 * 1024


# --------------------------------------------------------------------------
# in processing


def test_process_file_reports_a_cut_file_and_writes_nothing(tmp_path):
    p = write(tmp_path / "a.flac", noise(), bit_depth=16)
    q = cut(p, -3)
    r = process_file(Chain.default(), str(q), str(tmp_path / "o.flac"))
    assert not r.ok and r.error.startswith("truncated: the header declares 48000 frames, the file holds 45056")
    assert not (tmp_path / "o.flac").exists()
    assert [f for f in os.listdir(tmp_path) if ".qc-tmp-" in f] == []


def test_quietcast_process_folder_with_a_truncated_file(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    write(src / "one.wav", noise(1, SR, 1), bit_depth=16)
    write(src / "three.flac", noise(2, SR, 3), bit_depth=24)
    whole = write(tmp_path / "two.wav", noise(2, SR, 2), bit_depth=24)
    (src / "two.wav").write_bytes(whole.read_bytes()[:whole.stat().st_size // 2])
    out = tmp_path / "out"
    exe = quietcast_exe()
    cmd = [exe] if os.path.exists(exe) else [sys.executable, "-m", "quietcast.daemon"]
    r = subprocess.run(cmd + ["process", "default", str(src), "-o", str(out), "--json"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 1, r.stderr
    doc = json.loads(r.stdout)
    assert doc["failed"] == 1
    (bad,) = [f for f in doc["files"] if not f["ok"]]
    assert bad["src"].endswith("two.wav")
    assert re.fullmatch(r"truncated: the header declares 48000 frames, the file holds \d+ "
                        r"\(the last 0\.50 s are missing\)", bad["error"]), bad["error"]
    assert f"FAILED: {src / 'two.wav'}: truncated: the header declares 48000 frames" in r.stderr
    assert "Traceback" not in r.stderr
    assert sorted(os.listdir(out)) == ["one.wav", "three.flac"]  # nothing for two.wav, no temporary file
    with AudioFile(str(out / "three.flac")) as f:
        assert f.frames == SR and f.num_channels == 2


def test_parallel_jobs_report_it_too(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    write(src / "a.wav", noise(1, SR), bit_depth=16)
    p = write(tmp_path / "b.aiff", noise(1, SR), bit_depth=16)
    (src / "b.aiff").write_bytes(p.read_bytes()[:-1000])
    s = process_files(Chain.default(), plan_jobs([str(src)], str(tmp_path / "out")), workers=2)
    assert [r.ok for r in s.results] == [True, False]
    assert s.results[1].error.startswith("truncated: ")
    assert sorted(os.listdir(tmp_path / "out")) == ["a.wav"]
