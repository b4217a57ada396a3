"""Is an audio file cut short? A cheap check from the header and the tail.

pedalboard's decoders trust the header: a WAV, AIFF or FLAC file that was
cut mid-data (a copy or download that stopped, a full disk) opens without
an error, ``frames`` says the header's length, and ``read()`` returns
zeros where the audio is missing. :func:`truncation_problem` catches that
before such a file is processed. It reads the header and the last 64 KiB
or so at most (FLAC: the last frames), never decodes, and never raises: it
returns ``None`` when the file is whole *or when it cannot tell*, and a
problem string only when the file is clearly cut.

What is checked, per format (recognised by its first bytes, not its name):

WAV (RIFF, RIFX, RF64/BW64; PCM, float, A-/mu-law, WAVE_FORMAT_EXTENSIBLE)
    The chunks are walked to ``data``; the file is cut when that chunk's
    declared size is larger than the bytes that follow it. Chunks after
    ``data`` (LIST, id3 ...) and a missing pad byte after an odd-sized
    ``data`` are no problem. A RIFF ``data`` size of 0 or 0xFFFFFFFF (a
    streamed or never-finished recording: "unknown") with audio after it
    is reported too, though not as truncation: pedalboard reads 0 frames
    from the first and about 6 hours (zero-padded) from the second, so
    the header must be rewritten first (the message says how).
AIFF / AIFF-C (uncompressed, ``sowt``, ``fl32``/``fl64``, ``in24``/``in32``)
    ``COMM``'s frame count against the bytes ``SSND`` holds.
FLAC (native, optionally after an ID3v2 tag)
    STREAMINFO's total sample count (0, unknown, is not checked) against
    the end of the last frame in the file. Frame headers are found by
    their sync code in the last 64 KiB (more when STREAMINFO's maximum
    frame size says frames are larger), parsed in full and kept only when
    their CRC-8 is right and they agree with STREAMINFO; of several, the
    last that continues an earlier one (its first sample is where that one
    ended) is taken, so a false sync inside audio data does not count. A
    frame counts as present only when it is whole: its CRC-16 checks out
    where its subframes end (walked, not decoded: the Rice codes are
    skipped), or at the end of the file or an ID3v1/APE tag there; a frame
    cut in the middle does not, which is what libFLAC does with it too.
    Zero padding or junk after a whole last frame is no problem.
Anything else (mp3, Ogg, ...)
    Not checked: ``None``. (pedalboard pads a cut MP3 that has a Xing/Info
    header with zeros too, and ends a cut Ogg early without a word;
    neither is detected here.)
"""

from __future__ import annotations

import os
import struct
from typing import NamedTuple

from .wavmeta import walk_chunks

__all__ = ["truncation_problem", "mp3_gapless", "MP3_DECODER_DELAY", "flac_signature", "FlacCheck", "pcm_ints"]

#: how far back from the end a FLAC frame header is looked for, at least
FLAC_TAIL = 64 * 1024
_MAX_CHUNKS = 10_000


def truncation_problem(path: str) -> str | None:
    """``"truncated: ..."`` naming the declared and present lengths when the
    audio file at ``path`` is clearly cut short, else ``None`` (whole, not a
    format checked, or not sure). Never raises."""
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            head = f.read(12)
            if len(head) < 12:
                return None
            if head[:4] in (b"RIFF", b"RIFX", b"RF64", b"BW64") and head[8:12] == b"WAVE":
                return _wav(f, size, head[:4])
            if head[:4] == b"FORM" and head[8:12] in (b"AIFF", b"AIFC"):
                return _aiff(f, size, head[8:12] == b"AIFC")
            start = _after_id3v2(f)  # an ID3v2 tag before the FLAC stream
            if start:
                f.seek(start)
                head = f.read(4)
            if head[:4] == b"fLaC":
                return _flac(f, size, start)
            return None
    except Exception:  # unreadable or malformed in a way not foreseen: not sure, so no verdict
        return None


def _message(declared: int, present: int, rate: float) -> str:
    missing = (declared - present) / rate if rate > 0 else 0.0
    dur = f"{missing:.2f} s" if missing >= 0.01 else f"{missing * 1000:.2g} ms"
    return (f"truncated: the header declares {declared} frames, the file holds {present} "
            f"(the last {dur} are missing)")


# --------------------------------------------------------------------------
# WAV

