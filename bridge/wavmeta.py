"""Metadata carried from a source file into its output.

An output is sample-aligned with its source (same length, no delay), so
the source's metadata stays true of it: a BWF ``bext`` chunk's
TimeReference (the timecode of the first sample: lose it and the file
loses sync with picture), ``iXML`` (scene, take, tape, timecode: what
location recorders write), ``cue `` points with their ``LIST adtl``
labels, ``LIST INFO`` tags, ``axml``, XMP (``_PMX``) and a
WAVE_FORMAT_EXTENSIBLE file's channel mask (speaker layout).

- **WAV to WAV** (plain, extensible, RF64/BW64 sources; WAV, WAVEX or RF64
  outputs): those chunks are copied as they are, in their order, into the
  output written by libsndfile, before its ``data`` chunk
  (:func:`insert_chunks`: the file is written again with them, then
  renamed over its temporary file). What changes:

  * ``bext``: its loudness fields (version 2) are set to 0x7FFF ("not
    set") when the chain changes the audio (they were the source's);
    a line is added to its CodingHistory, as EBU R 98 asks
    (``A=PCM,F=48000,W=24,M=mono,T=quietcast 0.1.0 chain NAME``).
  * resampled (``--sample-rate``): the sample positions are scaled to the
    new rate (``bext`` TimeReference, ``cue `` points, ``ltxt`` lengths,
    iXML's ``FILE_SAMPLE_RATE`` and ``BWF_TIME_REFERENCE_LOW/HIGH``).
  * another channel count (``--channels``): the channel mask is not kept
    (the output has libsndfile's for its count), iXML's ``TRACK_LIST`` is
    removed and ``axml`` (ADM, which names channels) is dropped; a warning
    says so.
  * the source's ``fmt``/``fact``/``data``, ``ds64``, ``PEAK`` and
    ``levl`` (of the source's samples), ``JUNK``/padding, ``chna`` and any
    other chunk are not carried.

- **Other outputs**: the tags libsndfile reads and writes (title,
  copyright, software, artist, comment, date, album, license, tracknumber,
  genre: soundfile's ``copy_metadata``) go into FLAC (Vorbis comments),
  AIFF (those it holds: title, artist, copyright, software, comment;
  a warning names the others) and a WAV from
  a non-WAV source (``LIST INFO``). ``bext``, iXML and cue points have
  nowhere to go in FLAC or AIFF, and MP3 and Ogg outputs (pedalboard's
  encoders) get no metadata at all: a warning says what was left behind.

A source whose chunk list is malformed (a chunk running past the end of
the file, a ``bext`` shorter than its fixed fields ...) is not failed: its
metadata, or the broken chunk, is left out, and a warning says why.
"""

from __future__ import annotations

import os
import re
import shutil
import struct
from dataclasses import dataclass, field

#: top-level chunks carried from a WAV source into a WAV output
CARRIED = (b"bext", b"iXML", b"axml", b"cue ", b"LIST", b"_PMX")
#: the LIST chunks carried (others, e.g. ``wavl``, are not metadata)
LIST_TYPES = (b"INFO", b"adtl")
#: chunks that describe the channels one by one: dropped when the channel count changes
PER_CHANNEL = (b"axml",)
BEXT_FIXED = 602  # Description .. Reserved: CodingHistory starts here
_TIME_REF = 338  # TimeReferenceLow/High in bext (256 + 32 + 32 + 10 + 8)
MAX_CHUNK = 16 << 20  # a metadata chunk larger than this is not carried
MAX_CHUNKS = 10_000
RIFF_MAX = 0xFFFFFFFF
_EXTENSIBLE = 0xFFFE
_WAV_KINDS = (b"RIFF", b"RF64", b"BW64")
#: soundfile's text fields (``SoundFile.copy_metadata``)
TEXT_FIELDS = ("title", "copyright", "software", "artist", "comment", "date", "album", "license", "tracknumber",
               "genre")
