"""What an offline output is written as: the source's container and
subtype (libsndfile's names) wherever the output holds them, integer
samples rounded and clipped, and a warning where the subtype cannot be
kept. Real files (soundfile writes the inputs and reads the outputs) and
the real chains."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from quietcast.bridge import Chain
from quietcast.bridge.offline import process_file

sf = pytest.importorskip("soundfile")


def noise(n, ch, seed=0, level=0.2):
    return np.clip(np.random.default_rng(seed).standard_normal((n, ch)) * level, -1, 1)


def wav_tag(path) -> int:
    """The format tag of a WAV file's ``fmt `` chunk: 1 PCM, 3 float, 6
    A-law, 7 mu-law, 0xFFFE WAVE_FORMAT_EXTENSIBLE."""
    b = open(path, "rb").read(4096)
    i = b.index(b"fmt ")
    return struct.unpack("<H", b[i + 8:i + 10])[0]


# (container, subtype, extension): each comes out as it went in through ``dry``, sample for sample
KEPT = [("WAV", "PCM_U8", ".wav"), ("WAV", "PCM_16", ".wav"), ("WAV", "PCM_24", ".wav"), ("WAV", "PCM_32", ".wav"),
        ("WAV", "FLOAT", ".wav"), ("WAV", "DOUBLE", ".wav"), ("WAV", "ALAW", ".wav"), ("WAV", "ULAW", ".wav"),
        ("WAVEX", "PCM_24", ".wav"), ("RF64", "PCM_16", ".wav"), ("AIFF", "PCM_S8", ".aiff"),
        ("AIFF", "PCM_32", ".aiff"), ("AIFF", "FLOAT", ".aiff"), ("FLAC", "PCM_S8", ".flac"),
        ("FLAC", "PCM_24", ".flac")]


@pytest.mark.parametrize("major,subtype,ext", KEPT)
def test_the_container_and_subtype_are_kept_bit_for_bit(tmp_path, major, subtype, ext):
    """A 32-bit PCM WAV came out as 32-bit float, A-law and mu-law as float,
    a 64-bit float WAV as 32-bit float, 32-bit and float AIFF as 24-bit, an
    8-bit FLAC as 16-bit, and WAVE_FORMAT_EXTENSIBLE and RF64 as plain WAV
    (pedalboard's writer has none of these). Now each keeps its container
    and subtype, and ``dry`` gives back every sample. 32-bit PCM passes
    through the chain's 32-bit float: 24 significant bits, so the source
    here holds 24-bit audio (what a 32-bit file usually carries)."""
    x = noise(9_000, 2, 1)
    if subtype == "PCM_32":  # 24-bit values in 32 bits, full scale both ways included
        k = np.rint(x * (2 ** 23 - 1)).astype(np.int64)
        k[:2, 0] = [-(2 ** 23), 2 ** 23 - 1]
        x = (k << 8).astype(np.int32)
    if subtype == "DOUBLE":  # what the chain's 32-bit float holds
        x = x.astype(np.float32).astype(np.float64)
    src, dst = tmp_path / f"in{ext}", tmp_path / f"out{ext}"
    sf.write(str(src), x, 44_100, subtype=subtype, format=major)
    r = process_file(Chain.load("dry"), str(src), str(dst))
    assert r.ok, r.error
    info = sf.info(str(dst))
    assert (info.format, info.subtype) == (major, subtype)
    assert r.format == f"{major} {subtype}" and r.warnings == []
    dtype = "float64" if subtype in ("FLOAT", "DOUBLE") else "int32"
    np.testing.assert_array_equal(sf.read(str(dst), dtype=dtype)[0], sf.read(str(src), dtype=dtype)[0])


def test_32_bit_pcm_and_a_law_stay_so_through_a_real_chain(tmp_path):
    """The default chain (denoise, compressor, limiter) on a 32-bit PCM and
    an A-law WAV: the outputs are 32-bit PCM and A-law WAV, as long as the
    inputs, not float."""
    t = np.arange(48_000) / 48_000
    x = (0.3 * np.sin(2 * np.pi * 220 * t))[:, None] + noise(48_000, 1, 2, 0.02)
    for subtype in ("PCM_32", "ALAW", "ULAW"):
        src, dst = tmp_path / f"{subtype}.wav", tmp_path / f"{subtype}_out.wav"
        sf.write(str(src), x, 48_000, subtype=subtype)
        r = process_file(Chain.default(), str(src), str(dst))
        assert r.ok, r.error
        info = sf.info(str(dst))
        assert (info.format, info.subtype, info.frames) == ("WAV", subtype, 48_000)
        assert wav_tag(dst) == {"PCM_32": 1, "ALAW": 6, "ULAW": 7}[subtype]
        y = sf.read(str(dst))[0]
        assert 0.05 < np.abs(y).max() <= 1.0


def test_a_plain_wav_of_6_channels_stays_plain(tmp_path):
    """pedalboard (JUCE) wrote every WAV of more than 2 channels as
    WAVE_FORMAT_EXTENSIBLE, whatever the source was; libsndfile writes
    either, so the source's is kept: plain (format tag 1) stays plain,
    extensible (0xFFFE, its speaker mask 0x3F for 5.1) stays extensible."""
    x = noise(4_800, 6, 3)
    for major, tag in (("WAV", 1), ("WAVEX", 0xFFFE)):
        src, dst = tmp_path / f"{major}.wav", tmp_path / f"{major}_out.wav"
        sf.write(str(src), x, 48_000, subtype="PCM_24", format=major)
        assert wav_tag(src) == tag
        r = process_file(Chain.load("dry"), str(src), str(dst))
        assert r.ok, r.error
        assert wav_tag(dst) == tag and sf.info(str(dst)).format == major and sf.info(str(dst)).channels == 6
        np.testing.assert_array_equal(sf.read(str(dst), dtype="int32")[0], sf.read(str(src), dtype="int32")[0])


@pytest.mark.parametrize("subtype,ext,channels,written,why", [
    ("PCM_32", ".flac", None, "FLAC PCM_24", "FLAC cannot hold PCM_32"),
    ("FLOAT", ".flac", None, "FLAC PCM_24", "FLAC cannot hold FLOAT"),
    ("ALAW", ".flac", None, "FLAC PCM_16", "FLAC cannot hold ALAW"),
    ("IMA_ADPCM", ".wav", 6, "WAV PCM_16", "libsndfile writes no IMA_ADPCM WAV with 6 channel(s) at 8000 Hz"),
])
def test_a_subtype_that_cannot_be_kept_is_said(tmp_path, subtype, ext, channels, written, why):
    """Where the output cannot hold the source's subtype (another container,
    or a codec that libsndfile writes in mono and stereo only, here
    upmixed to 6 channels), the nearest PCM is written (24 bits for wider
    sources, else 16) and the file's result says so."""
    src, dst = tmp_path / "in.wav", tmp_path / f"out{ext}"
    sf.write(str(src), noise(8_080, 1, 4), 8_000, subtype=subtype)
    r = process_file(Chain.load("dry"), str(src), str(dst), channels=channels)
    assert r.ok, r.error
    assert r.format == written
    assert r.warnings == [f"written as {written}: {why} (the source's subtype)"]
    info = sf.info(str(dst))
    assert f"{info.format} {info.subtype}" == written