_PCM_TAGS = {1, 3, 6, 7}  # PCM, IEEE float, A-law, mu-law: one frame = block_align bytes
_EXTENSIBLE = 0xFFFE


def _wav(f, size: int, kind: bytes) -> str | None:
    e = ">" if kind == b"RIFX" else "<"
    fmt = None  # (block_align, rate)
    for cid, pos, n in walk_chunks(f, size, kind, strict=False):
        if n is None:
            return None  # an RF64 size that ds64 does not give: the decoder says what is wrong
        if cid == b"fmt ":
            f.seek(pos)
            body = f.read(min(n, 40))
            if len(body) < 16:
                return None
            tag, _ch, rate, _bps, align = struct.unpack(e + "HHIIH", body[:14])
            if tag == _EXTENSIBLE and len(body) >= 26:
                tag = struct.unpack(e + "H", body[24:26])[0]  # the sub-format GUID's first two bytes
            if tag not in _PCM_TAGS or align == 0:
                return None  # compressed: frames are not block_align bytes
            fmt = (align, rate)
        elif cid == b"data":
            if fmt is None:
                return None  # no format before the data: the decoder says what is wrong
            align, rate = fmt
            if not n or n == 0xFFFFFFFF:  # size unknown: a streamed or never-finished recording
                present = max(0, size - pos) // align
                if not present:
                    return None
                return (f"the WAV header leaves the length unknown (data size {n:#x}, as a streamed or unfinished "
                        f"recording writes it); the file holds {present} frames ({present / rate:.2f} s), but the "
                        f"decoder would read {'none' if not n else 'hours of padding'}: rewrite the header first, "
                        f"e.g. `sox IN.wav OUT.wav`")
            declared, present = n // align, max(0, size - pos) // align
            return _message(declared, present, rate) if present < declared else None
    return None  # no data chunk, or the file is cut before it: the decoder says what is wrong


# --------------------------------------------------------------------------
# AIFF

#: AIFF-C compression types whose frames are channels x sample bytes (None:
#: from the sample size); anything else is not checked
_AIFC_PLAIN = {b"NONE": None, b"none": None, b"twos": None, b"sowt": None, b"raw ": None, b"in24": 3,
               b"42ni": 3, b"in32": 4, b"23ni": 4, b"fl32": 4, b"FL32": 4, b"fl64": 8, b"FL64": 8}


def _extended(b: bytes) -> float:
    """An 80-bit IEEE 754 extended float (AIFF's sample rate)."""
    exp, mant = struct.unpack(">HQ", b[:10])
    sign = -1.0 if exp & 0x8000 else 1.0
    exp &= 0x7FFF
    if exp == 0 and mant == 0:
        return 0.0
    return sign * mant * 2.0 ** (exp - 16383 - 63)


def _aiff(f, size: int, aifc: bool) -> str | None:
    comm = None  # (frames, frame_bytes, rate)
    ssnd = None  # offset of the first sample byte
    pos = 12
    cut = False  # the file ends inside a chunk (or a chunk header)
    for _ in range(_MAX_CHUNKS):
        f.seek(pos)
        hdr = f.read(8)
        if len(hdr) < 8:
            cut = len(hdr) > 0
            break
        cid, n = hdr[:4], struct.unpack(">I", hdr[4:])[0]
        if cid == b"COMM":
            body = f.read(min(n, 22))
            if len(body) < 18:
                return None
            ch, frames, bits = struct.unpack(">HIH", body[:8])
            width = (bits + 7) // 8
            if aifc:
                if len(body) < 22 or body[18:22] not in _AIFC_PLAIN:
                    return None
                width = _AIFC_PLAIN[body[18:22]] or width
            comm = (frames, ch * width, _extended(body[8:18]))
        elif cid == b"SSND":
            body = f.read(4)
            ssnd = pos + 16 + struct.unpack(">I", body)[0] if len(body) == 4 else size
        pos += 8 + n + (n & 1)
        if pos >= size:
            cut = pos > size + (n & 1)
            break
    if ssnd is None and cut:
        ssnd = size  # the file ends before the sound data starts
    if comm is None or ssnd is None or comm[1] == 0 or comm[0] == 0:
        return None
    frames, width, rate = comm
    present = max(0, size - ssnd) // width
    return _message(frames, present, rate) if present < frames else None


# --------------------------------------------------------------------------
# FLAC


