"""The source's metadata in the output: a WAV's BWF ``bext`` (TimeReference
first of all: the sync with picture), ``iXML``, ``cue `` points and their
``LIST adtl`` labels, ``LIST INFO`` tags and WAVE_FORMAT_EXTENSIBLE channel
mask are carried into a WAV output; what no longer fits another channel
count is dropped with a warning, and a malformed chunk list is a warning,
not a failure. The sources are real files built here chunk by chunk
(:func:`riff`); the outputs are read back with this file's own chunk
parser and with soundfile (libsndfile), which must still take them."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from quietcast.bridge import Chain
from quietcast.bridge.offline import process_file, quietcast_version

sf = pytest.importorskip("soundfile")

SR = 48_000
KSDATAFORMAT_PCM = bytes.fromhex("0100000000001000800000aa00389b71")


# --------------------------------------------------------------------------
# a small RIFF writer and reader, independent of quietcast's


def chunk(cid: bytes, body: bytes) -> bytes:
    return cid + struct.pack("<I", len(body)) + body + (b"\0" if len(body) & 1 else b"")


def fmt_pcm16(channels: int, rate: int = SR, mask: int | None = None) -> bytes:
    align = 2 * channels
    base = struct.pack("<HHIIHH", 1 if mask is None else 0xFFFE, channels, rate, rate * align, align, 16)
    if mask is None:
        return base
    return base + struct.pack("<HHI", 22, 16, mask) + KSDATAFORMAT_PCM


def samples(frames: int, channels: int, seed: int = 0) -> np.ndarray:
    """int16 ``[frames, channels]``: noise at -20 dBFS."""
    x = np.random.default_rng(seed).standard_normal((frames, channels)) * 3000
    return np.clip(np.rint(x), -32768, 32767).astype("<i2")


def riff(path, x: np.ndarray, *, before=(), after=(), mask=None, rate=SR, rf64=False) -> None:
    """A 16-bit WAV of ``x`` with the chunks ``before`` (between ``fmt`` and
    ``data``) and ``after`` (after ``data``): ``(id, body)`` pairs, or raw
    bytes written as they are."""
    def raw(items):
        return b"".join(c if isinstance(c, bytes) else chunk(*c) for c in items)

    data = x.tobytes()
    body = chunk(b"fmt ", fmt_pcm16(x.shape[1], rate, mask)) + raw(before) + chunk(b"data", data) + raw(after)
    if not rf64:
        (path).write_bytes(b"RIFF" + struct.pack("<I", 4 + len(body)) + b"WAVE" + body)
        return
    ds64 = chunk(b"ds64", struct.pack("<QQQI", 4 + 36 + len(body), len(data), x.shape[0], 0))
    body = body.replace(b"data" + struct.pack("<I", len(data)), b"data" + b"\xff\xff\xff\xff", 1)
    path.write_bytes(b"RF64\xff\xff\xff\xffWAVE" + ds64 + body)


def chunks_of(path) -> tuple[bytes, list[tuple[bytes, bytes]]]:
    """``(RIFF|RF64, [(id, body), ...])`` of a WAV file, checking every size
    (the RIFF size, or ds64's, included)."""
    b = path.read_bytes()
    kind = b[:4]
    assert kind in (b"RIFF", b"RF64") and b[8:12] == b"WAVE"
    out, pos, ds64 = [], 12, None
    while pos < len(b):
        cid, n = b[pos:pos + 4], struct.unpack("<I", b[pos + 4:pos + 8])[0]
        if cid == b"ds64":
            ds64 = struct.unpack("<QQ", b[pos + 8:pos + 24])
        if kind == b"RF64" and n == 0xFFFFFFFF:
            assert cid == b"data"
            n = ds64[1]
        assert pos + 8 + n <= len(b), f"{cid!r} runs past the end"
        out.append((cid, b[pos + 8:pos + 8 + n]))
        pos += 8 + n + (n & 1)
    assert pos == len(b)
    if kind == b"RIFF":
        assert struct.unpack("<I", b[4:8])[0] == len(b) - 8
    else:
        assert ds64[0] == len(b) - 8
    return kind, out


def body(path, cid: bytes, list_type: bytes | None = None) -> bytes | None:
    for c, b in chunks_of(path)[1]:
        if c == cid and (list_type is None or b[:4] == list_type):
            return b
    return None


def mask_of(path) -> int | None:
    fmt = body(path, b"fmt ")
    return struct.unpack("<I", fmt[20:24])[0] if struct.unpack("<H", fmt[:2])[0] == 0xFFFE else None


def bext(description=b"Scene 12 take 3", time_ref=0, history=b"A=PCM,F=48000,W=16,M=stereo,T=Sound Devices 833\r\n",
         umid=bytes(range(64))) -> bytes:
    b = (description.ljust(256, b"\0") + b"Sound Devices".ljust(32, b"\0") + b"USSDVABC1234".ljust(32, b"\0")
         + b"2024-05-17" + b"14:03:22" + struct.pack("<QH", time_ref, 2) + umid
         + struct.pack("<hhhhh", -2300, 750, -300, -1200, -1800) + bytes(180))
    assert len(b) == 602
    return b + history


IXML = (b'<?xml version="1.0" encoding="UTF-8"?>\r\n<BWFXML>\r\n  <IXML_VERSION>2.10</IXML_VERSION>\r\n'
        b'  <PROJECT>Night Shoot</PROJECT>\r\n  <SCENE>12</SCENE>\r\n  <TAKE>3</TAKE>\r\n  <TAPE>240517</TAPE>\r\n'
        b'  <SPEED>\r\n    <FILE_SAMPLE_RATE>48000</FILE_SAMPLE_RATE>\r\n    <TIMECODE_RATE>25/1</TIMECODE_RATE>\r\n'
        b'  </SPEED>\r\n  <TRACK_LIST>\r\n    <TRACK_COUNT>2</TRACK_COUNT>\r\n'
        b'    <TRACK><CHANNEL_INDEX>1</CHANNEL_INDEX><NAME>Boom</NAME></TRACK>\r\n'
        b'    <TRACK><CHANNEL_INDEX>2</CHANNEL_INDEX><NAME>Lav</NAME></TRACK>\r\n'
        b'  </TRACK_LIST>\r\n</BWFXML>\r\n')
TIME_REF = (14 * 3600 + 3 * 60 + 22) * SR  # 14:03:22 at 48 kHz
BIG_TIME_REF = 5_000_000_000  # past 2**32: TimeReferenceHigh in use


def cue(points: list[tuple[int, int]]) -> bytes:
    """``(id, sample position)`` points in the ``data`` chunk."""
    return struct.pack("<I", len(points)) + b"".join(struct.pack("<II4sIII", i, p, b"data", 0, 0, p)
                                                      for i, p in points)


def adtl() -> bytes:
    return b"adtl" + chunk(b"labl", struct.pack("<I", 1) + b"clap\0") + chunk(b"note", struct.pack("<I", 2)
                                                                               + b"plane overhead\0") \
        + chunk(b"ltxt", struct.pack("<II4sHHHH", 2, 9_600, b"rgn ", 0, 0, 0, 0))


def info() -> bytes:
    return b"INFO" + chunk(b"INAM", b"Night Shoot sc12 t3\0") + chunk(b"IART", b"Production sound\0") \
        + chunk(b"ICMT", b"boom on 1, lav on 2\0") + chunk(b"ICRD", b"2024-05-17\0")


def dry(src, dst, **kw):
    r = process_file(Chain.load("dry"), str(src), str(dst), **kw)
    assert r.ok, r.error
    return r


def same_audio(src, dst):
    a, b = sf.read(str(src), dtype="int16")[0], sf.read(str(dst), dtype="int16")[0]
    np.testing.assert_array_equal(a, b)


# --------------------------------------------------------------------------


def test_bext_and_its_time_reference_survive(tmp_path):
    x = samples(SR, 2)
    riff(tmp_path / "in.wav", x, before=[(b"bext", bext(time_ref=TIME_REF))])
    r = dry(tmp_path / "in.wav", tmp_path / "out.wav")
    assert r.warnings == [] and r.format == "WAV PCM_16"
    kind, got = chunks_of(tmp_path / "out.wav")
    assert kind == b"RIFF" and [c for c, _ in got] == [b"fmt ", b"bext", b"data"]  # before data
    b = body(tmp_path / "out.wav", b"bext")
    src = bext(time_ref=TIME_REF)
    assert b[:602] == src[:602]  # description ... UMID, loudness: unchanged
    assert struct.unpack("<Q", b[338:346])[0] == TIME_REF
    history = b[602:].rstrip(b"\0").split(b"\r\n")
    assert history[0] == b"A=PCM,F=48000,W=16,M=stereo,T=Sound Devices 833"
    assert history[1] == f"A=PCM,F=48000,W=16,M=stereo,T=quietcast {quietcast_version()} chain dry".encode()
    assert history[2:] == [b""]
    same_audio(tmp_path / "in.wav", tmp_path / "out.wav")
    assert sf.info(str(tmp_path / "out.wav")).frames == SR


def test_a_chain_that_changes_the_audio_unsets_the_source_loudness(tmp_path):
    """A version 2 bext's loudness fields describe the source's audio: a
    chain that changes it (here 6 dB of gain) sets them to 0x7FFF, EBU
    Tech 3285's "not set", with a warning; the rest of bext is carried
    as it was. ``dry`` (no stages) keeps them (the test above)."""
    riff(tmp_path / "in.wav", samples(SR // 2, 2), before=[(b"bext", bext(time_ref=TIME_REF))])
    chain = Chain([{"name": "g", "type": "gain", "gain_db": -6.0}])
    r = process_file(chain, str(tmp_path / "in.wav"), str(tmp_path / "out.wav"))
    assert r.ok, r.error
    assert r.warnings == ["metadata: bext's loudness values were measured on the source, not on this output: "
                          "set to 0x7fff (not set), as EBU Tech 3285 asks"]
    b, src = body(tmp_path / "out.wav", b"bext"), bext(time_ref=TIME_REF)
    assert struct.unpack("<5h", b[412:422]) == (0x7FFF,) * 5
    assert b[:412] == src[:412] and b[422:602] == src[422:602]
    # a bypassed stage changes nothing: the values hold
    bypassed = Chain([{"name": "g", "type": "gain", "gain_db": -6.0, "bypass": True}])
    r = process_file(bypassed, str(tmp_path / "in.wav"), str(tmp_path / "out2.wav"))
    assert r.ok and r.warnings == [] and body(tmp_path / "out2.wav", b"bext")[:602] == src[:602]


def test_ixml_survives_byte_for_byte(tmp_path):
    riff(tmp_path / "in.wav", samples(SR // 2, 2), before=[(b"bext", bext())], after=[(b"iXML", IXML)])
    r = dry(tmp_path / "in.wav", tmp_path / "out.wav")
    assert r.warnings == []
    assert body(tmp_path / "out.wav", b"iXML") == IXML
    same_audio(tmp_path / "in.wav", tmp_path / "out.wav")


def test_cue_points_and_their_labels_survive(tmp_path):
    c, a = cue([(1, 12_000), (2, 30_000)]), adtl()
    riff(tmp_path / "in.wav", samples(SR, 1), after=[(b"cue ", c), (b"LIST", a)])
    dry(tmp_path / "in.wav", tmp_path / "out.wav")
    assert body(tmp_path / "out.wav", b"cue ") == c
    assert body(tmp_path / "out.wav", b"LIST", b"adtl") == a
    same_audio(tmp_path / "in.wav", tmp_path / "out.wav")


def test_list_info_survives(tmp_path):
    i = info()
    riff(tmp_path / "in.wav", samples(SR // 4, 2), before=[(b"LIST", i)])
    dry(tmp_path / "in.wav", tmp_path / "out.wav")
    assert body(tmp_path / "out.wav", b"LIST", b"INFO") == i
    with sf.SoundFile(str(tmp_path / "out.wav")) as f:
        assert f.title == "Night Shoot sc12 t3" and f.artist == "Production sound" and f.date == "2024-05-17"


def test_the_channel_mask_of_6_channels_survives(tmp_path):
    """5.1 with side surrounds (0x60F), not libsndfile's default 0x3F."""
    riff(tmp_path / "in.wav", samples(SR // 4, 6), mask=0x60F)
    r = dry(tmp_path / "in.wav", tmp_path / "out.wav")
    assert r.warnings == [] and r.format == "WAVEX PCM_16"
    assert mask_of(tmp_path / "out.wav") == 0x60F
    same_audio(tmp_path / "in.wav", tmp_path / "out.wav")


def test_a_downmix_drops_the_mask_and_the_track_list_and_says_so(tmp_path):
    riff(tmp_path / "in.wav", samples(SR // 4, 2), mask=0x600, before=[(b"bext", bext(time_ref=TIME_REF))],
         after=[(b"iXML", IXML)])
    r = dry(tmp_path / "in.wav", tmp_path / "out.wav", channels=1)
    assert sf.info(str(tmp_path / "out.wav")).channels == 1
    assert mask_of(tmp_path / "out.wav") == 0x4  # libsndfile's for mono, not the source's side pair
    assert any("channel mask (0x600" in w and "2 channel(s) became 1" in w for w in r.warnings), r.warnings
    assert any("TRACK_LIST is removed" in w for w in r.warnings), r.warnings
    ixml = body(tmp_path / "out.wav", b"iXML")
    assert b"TRACK_LIST" not in ixml and b"<SCENE>12</SCENE>" in ixml
    assert ixml == IXML[:IXML.index(b"  <TRACK_LIST>")] + IXML[IXML.index(b"</TRACK_LIST>\r\n") + 15:]
    b = body(tmp_path / "out.wav", b"bext")
    assert struct.unpack("<Q", b[338:346])[0] == TIME_REF and b",M=mono,T=quietcast" in b[602:]


def test_a_malformed_bext_is_a_warning_and_the_file_is_written(tmp_path):
    """A bext after the data whose size runs past the end of the file (a
    careless tool appended it): libsndfile and pedalboard read the audio,
    so the output is written, without the metadata, and a warning says
    why."""
    broken = b"bext" + struct.pack("<I", 5_000) + bext()[:300]
    riff(tmp_path / "in.wav", samples(SR // 4, 2), before=[(b"LIST", info())], after=[broken])
    r = dry(tmp_path / "in.wav", tmp_path / "out.wav")
    assert r.format == "WAV PCM_16"
    assert len(r.warnings) == 1 and "metadata not carried" in r.warnings[0] and "'bext' chunk" in r.warnings[0] \
        and "past the end of the file" in r.warnings[0], r.warnings
    assert [c for c, _ in chunks_of(tmp_path / "out.wav")[1]] == [b"fmt ", b"data"]
    same_audio(tmp_path / "in.wav", tmp_path / "out.wav")


def test_a_bext_too_short_is_left_out_and_the_rest_is_carried(tmp_path):
    riff(tmp_path / "in.wav", samples(SR // 4, 1), before=[(b"bext", bext()[:400]), (b"iXML", IXML)])
    r = dry(tmp_path / "in.wav", tmp_path / "out.wav")
    assert r.warnings == ["metadata: its bext chunk is 400 bytes, shorter than the 602 of its fixed fields; "
                          "that chunk is left out"]
    assert body(tmp_path / "out.wav", b"bext") is None and body(tmp_path / "out.wav", b"iXML") == IXML


def test_rf64_keeps_its_metadata_and_a_time_reference_past_32_bits(tmp_path):
    """(An odd-sized chunk goes after ``data`` in RF64: libsndfile 1.2 reads
    no RF64 file with one before it. The source has its odd iXML after.)"""
    c, ixml = cue([(1, 100)]), IXML + b"\n"
    riff(tmp_path / "in.wav", samples(SR // 4, 2), rf64=True, before=[(b"bext", bext(time_ref=BIG_TIME_REF) + b"\0")],
         after=[(b"cue ", c), (b"iXML", ixml)])
    assert sf.info(str(tmp_path / "in.wav")).format == "RF64"
    r = dry(tmp_path / "in.wav", tmp_path / "out.wav")
    assert r.format == "RF64 PCM_16" and r.warnings == []
    kind, got = chunks_of(tmp_path / "out.wav")
    assert kind == b"RF64" and [c for c, _ in got][-4:] == [b"bext", b"cue ", b"data", b"iXML"]
    assert body(tmp_path / "out.wav", b"iXML") == ixml
    assert struct.unpack("<Q", body(tmp_path / "out.wav", b"bext")[338:346])[0] == BIG_TIME_REF
    assert body(tmp_path / "out.wav", b"cue ") == c
    same_audio(tmp_path / "in.wav", tmp_path / "out.wav")


def test_resampled_positions_follow_the_new_rate(tmp_path):
    ixml = IXML.replace(b"</SPEED>", b"</SPEED>\r\n  <BEXT><BWF_TIME_REFERENCE_LOW>%d</BWF_TIME_REFERENCE_LOW>"
                        b"<BWF_TIME_REFERENCE_HIGH>0</BWF_TIME_REFERENCE_HIGH></BEXT>" % TIME_REF)
    riff(tmp_path / "in.wav", samples(SR // 2, 2), before=[(b"bext", bext(time_ref=TIME_REF))],
         after=[(b"cue ", cue([(1, 12_000)])), (b"iXML", ixml)])
    r = dry(tmp_path / "in.wav", tmp_path / "out.wav", sample_rate=96_000)
    assert r.warnings == []
    out = tmp_path / "out.wav"
    assert struct.unpack("<Q", body(out, b"bext")[338:346])[0] == 2 * TIME_REF
    assert b"A=PCM,F=96000,W=16,M=stereo" in body(out, b"bext")[602:]
    assert struct.unpack("<II", body(out, b"cue ")[8:12] + body(out, b"cue ")[24:28]) == (24_000, 24_000)
    ix = body(out, b"iXML")
    assert b"<FILE_SAMPLE_RATE>96000</FILE_SAMPLE_RATE>" in ix
    lo, hi = (2 * TIME_REF) & 0xFFFFFFFF, (2 * TIME_REF) >> 32  # (past 2**32 at 96 kHz)
    assert hi == 1 and b"<BWF_TIME_REFERENCE_LOW>%d</BWF_TIME_REFERENCE_LOW>" % lo in ix
    assert b"<BWF_TIME_REFERENCE_HIGH>1</BWF_TIME_REFERENCE_HIGH>" in ix


def test_flac_gets_the_tags_and_says_what_it_cannot_hold(tmp_path):
    riff(tmp_path / "in.wav", samples(SR // 4, 2), before=[(b"bext", bext()), (b"LIST", info())],
         after=[(b"iXML", IXML)])
    r = dry(tmp_path / "in.wav", tmp_path / "out.flac")
    assert r.warnings == ["metadata not carried: bext, iXML (FLAC has nowhere to hold them; a .wav output keeps "
                          "them)"], r.warnings
    with sf.SoundFile(str(tmp_path / "out.flac")) as f:
        assert f.title == "Night Shoot sc12 t3" and f.comment == "boom on 1, lav on 2" and f.date == "2024-05-17"


def test_a_flac_source_gives_its_tags_to_a_wav(tmp_path):
    with sf.SoundFile(str(tmp_path / "in.flac"), "w", SR, 1, "PCM_16", format="FLAC") as f:
        f.title, f.artist = "Interview", "Desk B"
        f.write(samples(SR // 4, 1))
    r = dry(tmp_path / "in.flac", tmp_path / "out.wav")
    assert r.warnings == []
    with sf.SoundFile(str(tmp_path / "out.wav")) as f:
        assert f.title == "Interview" and f.artist == "Desk B"
    assert body(tmp_path / "out.wav", b"LIST", b"INFO") is not None


def test_a_write_that_fails_while_the_chunks_go_in_leaves_nothing(tmp_path, monkeypatch):
    """The output is written twice (libsndfile's, then with the chunks):
    a full disk in the second write fails the file like any write error,
    with no temporary file left."""
    riff(tmp_path / "in.wav", samples(SR // 4, 1), before=[(b"bext", bext())])
    from quietcast.bridge import wavmeta

    def full(raw, out, *a):
        open(out, "wb").write(b"RIFF")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(wavmeta, "insert_chunks", full)
    r = process_file(Chain.load("dry"), str(tmp_path / "in.wav"), str(tmp_path / "out.wav"))
    assert not r.ok and "No space left on device" in r.error, r.error
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.wav"]


def test_aiff_gets_the_tags_it_holds_and_names_the_others(tmp_path):
    riff(tmp_path / "in.wav", samples(SR // 4, 1), before=[(b"LIST", info())])
    r = dry(tmp_path / "in.wav", tmp_path / "out.aiff")
    assert r.warnings == ["metadata not carried: the date tag(s) (AIFF holds title, artist, copyright, software "
                          "and comment)"], r.warnings
    with sf.SoundFile(str(tmp_path / "out.aiff")) as f:
        assert f.title == "Night Shoot sc12 t3" and f.artist == "Production sound"
        assert f.comment == "boom on 1, lav on 2"