def test_a_lossy_source_is_written_whole_without_a_warning(tmp_path):
    """An MP3 has no subtype a WAV can hold; its decoded audio is written
    as 32-bit float (FLAC: 24-bit PCM), as before, and that is no loss:
    the result names the format, and no warning."""
    src = tmp_path / "in.mp3"
    sf.write(str(src), noise(44_100, 1, 5, 0.1), 44_100, format="MP3")
    for ext, written in ((".wav", "WAV FLOAT"), (".flac", "FLAC PCM_24"), (".mp3", "MP3 MPEG_LAYER_III")):
        r = process_file(Chain.load("dry"), str(src), str(tmp_path / f"out{ext}"))
        assert r.ok, r.error
        assert r.format == written and r.warnings == []


def test_integers_are_clipped_and_float_is_not(tmp_path):
    """+12 dB on a source near full scale: integer outputs (16-bit PCM,
    A-law) clip at the format's limits, never wrap around; a float output
    keeps the values above full scale."""
    x = np.tile([[0.9], [-0.9], [0.1]], (1000, 1))
    chain = Chain([{"name": "g", "type": "gain", "gain_db": 12.0}])
    for subtype in ("PCM_16", "ALAW", "ULAW", "FLOAT"):
        src, dst = tmp_path / f"{subtype}.wav", tmp_path / f"{subtype}_out.wav"
        sf.write(str(src), x, 48_000, subtype=subtype)
        r = process_file(chain, str(src), str(dst))
        assert r.ok, r.error
        y = sf.read(str(dst), dtype="float64", always_2d=True)[0][:, 0]
        if subtype == "FLOAT":
            assert y.max() > 3.5 and y.min() < -3.5
        else:
            assert y[0::3].min() >= 32_000 / 32_768 and y[1::3].max() <= -32_000 / 32_768


def test_a_channel_count_the_output_cannot_hold_is_a_clear_error(tmp_path):
    """FLAC holds at most 8 channels: a 9-channel source to FLAC fails with
    the output's name and the range (it said "Error opening
    '.../.out.flac.qc-tmp-...': Format not recognised."), no file left."""
    src = tmp_path / "nine.wav"
    sf.write(str(src), noise(4_800, 9, 6), 48_000, subtype="PCM_16")
    r = process_file(Chain.load("dry"), str(src), str(tmp_path / "out.flac"))
    assert not r.ok
    assert r.error == (f"{tmp_path / 'out.flac'}: cannot be written: FLAC holds 1 to 8 channels, not 9; choose "
                       "another --format, or --channels 1; output not written")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["nine.wav"]