def _crc8_table() -> list[int]:
    t = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = ((c << 1) ^ 0x07) & 0xFF if c & 0x80 else (c << 1) & 0xFF
        t.append(c)
    return t


def _crc16_table() -> list[int]:
    t = []
    for i in range(256):
        c = i << 8
        for _ in range(8):
            c = ((c << 1) ^ 0x8005) & 0xFFFF if c & 0x8000 else (c << 1) & 0xFFFF
        t.append(c)
    return t


_CRC8 = _crc8_table()
_CRC16 = _crc16_table()


def _crc8(b: bytes) -> int:
    c = 0
    for x in b:
        c = _CRC8[c ^ x]
    return c


def _syncsafe(b: bytes) -> int:
    return (b[0] & 0x7F) << 21 | (b[1] & 0x7F) << 14 | (b[2] & 0x7F) << 7 | (b[3] & 0x7F)


def _after_id3v2(f) -> int:
    """Where the audio stream starts: after an ID3v2 tag at the start of
    the file (and its footer), else 0."""
    f.seek(0)
    tag = f.read(10)
    if tag[:3] != b"ID3" or len(tag) < 10:
        return 0
    return 10 + _syncsafe(tag[6:10]) + (10 if tag[5] & 0x10 else 0)


_RATES = {1: 88_200, 2: 176_400, 3: 192_000, 4: 8_000, 5: 16_000, 6: 22_050, 7: 24_000, 8: 32_000,
          9: 44_100, 10: 48_000, 11: 96_000}
_BITS = {1: 8, 2: 12, 4: 16, 5: 20, 6: 24, 7: 32}


class _Info:
    def __init__(self, b: bytes):
        self.min_block, self.max_block = struct.unpack(">HH", b[:4])
        self.max_frame = int.from_bytes(b[7:10], "big")
        v = int.from_bytes(b[10:18], "big")
        self.rate = v >> 44
        self.channels = ((v >> 41) & 0x7) + 1
        self.bits = ((v >> 36) & 0x1F) + 1
        self.total = v & 0xFFFFFFFFF


class _Frame(NamedTuple):
    off: int  # where its header starts in the buffer
    start: int  # its first sample
    block: int  # its number of samples
    body: int  # where its first subframe starts in the buffer
    channel_code: int  # channel assignment: 0-7 independent, 8-10 stereo with a side channel
    bits: int  # bits per sample

    @property
    def end(self) -> int:
        return self.start + self.block


def _frame_header(buf: bytes, i: int, info: _Info) -> _Frame | None:
    """The valid frame header at ``buf[i]`` that agrees with STREAMINFO, or
    None."""
    if len(buf) - i < 6 or buf[i] != 0xFF or buf[i + 1] & 0xFE != 0xF8:
        return None
    variable = buf[i + 1] & 1
    bs_code, sr_code = buf[i + 2] >> 4, buf[i + 2] & 0xF
    ch_code, ss_code = buf[i + 3] >> 4, (buf[i + 3] >> 1) & 0x7
    if bs_code == 0 or sr_code == 15 or ch_code > 10 or ss_code == 3 or buf[i + 3] & 1:
        return None
    channels = 2 if ch_code >= 8 else ch_code + 1
    if channels != info.channels or (ss_code and _BITS[ss_code] != info.bits):
        return None
    if sr_code in _RATES and _RATES[sr_code] != info.rate:
        return None
    # the UTF-8-like coded frame or sample number
    j = i + 4
    first = buf[j]
    if first < 0x80:
        num, more = first, 0
    elif first & 0xE0 == 0xC0:
        num, more = first & 0x1F, 1
    elif first & 0xF0 == 0xE0:
        num, more = first & 0x0F, 2
    elif first & 0xF8 == 0xF0:
        num, more = first & 0x07, 3
    elif first & 0xFC == 0xF8:
        num, more = first & 0x03, 4
    elif first & 0xFE == 0xFC:
        num, more = first & 0x01, 5
    elif first == 0xFE and variable:
        num, more = 0, 6
    else:
        return None
    if len(buf) - j < 1 + more + 4 + 1:
        return None
    for k in range(1, more + 1):
        c = buf[j + k]
        if c & 0xC0 != 0x80:
            return None
        num = (num << 6) | (c & 0x3F)
    j += 1 + more
    if bs_code == 1:
        block = 192
    elif bs_code <= 5:
        block = 576 << (bs_code - 2)
    elif bs_code == 6:
        block = buf[j] + 1
        j += 1
    elif bs_code == 7:
        block = (buf[j] << 8 | buf[j + 1]) + 1
        j += 2
    else:
        block = 256 << (bs_code - 8)
    if sr_code == 12:
        rate = buf[j] * 1000
        j += 1
    elif sr_code in (13, 14):
        rate = (buf[j] << 8 | buf[j + 1]) * (10 if sr_code == 14 else 1)
        j += 2
    else:
        rate = info.rate
    if rate != info.rate or (info.max_block and block > info.max_block):
        return None
    if _crc8(buf[i:j]) != buf[j]:
        return None
    if variable:
        start = num
    else:
        # all frames but the last are the stream's block size; STREAMINFO's
        # minimum may or may not count the short last frame, the maximum is it
        start = num * (info.max_block or block)
    return _Frame(i, start, block, j + 1, ch_code, _BITS[ss_code] if ss_code else info.bits)