#: the ones libsndfile writes into AIFF (it drops the others without a word)
AIFF_TAGS = ("title", "copyright", "software", "artist", "comment")


class MetaError(ValueError):
    """A malformed chunk list or chunk."""


def _name(cid: bytes) -> str:
    return cid.decode("latin-1").strip() or repr(cid)


@dataclass
class WavMeta:
    """What a RIFF/RF64 WAVE source holds that an output can carry:
    ``chunks`` (``(id, body)`` in file order), the ``fmt`` chunk's
    ``rate``, ``channels`` and (WAVE_FORMAT_EXTENSIBLE only) ``mask``;
    ``notes``: what was found and is left out, and why."""

    kind: bytes
    rate: int = 0
    channels: int = 0
    mask: int | None = None
    chunks: list[tuple[bytes, bytes]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def names(self) -> list[str]:
        """The carried chunks, named for a message: ``bext``, ``LIST INFO`` ..."""
        return [_name(c) + (f" {_name(b[:4])}" if c == b"LIST" else "") for c, b in self.chunks]


def walk_chunks(f, size: int, kind: bytes, strict: bool = True):
    """``(id, body offset, body size)`` of each top-level chunk of an open
    WAVE file of ``size`` bytes; ``kind``: its first four bytes (``RIFF``;
    ``RIFX``, whose sizes are big-endian; ``RF64`` or ``BW64``, where a size
    of 0xFFFFFFFF is taken from ``ds64`` when it gives one). The walk ends
    at the end of the file, and after :data:`MAX_CHUNKS` chunks.

    ``strict`` (reading metadata): the walk also ends at bytes that are no
    chunk id (padding, or junk after the last chunk), and a
    :class:`MetaError` says what is malformed: a chunk that runs past the
    end of the file (but ``data``: it is yielded and the walk ends, a file
    cut short is :mod:`.audiocheck`'s to report), a ``ds64`` shorter than
    the 28 bytes it needs, a size of 0xFFFFFFFF that it does not give, more
    chunks than :data:`MAX_CHUNKS`. Not strict (the truncation check of
    :mod:`.audiocheck`): every chunk is yielded as declared (the last one
    may run past the end; a size of 0xFFFFFFFF that ds64 does not give is
    None, and the walk ends there), and nothing raises."""
    e = ">" if kind == b"RIFX" else "<"
    rf64 = kind in (b"RF64", b"BW64")
    big: dict[bytes, int] = {}
    pos = 12
    for _ in range(MAX_CHUNKS):
        if pos + 8 > size:
            return
        f.seek(pos)
        hdr = f.read(8)
        if len(hdr) < 8:
            return
        cid, n = hdr[:4], struct.unpack(e + "I", hdr[4:])[0]
        if strict and not all(32 <= c < 127 for c in cid):
            return  # zero padding or junk after the last chunk
        if rf64 and cid == b"ds64":
            body = f.read(min(n, 28 + 12 * 1024))
            if strict and (n < 28 or len(body) < 28):
                raise MetaError(f"its ds64 chunk is {min(n, len(body))} bytes, shorter than the 28 it needs")
            if len(body) >= 16:
                big[b"data"] = struct.unpack("<Q", body[8:16])[0]
            table = struct.unpack("<I", body[24:28])[0] if len(body) >= 28 else 0
            for i in range(min(table, (len(body) - 28) // 12)):
                tid, tsize = struct.unpack("<4sQ", body[28 + 12 * i:40 + 12 * i])
                big[tid] = tsize
        if rf64 and n == 0xFFFFFFFF:
            if cid not in big:
                if strict:
                    raise MetaError(f"its {_name(cid)!r} chunk at byte {pos} has the size 0xFFFFFFFF, which ds64 "
                                    "does not give")
                yield cid, pos + 8, None
                return
            n = big[cid]
        if pos + 8 + n > size:
            if strict and cid != b"data":
                raise MetaError(f"its {_name(cid)!r} chunk at byte {pos} declares {n} bytes, past the end of the "
                                f"file ({max(0, size - pos - 8)} are there)")
            yield cid, pos + 8, n
            return
        yield cid, pos + 8, n
        pos += 8 + n + (n & 1)
    if strict:
        raise MetaError(f"it has more than {MAX_CHUNKS} chunks")


def _list_ok(body: bytes) -> bool:
    """Whether a LIST chunk's sub-chunks fit in it."""
    pos = 4
    while pos + 8 <= len(body):
        n = struct.unpack("<I", body[pos + 4:pos + 8])[0]
        if pos + 8 + n > len(body):
            return False
        pos += 8 + n + (n & 1)
    return True


def _problem(cid: bytes, body: bytes) -> str | None:
    """Why a carried chunk's content is malformed, else None."""
    if cid == b"bext" and len(body) < BEXT_FIXED:
        return f"its bext chunk is {len(body)} bytes, shorter than the {BEXT_FIXED} of its fixed fields"
    if cid == b"cue ":
        count = struct.unpack("<I", body[:4])[0] if len(body) >= 4 else -1
        if count < 0 or 4 + 24 * count > len(body):
            return f"its cue chunk ({len(body)} bytes) cannot hold the {max(count, 0)} cue points it declares"
    if cid == b"LIST" and not _list_ok(body):
        return f"its LIST {_name(body[:4])} chunk's entries run past its end"
    return None


def read_wav_meta(path: str) -> WavMeta | None:
    """The metadata of a RIFF, RF64 or BW64 WAVE file (None for anything
    else, RIFX included). Never raises: what cannot be read is left out and
    said in ``notes``."""
    try:
        f = open(path, "rb")
    except OSError:
        return None
    with f:
        head = f.read(12)
        if len(head) < 12 or head[:4] not in _WAV_KINDS or head[8:12] != b"WAVE":
            return None
        meta = WavMeta(head[:4])
        size = os.fstat(f.fileno()).st_size  # (not the RIFF size: writers that append chunks forget it)
        chunks: list[tuple[bytes, bytes]] = []
        try:
            for cid, pos, n in walk_chunks(f, size, head[:4]):
                if cid == b"fmt ":
                    f.seek(pos)
                    body = f.read(min(n, 40))
                    if len(body) >= 16:
                        tag, meta.channels, meta.rate = struct.unpack("<HHI", body[:8])
                        if tag == _EXTENSIBLE and len(body) >= 24:
                            meta.mask = struct.unpack("<I", body[20:24])[0]
                    continue
                if cid not in CARRIED:
                    continue
                if n > MAX_CHUNK:
                    meta.notes.append(f"metadata: its {_name(cid)} chunk ({n} bytes) is too large to carry; left out")
                    continue
                f.seek(pos)
                body = f.read(n)
                if cid == b"LIST" and body[:4] not in LIST_TYPES:
                    continue
                why = _problem(cid, body)
                if why:
                    meta.notes.append(f"metadata: {why}; that chunk is left out")
                    continue
                chunks.append((cid, body))
        except (MetaError, OSError, struct.error) as e:
            meta.notes.append(f"metadata not carried: the source's chunk list is malformed ({e}); the audio is "
                              "written without its metadata")
            return meta
        meta.chunks = chunks
        return meta


# --------------------------------------------------------------------------
# what goes into the output


def _scale(v: int, num: int, den: int) -> int:
    """``v * num / den`` rounded to the nearest integer, exactly."""
    return (2 * v * num + den) // (2 * den)


def coding_history_line(rate: int, channels: int, subtype: str, text: str) -> bytes:
    """One EBU R 98 coding-history line for the output, CR LF ended:
    ``A=PCM,F=48000,W=24,M=mono,T=...``."""
    bits = {"PCM_U8": 8, "PCM_S8": 8, "PCM_16": 16, "PCM_24": 24, "PCM_32": 32, "FLOAT": 32, "DOUBLE": 64,
            "ALAW": 8, "ULAW": 8}.get(subtype)
    algo = "PCM" if subtype.startswith("PCM") else {"FLOAT": "PCM_FLOAT", "DOUBLE": "PCM_FLOAT", "ALAW": "G.711A",
                                                    "ULAW": "G.711U"}.get(subtype, subtype)
    mode = {1: "mono", 2: "stereo"}.get(channels, "multichannel")
    fields = [f"A={algo}", f"F={rate}"] + ([f"W={bits}"] if bits else []) + [f"M={mode}", f"T={text}"]
    return ",".join(fields).encode("ascii", "replace") + b"\r\n"


_VERSION = 346  # bext Version (uint16); UMID follows (64 bytes)
_LOUDNESS = 412  # version 2: LoudnessValue, LoudnessRange, MaxTruePeakLevel, MaxMomentary/ShortTermLoudness
_LOUDNESS_UNSET = 0x7FFF  # EBU Tech 3285 v2: a loudness field not set


def _stale_loudness(body: bytes) -> bool:
    """Whether a version 2 (or later) ``bext`` states a loudness field."""
    if len(body) < BEXT_FIXED or struct.unpack_from("<H", body, _VERSION)[0] < 2:
        return False
    return any(v != _LOUDNESS_UNSET for v in struct.unpack_from("<5h", body, _LOUDNESS))


def _bext(body: bytes, rate: int, src_rate: int, history: bytes | None, unset_loudness: bool = False) -> bytes:
    b = bytearray(body)
    if unset_loudness:  # they were measured on the source, not on what the chain made of it
        struct.pack_into("<5H", b, _LOUDNESS, *[_LOUDNESS_UNSET] * 5)
    if rate != src_rate and src_rate:
        tr = struct.unpack_from("<Q", b, _TIME_REF)[0]
        struct.pack_into("<Q", b, _TIME_REF, _scale(tr, rate, src_rate))
    if history:
        old = bytes(b[BEXT_FIXED:]).rstrip(b"\0")
        if old and not old.endswith(b"\r\n"):
            old = old.rstrip(b"\r\n") + b"\r\n"
        b[BEXT_FIXED:] = old + history
    if len(b) & 1:  # (CodingHistory is NUL-terminated: an even size, which every reader takes)
        b.append(0)
    return bytes(b)


def _cue(body: bytes, rate: int, src_rate: int) -> bytes:
    b = bytearray(body)
    (count,) = struct.unpack_from("<I", b, 0)
    for i in range(count):
        at = 4 + 24 * i
        for off in (4, 20):  # dwPosition, dwSampleOffset
            struct.pack_into("<I", b, at + off, min(_scale(struct.unpack_from("<I", b, at + off)[0], rate, src_rate),
                                                    0xFFFFFFFF))
    return bytes(b)


def _adtl(body: bytes, rate: int, src_rate: int) -> bytes:
    b = bytearray(body)
    pos = 4
    while pos + 8 <= len(b):
        sid, n = b[pos:pos + 4], struct.unpack_from("<I", b, pos + 4)[0]
        if sid == b"ltxt" and n >= 8:  # dwName, dwSampleLength, ...
            v = struct.unpack_from("<I", b, pos + 12)[0]
            struct.pack_into("<I", b, pos + 12, min(_scale(v, rate, src_rate), 0xFFFFFFFF))
        pos += 8 + n + (n & 1)
    return bytes(b)


def _ixml_tag(text: bytes, tag: bytes, value: bytes) -> bytes:
    return re.sub(rb"(<" + tag + rb">)\s*[^<]*?\s*(</" + tag + rb">)", lambda m: m.group(1) + value + m.group(2),
                  text)


def _ixml(body: bytes, rate: int, src_rate: int, channels_changed: bool, time_ref: int | None) -> tuple[bytes, bool]:
    """iXML for the output; and whether a TRACK_LIST was removed."""
    removed = False
    if rate != src_rate and src_rate:
        body = _ixml_tag(body, b"FILE_SAMPLE_RATE", str(rate).encode())
        m_lo = re.search(rb"<BWF_TIME_REFERENCE_LOW>\s*(\d+)\s*<", body)
        m_hi = re.search(rb"<BWF_TIME_REFERENCE_HIGH>\s*(\d+)\s*<", body)
        if m_lo and m_hi:
            tr = _scale((int(m_hi.group(1)) << 32) | int(m_lo.group(1)), rate, src_rate) if time_ref is None \
                else time_ref
            body = _ixml_tag(body, b"BWF_TIME_REFERENCE_LOW", str(tr & 0xFFFFFFFF).encode())
            body = _ixml_tag(body, b"BWF_TIME_REFERENCE_HIGH", str(tr >> 32).encode())
    if channels_changed:
        new = re.sub(rb"[ \t]*<TRACK_LIST>.*?</TRACK_LIST>[ \t]*\r?\n?", b"", body, flags=re.S)
        removed = new != body
        body = new
    return body, removed


@dataclass
class Carry:
    """What an output gets: ``chunks`` to insert before ``data``, the
    channel ``mask`` to set (None: libsndfile's), and ``notes``."""

    chunks: list[tuple[bytes, bytes]]
    mask: int | None
    notes: list[str]


def plan(meta: WavMeta, rate: int, channels: int, subtype: str, history: str | None,
         audio_changed: bool = True) -> Carry:
    """The chunks of ``meta`` as the output (``rate``, ``channels``,
    written as ``subtype``) carries them: see the module's docstring.
    ``audio_changed``: the chain changes the audio (not a chain without
    stages), so a ``bext``'s loudness values no longer hold."""
    notes = list(meta.notes)
    src_rate = meta.rate or rate
    changed = bool(meta.channels) and channels != meta.channels
    mask = meta.mask
    if changed and mask is not None:
        notes.append(f"metadata: the source's channel mask ({mask:#x}, its speaker layout) is not kept: "
                     f"{meta.channels} channel(s) became {channels}")
        mask = None
    line = coding_history_line(rate, channels, subtype, history) if history else None
    time_ref = None
    out: list[tuple[bytes, bytes]] = []
    dropped: list[str] = []
    for cid, body in meta.chunks:
        if cid == b"bext":
            unset = audio_changed and _stale_loudness(body)
            body = _bext(body, rate, src_rate, line, unset)
            if unset:
                notes.append("metadata: bext's loudness values were measured on the source, not on this output: "
                             f"set to {_LOUDNESS_UNSET:#x} (not set), as EBU Tech 3285 asks")
            time_ref = struct.unpack_from("<Q", body, _TIME_REF)[0]
        elif cid == b"cue " and rate != src_rate:
            body = _cue(body, rate, src_rate)
        elif cid == b"LIST" and body[:4] == b"adtl" and rate != src_rate:
            body = _adtl(body, rate, src_rate)
        elif cid in PER_CHANNEL and changed:
            dropped.append(_name(cid))
            continue
        out.append((cid, body))
    for k, (cid, body) in enumerate(out):
        if cid == b"iXML":
            body, removed = _ixml(body, rate, src_rate, changed, time_ref if rate != src_rate else None)
            out[k] = (cid, body)
            if removed:
                notes.append(f"metadata: iXML's TRACK_LIST is removed: it lists the source's {meta.channels} "
                             f"track(s), the output has {channels}")
    if dropped:
        notes.append(f"metadata: {', '.join(dropped)} not carried: it describes the source's {meta.channels} "
                     f"channel(s), the output has {channels}")
    return Carry(out, mask, notes)


# --------------------------------------------------------------------------
# writing


def _blob(chunks: list[tuple[bytes, bytes]]) -> bytes:
    return b"".join(cid + struct.pack("<I", len(b)) + b + (b"\0" if len(b) & 1 else b"") for cid, b in chunks)


def set_mask(path: str, mask: int) -> bool:
    """Write ``mask`` into the WAVE_FORMAT_EXTENSIBLE ``fmt`` chunk of the
    WAV file ``path``, in place; False where it has none."""
    with open(path, "r+b") as f:
        head = f.read(12)
        size = os.fstat(f.fileno()).st_size
        for cid, pos, n in walk_chunks(f, size, head[:4]):
            if cid == b"fmt ":
                f.seek(pos)
                body = f.read(min(n, 40))
                if len(body) < 24 or struct.unpack("<H", body[:2])[0] != _EXTENSIBLE:
                    return False
                if struct.unpack("<I", body[20:24])[0] != mask:
                    f.seek(pos + 20)
                    f.write(struct.pack("<I", mask))
                return True
            if cid == b"data":
                break
    return False


def insert_chunks(raw: str, out: str, chunks: list[tuple[bytes, bytes]], mask: int | None) -> str | None:
    """Write ``out``: the WAV file ``raw`` (as libsndfile wrote it) with
    ``chunks`` inserted before its ``data`` chunk and, where it is
    extensible, the channel ``mask``. The RIFF size (RF64: ``ds64``'s) is
    set anew. In RF64 a chunk of odd size goes after ``data`` instead:
    libsndfile (1.2) reads no RF64 file with one before ``data`` (it skips
    no pad byte there). Returns why nothing was inserted (``out`` is then
    ``raw``, renamed), else None; an ``OSError`` (disk full ...) is the
    caller's."""
    size = os.path.getsize(raw)
    with open(raw, "rb") as f:
        head = bytearray(f.read(12))
        kind = bytes(head[:4])
        try:
            found = list(walk_chunks(f, size, kind))
        except MetaError as e:  # (libsndfile's own file: not expected)
            found, why = [], str(e)
        else:
            why = None
        data = next(((pos, n) for cid, pos, n in found if cid == b"data"), None)
        odd = kind != b"RIFF"
        before = _blob([c for c in chunks if not (odd and len(c[1]) & 1)])
        after = _blob([c for c in chunks if odd and len(c[1]) & 1])
        pad = b"\0" if after and data is not None and data[1] & 1 and data[0] + data[1] == size else b""
        total = size + len(before) + len(pad) + len(after)
        if data is None or kind not in _WAV_KINDS:
            why = why or "the output has no data chunk"
        elif kind == b"RIFF" and total - 8 > RIFF_MAX:
            why = "the output would pass the 4 GiB a plain WAV can hold"
        if why:
            f.close()
            os.replace(raw, out)
            return f"metadata not carried: {why}"
        start = data[0] - 8
        f.seek(12)
        pre = bytearray(f.read(start - 12))
        for cid, pos, n in found:
            if cid == b"fmt " and mask is not None and n >= 24:
                at = pos - 12
                if struct.unpack_from("<H", pre, at)[0] == _EXTENSIBLE:
                    struct.pack_into("<I", pre, at + 20, mask)
            if cid == b"ds64" and kind != b"RIFF":
                struct.pack_into("<Q", pre, pos - 12, total - 8)
        if kind == b"RIFF":
            struct.pack_into("<I", head, 4, total - 8)
        with open(out, "wb") as g:
            g.write(head)
            g.write(pre)
            g.write(before)
            f.seek(start)
            shutil.copyfileobj(f, g, 1 << 20)
            g.write(pad + after)
    os.unlink(raw)
    return None


def source_tags(path: str) -> dict[str, str]:
    """The text fields libsndfile reads from ``path`` (title, artist,
    comment, date ...), non-empty only; {} where it reads none."""
    try:
        import soundfile as sf

        with sf.SoundFile(path) as f:
            return {k: v for k, v in f.copy_metadata().items() if v}
    except Exception:
        return {}


def set_tags(f, tags: dict[str, str]) -> list[str]:
    """Set ``tags`` on the soundfile ``f`` open for writing; the ones
    libsndfile refused."""
    refused = []
    for k, v in tags.items():
        try:
            setattr(f, k, v)
        except Exception:
            refused.append(k)
    return refused