def _frame_end(buf: bytes, fr: _Frame) -> int | None:
    """Where the frame ``fr`` ends in ``buf`` (after its CRC-16), found by
    walking its subframes without decoding them; None if ``buf`` ends
    first, or something in it is not understood."""
    data = buf[fr.body:]
    n = len(data) * 8
    if n == 0:
        return None
    bits = bin(int.from_bytes(data, "big") | (1 << n))[3:]  # "0"/"1" per bit, leading zeros kept
    pos = 0
    channels = 2 if fr.channel_code >= 8 else fr.channel_code + 1
    side = {8: 1, 9: 0, 10: 1}.get(fr.channel_code)  # the side channel has one more bit
    for c in range(channels):
        bps = fr.bits + (c == side)
        if pos + 8 > n or bits[pos] != "0":
            return None
        kind = int(bits[pos + 1:pos + 7], 2)
        wasted = bits[pos + 7] == "1"
        pos += 8
        if wasted:  # unary coded count of wasted bits, minus one
            k = bits.find("1", pos)
            if k < 0:
                return None
            bps -= k - pos + 1
            pos = k + 1
            if bps <= 0:
                return None
        if kind == 0:  # CONSTANT
            pos += bps
        elif kind == 1:  # VERBATIM
            pos += fr.block * bps
        elif 8 <= kind <= 12 or kind >= 32:  # FIXED, LPC
            order = kind - 8 if kind <= 12 else kind - 31
            pos += order * bps  # warm-up samples
            if kind >= 32:
                if pos + 9 > n:
                    return None
                precision = int(bits[pos:pos + 4], 2) + 1
                if precision == 16:
                    return None
                pos += 9 + order * precision
            pos = _residual_end(bits, pos, fr.block, order)
            if pos is None:
                return None
        else:
            return None
        if pos > n:
            return None
    end = fr.body + (pos + 7) // 8 + 2
    return end if end <= len(buf) else None


def _residual_end(bits: str, pos: int, block: int, order: int) -> int | None:
    """The bit after a Rice-coded residual starting at ``bits[pos]``."""
    n = len(bits)
    if pos + 6 > n:
        return None
    method, porder = int(bits[pos:pos + 2], 2), int(bits[pos + 2:pos + 6], 2)
    pos += 6
    if method > 1:
        return None
    width, escape = (4, 15) if method == 0 else (5, 31)
    parts = 1 << porder
    if block % parts or (block >> porder) < order:
        return None
    find = bits.find
    for p in range(parts):
        count = (block >> porder) - (order if p == 0 else 0)
        if pos + width > n:
            return None
        k = int(bits[pos:pos + width], 2)
        pos += width
        if k == escape:  # unencoded, in w bits each
            if pos + 5 > n:
                return None
            pos += 5 + int(bits[pos:pos + 5], 2) * count
        else:
            for _ in range(count):  # unary quotient, a 1, then k bits
                q = find("1", pos)
                if q < 0:
                    return None
                pos = q + 1 + k
        if pos > n:
            return None
    return pos


def _crc16_ok(buf: bytes, a: int, b: int) -> bool:
    """Whether ``buf[a:b]`` is a whole frame: its last two bytes are the
    CRC-16 of the rest."""
    if b - a < 8:
        return False
    c = 0
    t = _CRC16
    for x in buf[a:b - 2]:
        c = ((c << 8) & 0xFFFF) ^ t[(c >> 8) ^ x]
    return c == (buf[b - 2] << 8 | buf[b - 1])


def _frame_ends(buf: bytes, off: int) -> list[int]:
    """Where the frame at ``buf[off]`` may end if it is whole: the end of
    ``buf``, the start of an ID3v1 and/or APEv2 tag there, or the start of
    a frame header cut by the end of ``buf``."""
    ends = [len(buf)]
    for p in range(max(off + 1, len(buf) - 16), len(buf)):
        if buf[p] == 0xFF and (p + 1 == len(buf) or buf[p + 1] & 0xFE == 0xF8):
            ends.append(p)
    end = len(buf)
    if end >= 128 and buf[end - 128:end - 125] == b"TAG":
        end -= 128
        ends.append(end)
    if end >= 32 and buf[end - 32:end - 24] == b"APETAGEX":
        n = struct.unpack("<I", buf[end - 20:end - 16])[0]
        flags = struct.unpack("<I", buf[end - 12:end - 8])[0]
        start = end - n - (32 if flags & 0x80000000 else 0)
        if 0 <= start < end:
            ends.append(start)
    return ends


def _flac(f, size: int, start: int) -> str | None:
    pos = start + 4
    info = None
    for _ in range(_MAX_CHUNKS):
        f.seek(pos)
        hdr = f.read(4)
        if len(hdr) < 4:
            break  # the file ends in the metadata
        last, kind, n = hdr[0] & 0x80, hdr[0] & 0x7F, int.from_bytes(hdr[1:4], "big")
        if kind == 0:
            body = f.read(34)
            if len(body) < 34:
                return None
            info = _Info(body)
        pos += 4 + n
        if last:
            break
    else:
        return None
    if info is None or info.total == 0 or info.rate == 0:
        return None  # total length unknown (a streamed FLAC): nothing to compare with
    audio = pos  # the first frame
    if audio >= size:  # no audio at all: the file ends in (or right after) the metadata
        return _message(info.total, 0, info.rate)
    tail = max(FLAC_TAIL, 2 * info.max_frame + 64)
    at = max(audio, size - tail)
    f.seek(at)
    buf = f.read(size - at)
    headers: list[_Frame] = []
    i = len(buf)
    while True:
        i = buf.rfind(b"\xff", 0, i)
        if i < 0:
            break
        h = _frame_header(buf, i, info) if i + 1 < len(buf) and buf[i + 1] & 0xFE == 0xF8 else None
        if h is not None and h.end <= info.total:
            headers.append(h)
    if not headers:
        # no frame header: truncated if the file ends in the first one
        return _message(info.total, 0, info.rate) if size - audio < 16 else None
    headers.reverse()
    ends = {h.end for h in headers}
    chained = [h for h in headers if h.start in ends]
    if chained:
        frames = chained
    elif len(headers) == 1:
        frames = headers
    else:
        return None  # several headers that do not follow one another: not sure
    # the audio present ends with the last frame that is whole: its CRC-16
    # is where its subframes end, or where the file or a tag after it begins
    present = next((h.end for h in reversed(frames) if _whole(buf, h)), frames[-1].start)
    if present >= info.total:
        return None
    return _message(info.total, present, info.rate)


def _whole(buf: bytes, fr: _Frame) -> bool:
    ends = [*_frame_ends(buf, fr.off), _frame_end(buf, fr) or 0]
    return any(_crc16_ok(buf, fr.off, e) for e in ends if e > fr.off)


# --------------------------------------------------------------------------
# MP3: the encoder's delay and padding (gapless playback)

#: samples every layer III decoder adds in front (the synthesis filterbank's delay)
MP3_DECODER_DELAY = 529


def mp3_gapless(path: str) -> tuple[int, int] | None:
    """``(delay, padding)`` from the LAME-style tag of an MP3's first frame
    (the Xing/Info frame that LAME, ffmpeg's "Lavc" and libsndfile write):
    the samples the encoder put in front of the audio and after it. A
    decoder that keeps them (pedalboard's does, and it adds
    :data:`MP3_DECODER_DELAY` of its own) returns the audio
    ``delay + MP3_DECODER_DELAY`` samples late and ``delay + padding``
    samples long. None when there is no such tag (no gapless information:
    nothing can be trimmed) or the file cannot be read. Never raises."""
    try:
        with open(path, "rb") as f:
            f.seek(_after_id3v2(f))
            b = f.read(8192)
    except OSError:
        return None
    i = 0
    while i + 4 <= len(b) and not (b[i] == 0xFF and b[i + 1] & 0xE0 == 0xE0):
        i += 1  # zero padding after the ID3 tag
    if i + 4 > len(b):
        return None
    b1, b3 = b[i + 1], b[i + 3]
    version, layer, mono = (b1 >> 3) & 3, (b1 >> 1) & 3, (b3 >> 6) & 3 == 3
    if layer != 1 or version == 1:  # layer III only; version 1 is reserved
        return None
    side = (17 if mono else 32) if version == 3 else (9 if mono else 17)
    x = i + 4 + side
    if b[x:x + 4] not in (b"Xing", b"Info"):
        return None
    flags = int.from_bytes(b[x + 4:x + 8], "big")
    p = x + 8 + 4 * bool(flags & 1) + 4 * bool(flags & 2) + 100 * bool(flags & 4) + 4 * bool(flags & 8)
    enc = b[p:p + 4]
    if len(b) < p + 24 or not (enc[:4] in (b"LAME", b"Lavc", b"Lavf", b"GOGO") or enc[:2] == b"L3"):
        return None
    d = b[p + 21:p + 24]
    return (d[0] << 4) | (d[1] >> 4), ((d[1] & 0x0F) << 8) | d[2]


# --------------------------------------------------------------------------
# FLAC: the MD5 signature of the decoded audio


def flac_signature(path: str) -> tuple[bytes, int, int] | None:
    """``(md5, bits_per_sample, channels)`` from a FLAC file's STREAMINFO
    (optionally after an ID3v2 tag): the MD5 of the whole decoded audio
    that the encoder stored. None when the file is not FLAC, the
    signature is absent (all zeros: the encoder did not compute one) or
    the header cannot be read. Never raises."""
    try:
        with open(path, "rb") as f:
            f.seek(_after_id3v2(f))
            b = f.read(4 + 4 + 34)
    except OSError:
        return None
    if len(b) < 42 or b[:4] != b"fLaC" or b[4] & 0x7F != 0:  # STREAMINFO is always the first block
        return None
    info = _Info(b[8:42])
    md5 = b[8 + 18:8 + 34]
    if not any(md5):
        return None
    return md5, info.bits, info.channels


def pcm_ints(x, bits: int):
    """The integer samples (float64, clipped to the ``bits``-wide range)
    that float samples stand for as pedalboard reads them: it reads an
    integer ``k`` as ``k / (2**(bits-1) - 1)``, so this gives ``k`` back
    exactly for 8, 16 and 24 bits. A 32-bit ``k`` read into a 32-bit float
    keeps 24 significant bits, which cannot tell that scale from
    ``2**31``; scaled by ``2**31`` (a value within the same float step),
    ``k`` comes back exactly when it holds 24-bit audio (multiples of
    256), where ``2**31 - 1`` made the upper half of the range one lower."""
    import numpy as np

    full = float(2 ** (bits - 1))
    return np.clip(np.rint(x.astype(np.float64) * (full if bits >= 32 else full - 1.0)), -full, full - 1.0)


class FlacCheck:
    """Hashes the samples a reader returns, as FLAC's signature does
    (integers, interleaved, little-endian, ``bits`` wide), to compare with
    :func:`flac_signature` at the end. pedalboard's FLAC decoder does not
    check the frames' CRCs: a damaged frame comes out as silence, or is
    skipped and the rest comes out early, without an error. pedalboard
    reads an integer ``k`` as ``k / (2**(bits-1) - 1)``, which gives ``k``
    back exactly for 16 and 24 bits."""

    def __init__(self, md5: bytes, bits: int):
        import hashlib

        self.md5, self.bits = md5, bits
        self._h = hashlib.md5()

    @classmethod
    def of(cls, path: str) -> "FlacCheck | None":
        sig = flac_signature(path)
        if sig is None or sig[1] not in (16, 24):
            return None
        return cls(sig[0], sig[1])

    def update(self, x) -> None:
        import numpy as np

        k = np.ascontiguousarray(pcm_ints(x, self.bits).astype(np.int32).T)
        if self.bits == 16:
            self._h.update(k.astype("<i2").tobytes())
        else:
            self._h.update(k.astype("<i4").view(np.uint8).reshape(-1, 4)[:, :3].tobytes())

    def ok(self) -> bool:
        return self._h.digest() == self.md5
