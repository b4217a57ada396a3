"""Offline processing: run a chain over files and folders.

- Streams in blocks (never loads a whole file): memory stays flat whatever
  the file's length.
- Keeps the sample rate and channel layout unless told
  (``sample_rate=``, ``channels=``); stages that need 48 kHz resample
  internally. Keeps the container and sample format (subtype) where the
  output holds it, and says so where it does not (:func:`output_format`).
- The output is latency aligned: same length as the input, no delay
  (resampled: as long in time, to the nearest frame).
- Never loses data: writes a hidden temporary file beside the target and
  renames it into place only when complete; refuses to overwrite unless
  ``overwrite=True``; a corrupt or unreadable input is reported and skipped
  and the other files go on. That includes a WAV, AIFF or FLAC file cut
  short (which pedalboard would pad with zeros; :mod:`.audiocheck`).
- ``jobs=N`` processes N files at once in worker processes. Ctrl-C stops
  the batch promptly (files not started are not started, the ones
  running stop and leave no temporary file). A file that crashes its
  worker (a plugin's segfault) is found by running the files the crash
  left unfinished again one at a time; only that file fails.
"""

from __future__ import annotations

import glob
import os
import signal
import sys
import time
import uuid
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from typing import Callable, Iterable

import numpy as np

from quietcast.models.common import quietcast_version  # (the CodingHistory line names it; imported from here too)

from .audiocheck import MP3_DECODER_DELAY, FlacCheck, mp3_gapless, pcm_ints, truncation_problem
from .chain import SAMPLE_RATES, Chain
from . import wavmeta
from .errors import AudioFileError, BridgeError, ChainSpecError

READ_EXTS = (".wav", ".flac", ".mp3", ".ogg", ".aiff", ".aif", ".bwf")
WRITE_EXTS = (".wav", ".flac", ".mp3", ".ogg", ".aiff", ".aif")
#: audio extensions not written here: an output named so is refused (it was taken for a folder's name)
NOT_WRITTEN_EXTS = (".m4a", ".m4b", ".mp4", ".aac", ".alac", ".opus", ".oga", ".wma", ".caf", ".aifc", ".au", ".snd",
                    ".webm", ".mka", ".wv", ".ape", ".amr", ".ac3", ".3gp", ".mp2", ".spx", ".bwf", ".w64", ".rf64")
BLOCK = 65_536


@dataclass
class Job:
    src: str
    dst: str


@dataclass
class FileResult:
    src: str
    dst: str
    ok: bool
    seconds: float = 0.0  # audio duration processed
    elapsed: float = 0.0  # wall time
    error: str | None = None
    warnings: list[str] = field(default_factory=list)
    skipped: bool = False  # the output existed and was left alone (skip_existing)
    format: str | None = None  # what the output was written as: container and subtype ("WAV PCM_24")


@dataclass
class Summary:
    results: list[FileResult]
    elapsed: float

    @property
    def failed(self) -> list[FileResult]:
        return [r for r in self.results if not r.ok]

    @property
    def skipped(self) -> list[FileResult]:
        return [r for r in self.results if r.skipped]

    @property
    def audio_seconds(self) -> float:
        return sum(r.seconds for r in self.results if r.ok and not r.skipped)

    def text(self) -> str:
        ok = len(self.results) - len(self.failed) - len(self.skipped)
        rtf = self.elapsed / self.audio_seconds if self.audio_seconds else 0.0
        skipped = f", {len(self.skipped)} skipped (output exists)" if self.skipped else ""
        lines = [
            f"{ok} of {len(self.results)} file(s) processed{skipped}, {len(self.failed)} failed; "
            f"{self.audio_seconds:.1f} s of audio in {self.elapsed:.1f} s (real-time factor {rtf:.3f})"
        ]
        for r in self.results:
            for w in r.warnings:
                lines.append(f"warning: {r.src}: {w}")
        for r in self.failed:
            lines.append(f"FAILED: {r.src}: {r.error}")
        return "\n".join(lines)


# --------------------------------------------------------------------------
# planning


def _is_audio(path: str) -> bool:
    return path.lower().endswith(READ_EXTS)


def _glob_root(pattern: str) -> str:
    """The folder a glob pattern starts from: its leading components
    without wildcards (``archive`` for ``archive/**/*.mp3``, ``.`` for
    ``*.wav``)."""
    parts = pattern.split(os.sep)
    root: list[str] = []
    for part in parts[:-1]:
        if glob.has_magic(part):
            break
        root.append(part)
    if root == [""]:  # /*.wav
        return os.sep
    return os.sep.join(root) or os.curdir


def _under(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def expand_inputs(inputs: Iterable[str], output: str | None = None) -> list[tuple[str, str]]:
    """Files, folders (recursive) and glob patterns -> ``(file, relative
    name)`` pairs in a stable order: a file's name, a path under an input
    folder, a path under a pattern's leading folder without wildcards.
    The folder ``output`` (and all under it) is left out of an input
    folder or a pattern's matches: those are outputs of an earlier run. Raises
    BridgeError for an input that matches nothing."""
    out: list[tuple[str, str]] = []
    missing = []
    out_dir = os.path.realpath(output) if output else None
    for item in inputs:
        if os.path.isdir(item):
            found = []
            for root, dirs, files in os.walk(item):
                dirs[:] = sorted(d for d in dirs if os.path.realpath(os.path.join(root, d)) != out_dir)
                for f in sorted(files):
                    p = os.path.join(root, f)
                    if _is_audio(p) and not f.startswith("."):
                        found.append((p, os.path.relpath(p, item)))
            if not found:
                missing.append(f"{item} (a folder with no audio files: {', '.join(READ_EXTS)})")
            out.extend(found)
        elif os.path.exists(item):
            out.append((item, os.path.basename(item)))
        elif glob.has_magic(item):
            matches = sorted(p for p in glob.glob(item, recursive=True) if os.path.isfile(p))
            if out_dir:  # as for a folder: the outputs of an earlier run are not inputs
                matches = [p for p in matches if not _under(os.path.realpath(p), out_dir)]
            if not matches:
                missing.append(f"{item} (pattern matches no file)")
            root = _glob_root(item)  # (the folders under it are kept, as under an input folder)
            out.extend((p, os.path.relpath(p, root)) for p in matches)
        else:
            missing.append(f"{item} (no such file or folder)")
    if missing:
        raise BridgeError("input not found: " + "; ".join(missing))
    return out


def plan_jobs(inputs: Iterable[str], output: str, fmt: str | None = None) -> list[Job]:
    """Map inputs to outputs. One input file and an ``output`` with an audio
    extension -> that file; otherwise ``output`` is a folder and relative
    paths under each input folder are kept (an ``output`` folder inside an
    input folder is not an input). ``fmt`` (e.g. ``"flac"``) changes the
    output extension."""
    if not output:
        raise BridgeError("the output is empty: give an output file (one input) or folder")
    pairs = expand_inputs(inputs, output)
    if fmt is not None:
        fmt = "." + fmt.lower().lstrip(".")
        if fmt not in WRITE_EXTS:
            raise BridgeError(f"output format {fmt!r} is not supported; choose one of {', '.join(e[1:] for e in WRITE_EXTS)}")
    out_ext = "" if os.path.isdir(output) else os.path.splitext(output)[1].lower()  # ("x.m4a/": a folder)
    single_file = len(pairs) == 1 and out_ext in WRITE_EXTS
    if not single_file and out_ext in WRITE_EXTS + NOT_WRITTEN_EXTS and len(pairs) > 1:
        raise BridgeError(f"output {output!r} is a single file but there are {len(pairs)} inputs; give a folder")
    if out_ext in NOT_WRITTEN_EXTS:
        raise BridgeError(f"output {output!r}: {out_ext} files cannot be written; give the output file one of "
                          f"{' '.join(WRITE_EXTS)} (or end it with {os.sep} for a folder of that name)")
    if not single_file and os.path.isfile(output):
        raise BridgeError(f"output {output!r} is an existing file; give a folder for these inputs")
    jobs = []
    seen: dict[str, str] = {}
    for src, rel in pairs:
        if single_file:
            dst = output
        else:
            dst = os.path.join(output, rel)
            if fmt:
                dst = os.path.splitext(dst)[0] + fmt
            elif dst.lower().endswith(".aif"):  # an AIFF input stays AIFF, named .aiff
                dst = os.path.splitext(dst)[0] + ".aiff"
            elif os.path.splitext(dst)[1].lower() not in WRITE_EXTS:  # .bwf becomes .wav
                dst = os.path.splitext(dst)[0] + ".wav"
        key = os.path.abspath(dst)
        if _same_file(src, dst):
            raise BridgeError(f"output {dst!r} would be the input file itself; write the outputs elsewhere "
                              "(the originals are kept)")
        if key in seen:
            raise BridgeError(f"inputs {seen[key]!r} and {src!r} would both be written to {dst!r}")
        seen[key] = src
        jobs.append(Job(src, dst))
    return jobs


# --------------------------------------------------------------------------
# one file


def _open_input(src: str, sample_rate: int | None):
    from pedalboard.io import AudioFile

    try:
        f = AudioFile(src)
    except Exception as e:
        raise AudioFileError(src, f"cannot be read as audio: {_short(e)}") from None
    # pedalboard pads a WAV, AIFF or FLAC file cut short with zeros, silently
    problem = truncation_problem(src)
    if problem:
        f.close()
        raise AudioFileError(src, problem)
    if f.frames == 0:
        f.close()
        raise AudioFileError(src, "holds no audio frames")
    gap = mp3_gapless(src) if _is_mp3(src) else None
    if gap is not None:  # pedalboard keeps the encoder's delay and padding: the audio would come out late and long
        start = gap[0] + MP3_DECODER_DELAY
        count = min(f.frames - start, f.frames - gap[0] - gap[1])
        if 0 < count:
            f = _Trimmed(f, start, count)
    if sample_rate and int(sample_rate) != int(f.samplerate):
        return f, _Resampled(f, int(sample_rate))
    return f, f


def _verify_flac(src: str, check: FlacCheck, block: int = BLOCK) -> None:
    """Decode ``src`` once more (at its own rate) against its MD5 signature;
    an :class:`AudioFileError` when it does not match."""
    from pedalboard.io import AudioFile

    with AudioFile(src) as f:
        while True:
            x = f.read(block)
            if x.shape[1] == 0:
                break
            check.update(x)
    if not check.ok():
        raise AudioFileError(src, FLAC_DAMAGED)


def exists_error(dst: str) -> str:
    """What a job whose output exists (and may not be replaced) says."""
    return f"output {dst} exists; pass --overwrite to replace it, or --skip-existing to leave it"


FLAC_DAMAGED = ("is damaged: its decoded audio does not match the MD5 signature in its header (a frame "
                "that fails its checksum comes out as silence or is skipped); output not written")


def _same_file(src: str, dst: str) -> bool:
    """Whether writing ``dst`` would replace ``src`` (the same path, or a
    link to it)."""
    return os.path.abspath(dst) == os.path.abspath(src) or (
        os.path.exists(dst) and os.path.exists(src) and os.path.samefile(src, dst))


def _read_upto(reader, n: int, channels: int) -> np.ndarray:
    """``reader.read(n)``, or no frames when ``n`` <= 0 (pedalboard's
    ``read(0)`` means "everything")."""
    if n <= 0:
        return np.zeros((channels, 0), np.float32)
    return reader.read(n)


def _is_mp3(path: str) -> bool:
    return os.path.splitext(path)[1].lower() == ".mp3"


class _Trimmed:
    """A pedalboard reader seen from frame ``start`` for ``count`` frames
    (an MP3's audio without the encoder's delay and padding): ``frames``,
    ``read``, ``seek``, ``tell`` and ``close`` as pedalboard's own reader
    has them, in the trimmed frames."""

    def __init__(self, raw, start: int, count: int):
        self._raw, self._start, self.frames = raw, start, count
        self.samplerate, self.num_channels, self.file_dtype = raw.samplerate, raw.num_channels, raw.file_dtype
        self.duration = count / raw.samplerate
        self._pos = 0
        raw.seek(start)

    def read(self, n: int) -> np.ndarray:
        x = _read_upto(self._raw, min(int(n), self.frames - self._pos), self.num_channels)
        self._pos += x.shape[1]
        return x

    def seek(self, pos: int) -> None:
        self._pos = max(0, min(int(pos), self.frames))
        self._raw.seek(self._start + self._pos)

    def tell(self) -> int:
        return self._pos

    def close(self) -> None:
        self._raw.close()


class _Resampled:
    """A reader (pedalboard's, or a :class:`_Trimmed`) from where it stands,
    resampled to ``rate``: exactly as long as what is left of it,
    ``frames * rate / samplerate`` frames rounded to the nearest (half
    up), and never none from some.

    pedalboard's ``resampled_to`` reader came out up to 2 frames short
    (measured: 8229 frames for 12345 at 48 kHz to 32 kHz, 8230 expected;
    15999 for 96001 at 48 to 8 kHz; 96000 for 88201 at 44.1 to 48 kHz):
    its resampler's last output frames depend on input past the file's
    end, which it never receives, and so never computes. Here the same
    resampler (:class:`pedalboard.io.StreamResampler`, the same
    quality, aligned from the first frame as that reader is) is fed
    silence past the end and flushed, and the output is cut at the
    expected length."""

    def __init__(self, reader, rate: int):
        from pedalboard.io import StreamResampler

        self._r, self.samplerate, self.num_channels = reader, float(rate), reader.num_channels
        left, sr = reader.frames - reader.tell(), int(round(reader.samplerate))
        self.frames = self._left = max(min(left, 1), (2 * left * int(rate) + sr) // (2 * sr))  # (exact integers)
        self._rs = StreamResampler(float(reader.samplerate), float(rate), reader.num_channels)
        self._pad = int(np.ceil(self._rs.input_latency)) + 2 * int(np.ceil(reader.samplerate / rate)) + 2
        self._buf = np.zeros((self.num_channels, 0), np.float32)
        self._ended = False

    def read(self, n: int) -> np.ndarray:
        n = min(int(n), self._left)
        while self._buf.shape[1] < n and not self._ended:
            x = _read_upto(self._r, n, self.num_channels)
            if x.shape[1]:
                y = self._rs.process(np.ascontiguousarray(x, np.float32))
            else:  # the end: silence past it, then the resampler's flush
                y = self._rs.process(np.zeros((self.num_channels, self._pad), np.float32))
                y = np.concatenate([y, self._rs.process()], axis=1)
                self._ended = True
            self._buf = np.concatenate([self._buf, y], axis=1) if self._buf.shape[1] else y
        x, self._buf = self._buf[:, :n], self._buf[:, n:]
        self._left -= x.shape[1]
        return x


#: the containers written with libsndfile (soundfile), by output extension; .mp3 and .ogg are pedalboard's encoders
_SF_MAJORS = {".wav": "WAV", ".flac": "FLAC", ".aiff": "AIFF", ".aif": "AIFF"}
_LOSSY_OUT = {".mp3": "MPEG_LAYER_III", ".ogg": "VORBIS"}
#: a lossy source's subtypes: only its decoded audio is left to keep, which 32-bit float holds whole
_LOSSY = {"MPEG_LAYER_I", "MPEG_LAYER_II", "MPEG_LAYER_III", "VORBIS", "OPUS"}
#: integer PCM, by width; 8 bits is unsigned in WAV (its only 8-bit PCM) and signed in AIFF and FLAC
_PCM_BITS = {"PCM_S8": 8, "PCM_U8": 8, "PCM_16": 16, "PCM_24": 24, "PCM_32": 32}
#: what a subtype falls back to where the output cannot hold it: 24-bit PCM for the wider ones, else 16
_WIDE = {"PCM_32", "FLOAT", "DOUBLE", "DWVW_24"}


@dataclass(frozen=True)
class OutFormat:
    """What an output file is written as: ``major``, libsndfile's container
    (``WAV``, ``WAVEX``, ``RF64``, ``AIFF``, ``FLAC``; None for MP3 and Ogg,
    pedalboard's encoders), ``subtype`` (libsndfile's name: ``PCM_24``,
    ``ALAW``, ``FLOAT`` ...) and ``note``: why the source's subtype was not
    kept, where it was not and something of it may be lost (else None)."""

    major: str | None
    subtype: str
    note: str | None = None

    def __str__(self) -> str:
        return f"{self.major or {'MPEG_LAYER_III': 'MP3', 'VORBIS': 'OGG'}[self.subtype]} {self.subtype}"


def source_format(src: str) -> tuple[str | None, str | None]:
    """``(container, subtype)`` of an input as libsndfile names them
    (``("WAV", "PCM_32")``), or ``(None, None)`` where it cannot tell."""
    import soundfile as sf

    try:
        info = sf.info(src)
    except Exception:
        return None, None
    return info.format, info.subtype


def _writable(major: str, subtype: str, sample_rate: int, channels: int) -> bool:
    """Whether libsndfile writes ``subtype`` in ``major`` at this rate and
    channel count (it is asked: a header is written to memory)."""
    import io

    import soundfile as sf

    if not sf.check_format(major, subtype):
        return False
    try:
        sf.SoundFile(io.BytesIO(), "w", int(sample_rate), int(channels), subtype, format=major).close()
    except Exception:
        return False
    return True


def output_format(src: str, dst: str, sample_rate: int, channels: int) -> OutFormat:
    """How ``dst`` is written from ``src``: the source's subtype (libsndfile's
    ``sf.info(src).subtype``) wherever the output's container holds it at
    this rate and channel count, and for a ``.wav`` output the source's own
    WAV container (plain WAV, WAVE_FORMAT_EXTENSIBLE or RF64).

    - 8-bit PCM is written as each container has it: unsigned in WAV,
      signed in AIFF and FLAC.
    - A lossy source (MP3, Vorbis, Opus) is written as 32-bit float (24-bit
      PCM in FLAC): its decoded audio, whole; no note.
    - A subtype the output cannot hold (32-bit or float in FLAC, A-law in
      FLAC, an ADPCM that libsndfile writes in mono or stereo only ...)
      becomes 24-bit PCM when it is wider than 16 bits, else 16-bit PCM,
      and the note says so.
    - ``.mp3`` and ``.ogg`` are pedalboard's encoders (MP3 at 16 bits).

    A :class:`BridgeError` where not even that PCM can be written (FLAC
    with more than 8 channels), naming the channel counts it takes."""
    ext = os.path.splitext(dst)[1].lower()
    if ext in _LOSSY_OUT:
        return OutFormat(None, _LOSSY_OUT[ext])
    major_in, sub = source_format(src)
    major = major_in if ext == ".wav" and major_in in ("WAV", "WAVEX", "RF64") else _SF_MAJORS[ext]
    lossy = sub is None or sub in _LOSSY
    want = "FLOAT" if lossy else sub
    if want in ("PCM_S8", "PCM_U8"):
        want = "PCM_S8" if major in ("AIFF", "FLAC") else "PCM_U8"
    if _writable(major, want, sample_rate, channels):
        return OutFormat(major, want)
    fallback = "PCM_24" if want in _WIDE else "PCM_16"
    if not _writable(major, fallback, sample_rate, channels):
        most = max((c for c in range(1, 65) if _writable(major, fallback, sample_rate, c)), default=0)
        raise BridgeError(f"{major} holds 1 to {most} channels, not {channels}; choose another --format, or "
                          "--channels 1" if most and channels > most else
                          f"{major} cannot be written at {sample_rate} Hz with {channels} channels")
    if lossy:
        return OutFormat(major, fallback)
    import soundfile as sf

    why = (f"{major} cannot hold {sub}" if not sf.check_format(major, want) else
           f"libsndfile writes no {want} {major} with {channels} channel(s) at {sample_rate} Hz")
    return OutFormat(major, fallback, f"written as {major} {fallback}: {why} (the source's subtype)")


class AudioWriter:
    """The output file, written in blocks: as :func:`output_format` decides
    from the source (``source``: the input file's path), with libsndfile
    (soundfile) for WAV, AIFF and FLAC and pedalboard's encoders for MP3
    (16-bit) and Ogg Vorbis. ``format`` says what was chosen, and why where
    the source's subtype was not kept.

    - Container: the source's. A plain WAV stays plain (WAVE_FORMAT_PCM or
      IEEE_FLOAT) with any number of channels: libsndfile writes what it
      is asked. (pedalboard, which wrote it before, made every file of
      more than 2 channels WAVE_FORMAT_EXTENSIBLE.) A WAVE_FORMAT_EXTENSIBLE
      source stays extensible, with its own speaker mask where the channel
      count is kept (else libsndfile's for the new count: 0x4 for mono);
      RF64 stays RF64.
    - Metadata: see :mod:`.wavmeta` (``bext``, iXML, cue points, tags).
    - Integer PCM (8 to 32 bits) is rounded to the nearest step, without
      dither, and clipped to the format's range. pedalboard reads an
      integer sample ``k`` as ``k / (2**(b-1) - 1)``; each sample is written
      as the ``k`` that reads back as the nearest value, so what was read
      is written back bit for bit (the ``dry`` chain): all of 8, 16 and 24
      bits, and 32-bit samples as far as the chain's 32-bit float holds
      them (24 significant bits; 24-bit audio in a 32-bit file comes back
      whole).
    - A-law, mu-law, ADPCM and the other codecs are encoded by libsndfile
      from 16-bit samples rounded to the nearest (pedalboard decodes them
      as ``s / 32768``, so A-law and mu-law come back bit for bit through
      ``dry``).
    - 32- and 64-bit float are written as they come from the chain (32-bit
      float), not clipped.
    - MP3/Ogg (pedalboard): a block of as many frames as channels is
      written a frame at a time (pedalboard cannot tell ``[channels,
      frames]`` from ``[frames, channels]`` in a square block)."""

    def __init__(self, path: str, sample_rate: int, channels: int, source: str, name: str | None = None,
                 history: str | None = None, audio_changed: bool = True):
        """``name``: the file that write errors name (the target, where
        ``path`` is its hidden temporary file). ``history``: what did the
        processing, for a BWF ``bext`` chunk's coding history (``chain
        NAME``; the quietcast version is put before it). ``audio_changed``:
        False for a chain without stages (a ``bext``'s loudness values
        then still hold).

        The source's metadata is carried over (:mod:`.wavmeta`): a WAV
        output gets a WAV source's chunks (written first to a second hidden
        file beside ``path``, then again with them into ``path`` at
        :meth:`close`); other outputs the tags libsndfile maps. ``notes``
        says what was left out, and why."""
        self.path, self.name = path, name or path
        self.notes: list[str] = []
        try:
            self.format = output_format(source, path, sample_rate, channels)
        except BridgeError as e:
            raise AudioFileError(self.name, f"cannot be written: {e}; output not written") from None
        sub = self.format.subtype
        self._bits = _PCM_BITS.get(sub) or (None if sub in ("FLOAT", "DOUBLE") else 16)
        self._pcm = sub in _PCM_BITS
        self._carry, self._raw, tags = self._metadata(source, int(sample_rate), int(channels), history,
                                                      audio_changed)
        try:
            if self.format.major is None:
                from pedalboard.io import AudioFile

                self._sf = None
                self._f = AudioFile(path, "w", sample_rate, channels, bit_depth=16)
            else:
                import soundfile as sf

                self._sf = True
                self._f = sf.SoundFile(self._raw, "w", int(sample_rate), int(channels), sub, format=self.format.major)
                refused = wavmeta.set_tags(self._f, tags)
                if refused:
                    self.notes.append(f"metadata: {self.format.major} holds no {', '.join(refused)} tag; "
                                      "not carried")
        except (RuntimeError, OSError, ValueError) as e:
            self._discard_raw()
            raise self._error(e) from None

    def _metadata(self, source: str, rate: int, channels: int, history: str | None, audio_changed: bool):
        """``(chunks to carry, the file libsndfile writes, tags to set)``."""
        major = self.format.major
        meta = wavmeta.read_wav_meta(source)
        if major in ("WAV", "WAVEX", "RF64") and meta is not None:
            text = f"quietcast {quietcast_version()} {history}" if history else None
            carry = wavmeta.plan(meta, rate, channels, self.format.subtype, text, audio_changed)
            self.notes.extend(carry.notes)
            if not carry.chunks:
                return carry, self.path, {}
            root, ext = os.path.splitext(self.path)
            return carry, f"{root}-meta{ext}", {}
        if meta is not None:
            self.notes.extend(n for n in meta.notes if n.startswith("metadata not carried"))
        held = [n for n in (meta.names() if meta is not None else []) if n != "LIST INFO"]
        tags = wavmeta.source_tags(source) if meta is None or not any(n.startswith("metadata not carried")
                                                                        for n in meta.notes) else {}
        if major is None:
            lost = held + (["tags"] if tags else [])
            if lost:
                self.notes.append(f"metadata not carried: {' and '.join(lost)} (an {str(self.format).split()[0]} "
                                  "output gets no metadata)")
            return None, self.path, {}
        if major == "AIFF" and set(tags) - set(wavmeta.AIFF_TAGS):
            self.notes.append(f"metadata not carried: the {', '.join(k for k in tags if k not in wavmeta.AIFF_TAGS)} "
                              "tag(s) (AIFF holds title, artist, copyright, software and comment)")
            tags = {k: v for k, v in tags.items() if k in wavmeta.AIFF_TAGS}
        if held:
            it = "it" if len(held) == 1 else "them"
            self.notes.append(f"metadata not carried: {', '.join(held)} ({major} has nowhere to hold {it}; "
                              f"a .wav output keeps {it})")
        return None, self.path, tags

    def _discard_raw(self) -> None:
        if self._raw != self.path:
            try:
                os.unlink(self._raw)
            except OSError:
                pass

    def _samples(self, y: np.ndarray) -> np.ndarray:
        """``[frames, channels]`` for libsndfile: int32 holding the integer
        sample in its top bits (libsndfile shifts it down to the subtype's
        width, exactly), or float32."""
        if self._bits is None:
            return np.ascontiguousarray(y.T, np.float32)
        if self._pcm:
            k = pcm_ints(y, self._bits)
        else:  # the codecs: 16-bit samples, as pedalboard decodes them (s / 32768). Not -32768: libsndfile
            # 1.2 encodes INT_MIN as A-law's and mu-law's largest *positive* code (-32767 has the same code)
            k = np.clip(np.rint(y.astype(np.float64) * 32768.0), -32767.0, 32767.0)
        return np.ascontiguousarray((k.astype(np.int64) << (32 - self._bits)).astype(np.int32).T)

    def write(self, y: np.ndarray) -> None:
        if y.shape[1] == 0:
            return
        try:
            if self._sf:
                self._f.write(self._samples(y))
            elif y.shape[0] == y.shape[1]:
                for j in range(y.shape[1]):
                    self._f.write(np.ascontiguousarray(y[:, j:j + 1]))
            else:
                self._f.write(np.ascontiguousarray(y))
        except (RuntimeError, OSError, AssertionError) as e:
            raise self._error(e) from None

    def close(self) -> None:
        try:
            self._f.close()
            c = self._carry
            if c is not None and self._raw != self.path:
                note = wavmeta.insert_chunks(self._raw, self.path, c.chunks, c.mask)
                if note:
                    self.notes.append(note)
            elif c is not None and c.mask is not None:
                wavmeta.set_mask(self.path, c.mask)
        except (RuntimeError, OSError) as e:
            self._discard_raw()
            raise self._error(e) from None

    def _error(self, e: Exception) -> AudioFileError:
        return AudioFileError(self.name, f"cannot be written ({write_problem(self.path, e)}); output not written")

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *exc):
        if exc_type is None:
            self.close()
        else:  # (the error that stopped the file is the one to report)
            try:
                self._f.close()
            except Exception:
                pass
            self._discard_raw()


def write_problem(path: str, e: Exception) -> str:
    """Why writing ``path`` failed. pedalboard says only "Unable to write
    data to audio file."; a write of our own to the same file fails the
    same way, and the system says why (no space left on device, file too
    large, disk quota exceeded, read-only file system ...)."""
    try:
        with open(path, "ab", buffering=0) as f:
            f.write(bytes(65_536))
    except OSError as oe:
        return oe.strerror or _short(oe)
    return _short(e)


def _short(e: Exception) -> str:
    s = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return s[:300]


def _layout(x: np.ndarray, channels: int | None) -> np.ndarray:
    if channels is None or channels == x.shape[0]:
        return x
    if channels == 1:
        return x.mean(axis=0, keepdims=True)
    if x.shape[0] == 1:
        return np.repeat(x, channels, axis=0)
    raise BridgeError(f"cannot map {x.shape[0]} channels to {channels}; only downmix to 1 or upmix from 1")


_PROC_CACHE: dict = {}
_TMP_MARK = ".qc-tmp-"  # a temporary output: .NAME.qc-tmp-PID-[BATCH-]RANDOM.EXT beside NAME
_TMP_TAG = ""  # in a --jobs worker: its batch's tag, so that the batch can remove what a dead worker left


def _processor(chain: Chain, sample_rate: int, channels: int, device: str = "cpu"):
    """One processor per (chain, rate, channels) per process, reset between
    files: plugins load once per worker, not once per file. Each file is
    judged on its own: the NaN/Inf count starts at 0, and a processor left
    with a stage fault by an earlier file is built again (a faulted stage
    stays bypassed until then, as in the live engine, and its plugin may
    be in any state)."""
    key = (id(chain), sample_rate, channels, device)
    proc = _PROC_CACHE.get(key)
    if proc is None or proc.chain is not chain or proc.faults:
        if len(_PROC_CACHE) > 8:
            _PROC_CACHE.clear()
        proc = chain.processor(sample_rate, channels, device=device)
        _PROC_CACHE[key] = proc
    else:
        proc.reset()
    proc.bad_samples = 0
    return proc


def process_file(
    chain: Chain,
    src: str,
    dst: str,
    *,
    overwrite: bool = False,
    sample_rate: int | None = None,
    channels: int | None = None,
    block: int = BLOCK,
    on_progress: Callable[[float], None] | None = None,
    device: str = "cpu",
) -> FileResult:
    """Process ``src`` through ``chain`` into ``dst``; never raises for a
    bad input file, returns a :class:`FileResult` saying what happened.
    ``device``: where denoise stages run (a Ray task given a GPU: "cuda")."""
    t0 = time.monotonic()
    res = FileResult(src, dst, ok=False)
    if _same_file(src, dst):
        res.error = "the output is the input file itself; write the output elsewhere (the original is kept)"
        return res
    if os.path.exists(dst) and not overwrite:
        res.error = exists_error(dst)
        return res
    ext = os.path.splitext(dst)[1].lower()
    if ext not in WRITE_EXTS:
        res.error = f"cannot write {ext or 'files without an extension'}; use one of {', '.join(WRITE_EXTS)}"
        return res
    folder = os.path.dirname(os.path.abspath(dst))
    tag = f"{_TMP_TAG}-" if _TMP_TAG else ""
    tmp = os.path.join(folder, f".{os.path.basename(dst)}{_TMP_MARK}{os.getpid()}-{tag}{uuid.uuid4().hex[:8]}{ext}")
    try:
        os.makedirs(folder, exist_ok=True)
        if not os.access(folder, os.W_OK):  # (else pedalboard's error names the hidden temporary file)
            res.error = f"cannot write in {folder}: no permission, or a read-only file system"
            return res
        res.seconds = _stream(chain, src, tmp, sample_rate, channels, block, on_progress, res, device)
        os.replace(tmp, dst)
        res.ok = True
    except (AudioFileError, BridgeError) as e:
        res.error = str(e).removeprefix(f"{src}: ")
    except ChainSpecError as e:
        res.error = str(e)
    except MemoryError:
        res.error = "out of memory"
    except OSError as e:
        res.error = f"{e.strerror or e} ({e.filename or dst})"
    except Exception as e:  # a decoder or plugin error: report, go on
        res.error = f"{type(e).__name__}: {_short(e)}"
    finally:
        if not res.ok and os.path.exists(tmp):
            os.unlink(tmp)
        res.elapsed = time.monotonic() - t0
    return res


def changes_audio(chain: Chain) -> bool:
    """Whether ``chain`` changes the audio at all (a chain whose stages are
    all bypassed, or that has none, passes it through unchanged)."""
    return any(not s.bypass for s in chain.stages)


def _default_fallback_note(chain: Chain) -> str | None:
    """A warning when a denoise stage of ``chain`` asked for the model
    ``default`` and got ``dsp`` (the shipped neural bundle is damaged or
    missing), with the reason; else None."""
    if not any(s.type == "denoise" and not s.bypass and s.values.get("model", "default") == "default"
               for s in chain.stages):
        return None
    from quietcast.models import default_fallback_reason

    why = default_fallback_reason()
    return None if why is None else f"model 'default' ran as 'dsp' (no neural suppression): {why}"


def _stream(chain, src, tmp, sample_rate, channels, block, on_progress, res, device="cpu") -> float:
    raw, reader = _open_input(src, sample_rate)
    try:
        sr = int(round(reader.samplerate))
        in_ch = reader.num_channels
        ch = channels or in_ch
        lo, hi = SAMPLE_RATES
        if reader is raw and not lo <= sr <= hi:
            raise AudioFileError(src, f"its sample rate, {sr} Hz, is out of the range a chain runs at [{lo}, {hi}] Hz; "
                                      "resample it with --sample-rate HZ")
        proc = _processor(chain, sr, ch, device)
        L = proc.latency
        skip = L
        done = 0
        check = FlacCheck.of(src)
        if check is not None and reader is not raw:  # resampled: these samples are not the file's; check it first
            _verify_flac(src, check)
            check = None
        with AudioWriter(tmp, sr, ch, src, name=res.dst, history=f"chain {chain.name}",
                         audio_changed=changes_audio(chain)) as out:
            res.format = str(out.format)
            if out.format.note:
                res.warnings.append(out.format.note)
            while True:
                try:
                    x = reader.read(block)
                except Exception as e:
                    raise AudioFileError(src, f"decoding failed after {done / sr:.2f} s: {_short(e)}") from None
                if x.shape[1] == 0:
                    break
                if check is not None:
                    check.update(x)
                x = _layout(x, channels)
                y = proc.process(x)
                done += x.shape[1]
                if skip:
                    cut = min(skip, y.shape[1])
                    y = y[:, cut:]
                    skip -= cut
                if y.shape[1]:
                    out.write(y)
                if proc.faults:
                    name = next(iter(proc.faults))
                    raise BridgeError(f"stage {name!r} failed {proc.fault_text(name, sr)}; output not written")
                if on_progress:
                    on_progress(x.shape[1] / sr)
            if done == 0:
                raise AudioFileError(src, "holds no audio frames")
            if check is not None and not check.ok():
                raise AudioFileError(src, FLAC_DAMAGED)
            # flush the chain's latency: the output is exactly as long as the input
            if L:
                tail = proc.process(np.zeros((ch, L), np.float32))[:, skip:]
                out.write(tail)
            if proc.faults:
                name, why = next(iter(proc.faults.items()))
                raise BridgeError(f"stage {name!r} failed at the end of the file ({why}); output not written")
        res.warnings.extend(out.notes)
        if proc.bad_samples:
            res.warnings.append(f"{proc.bad_samples} NaN/Inf input sample(s) were replaced by silence")
        note = _default_fallback_note(chain)
        if note:
            res.warnings.append(note)
        return done / sr
    finally:
        raw.close()


# --------------------------------------------------------------------------
# many files

_WORKER_CHAIN: Chain | None = None
_WORKER_STOP = None  # the batch's stop event: set by the parent when the batch is interrupted
_WORKER_SIGINT = False  # this worker got SIGINT (Ctrl-C at a terminal reaches the whole process group)
_WORKER_BUSY = False  # a file is being processed

INTERRUPTED = "interrupted; output not written"
NOT_STARTED = "not started: interrupted"
CRASHED = "crashed the worker process (e.g. a plugin or decoder segfault); output not written"


def _worker_init(chain_doc: dict, source: str, stop=None, tmp_tag: str = "") -> None:
    global _WORKER_CHAIN, _WORKER_STOP, _TMP_TAG
    _WORKER_STOP, _TMP_TAG = stop, tmp_tag
    signal.signal(signal.SIGINT, _worker_sigint)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})  # (blocked from its start: see _spawning)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    _WORKER_CHAIN = Chain.from_dict(chain_doc, source=source)


def _worker_sigint(signum, frame) -> None:
    """Ctrl-C in a worker: take no further file, and stop the one running
    now (its temporary output is removed on the way out). An idle worker
    stays alive to answer the files already handed to it with
    :data:`NOT_STARTED`, so the pool shuts down in order."""
    global _WORKER_SIGINT
    if _WORKER_SIGINT:
        return  # once: a second Ctrl-C must not cut short the clean-up of the first
    _WORKER_SIGINT = True
    if _WORKER_BUSY:
        raise KeyboardInterrupt


def _worker_stopped() -> bool:
    return _WORKER_SIGINT or (_WORKER_STOP is not None and _WORKER_STOP.is_set())


def _worker_check(_seconds: float) -> None:
    if _worker_stopped():  # (the parent alone was interrupted, e.g. kill -INT)
        raise KeyboardInterrupt


def _worker_run(job: Job, overwrite, sample_rate, channels) -> FileResult:
    global _WORKER_BUSY
    if _worker_stopped():
        return FileResult(job.src, job.dst, ok=False, error=NOT_STARTED)
    _WORKER_BUSY = True
    try:
        return process_file(_WORKER_CHAIN, job.src, job.dst, overwrite=overwrite, sample_rate=sample_rate,
                            channels=channels, on_progress=_worker_check)
    except KeyboardInterrupt:
        return FileResult(job.src, job.dst, ok=False, error=INTERRUPTED)
    finally:
        _WORKER_BUSY = False


class _spawning:
    """Block SIGINT in this thread while worker processes are started: a
    worker inherits the mask, so a Ctrl-C during its start-up waits for
    its own handler (:func:`_worker_init`) instead of killing it with a
    traceback; here it is delivered (KeyboardInterrupt) on leaving."""

    def __enter__(self):
        self._old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})

    def __exit__(self, *exc):
        signal.pthread_sigmask(signal.SIG_SETMASK, self._old)


def hidden_beside(jobs: Iterable[Job], marks: tuple[str, ...]):
    """The hidden files beside these jobs' targets named ``.TARGET`` + a
    mark + anything (temporary outputs, segments): ``(path, target,
    rest after the mark)`` for each."""
    by_folder: dict[str, dict[str, str]] = {}
    for j in jobs:
        by_folder.setdefault(os.path.dirname(os.path.abspath(j.dst)), {})[os.path.basename(j.dst)] = j.dst
    for folder, names in by_folder.items():
        try:
            entries = os.listdir(folder)
        except OSError:
            continue
        for e in entries:
            if not e.startswith("."):
                continue
            for mark in marks:
                name, found, rest = e[1:].rpartition(mark)
                if found and name in names:
                    yield os.path.join(folder, e), names[name], rest
                    break


def _remove_tmp(jobs: Iterable[Job], tag: str) -> None:
    """Remove the temporary outputs that workers of batch ``tag`` left
    beside these jobs' targets (a worker that died, or was ended when
    another one crashed, cannot remove its own)."""
    for path, _, rest in hidden_beside(jobs, (_TMP_MARK,)):
        if rest.split("-")[1:2] == [tag]:
            try:
                os.unlink(path)
            except OSError:
                pass


def _run_pool(chain: Chain, jobs: list[Job], workers: int, progress: "Progress | None", **kw) -> list[FileResult]:
    """``jobs`` in a pool of ``workers`` processes, results in job order.

    A worker that dies (BrokenProcessPool: a plugin's segfault, the OOM
    killer) breaks the pool and every file not finished with it; those
    files run again one at a time in a new pool, so a file that kills its
    worker again is the culprit (:data:`CRASHED`) and the others are done.
    KeyboardInterrupt: no queued file is started, the running ones stop,
    no temporary output is left, and the interrupt goes on up."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")  # safe with torch and plugin hosts
    stop = ctx.Event()
    tag = uuid.uuid4().hex[:8]
    init = dict(mp_context=ctx, initializer=_worker_init, initargs=(chain.to_dict(), chain.source, stop, tag))
    slots: list[FileResult | None] = [None] * len(jobs)
    pool = None
    # an output that appears during the batch was written whole by it (written aside, then renamed): a
    # worker ended by another's crash after its rename, before its result came back, did finish it
    existed = [os.path.exists(j.dst) for j in jobs]

    def done(i: int, r: FileResult) -> None:
        slots[i] = r
        if progress:
            progress.file_done(r)

    def failed(i: int, e: Exception) -> FileResult:
        return FileResult(jobs[i].src, jobs[i].dst, ok=False, error=f"worker failed: {type(e).__name__}: {_short(e)}")

    try:
        with _spawning():  # (workers start as jobs are submitted)
            pool = ProcessPoolExecutor(max_workers=min(workers, len(jobs)), **init)
            futs = {pool.submit(_worker_run, j, **kw): i for i, j in enumerate(jobs)}
        again = []
        for fut in as_completed(futs):
            i = futs[fut]
            try:
                done(i, fut.result())
            except BrokenProcessPool:
                again.append(i)
            except Exception as e:
                done(i, failed(i, e))
        pool.shutdown(wait=True)
        pool = None
        if again:
            _remove_tmp((jobs[i] for i in again), tag)
        for i in sorted(again):  # one at a time: a crash now names its file
            with _spawning():
                if pool is None:
                    pool = ProcessPoolExecutor(max_workers=1, **init)
                mine = not existed[i] and os.path.exists(jobs[i].dst)
                fut = pool.submit(_worker_run, jobs[i], **(dict(kw, overwrite=True) if mine else kw))
            try:
                r = fut.result()
            except BrokenProcessPool:
                pool.shutdown(wait=True)
                pool = None
                _remove_tmp([jobs[i]], tag)
                r = FileResult(jobs[i].src, jobs[i].dst, ok=False, error=CRASHED)
            except Exception as e:
                r = failed(i, e)
            done(i, r)
    except KeyboardInterrupt:
        stop.set()  # (workers that got no SIGINT of their own stop at their next block)
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
        _remove_tmp(jobs, tag)
        raise
    finally:
        if pool is not None:
            pool.shutdown(wait=True)
    return [r for r in slots if r is not None]


def process_files(
    chain: Chain,
    jobs: list[Job],
    *,
    workers: int = 1,
    overwrite: bool = False,
    sample_rate: int | None = None,
    channels: int | None = None,
    progress: "Progress | None" = None,
    skip_existing: bool = False,
) -> Summary:
    """Process every job; one failure never stops the others (with
    ``workers`` > 1 not even a crash of a worker process: see
    :func:`_run_pool`). ``skip_existing``: a job whose output exists is
    not run (a batch that was interrupted goes on where it stopped); it
    counts as skipped. KeyboardInterrupt stops the batch and goes on up."""
    t0 = time.monotonic()
    jobs, skipped = split_existing(jobs) if skip_existing else (jobs, [])
    results: list[FileResult] = []
    if progress:
        progress.start(len(jobs))
    if workers <= 1 or len(jobs) <= 1:
        for job in jobs:
            if progress:
                progress.file_started(job.src)
            r = process_file(chain, job.src, job.dst, overwrite=overwrite, sample_rate=sample_rate,
                             channels=channels, on_progress=progress.advance if progress else None)
            results.append(r)
            if progress:
                progress.file_done(r)
    else:
        results = _run_pool(chain, jobs, workers, progress, overwrite=overwrite, sample_rate=sample_rate,
                            channels=channels)
    if progress:
        progress.finish()
    return Summary(skipped + results, time.monotonic() - t0)


def split_existing(jobs: list[Job]) -> tuple[list[Job], list[FileResult]]:
    """The jobs still to run, and a skipped result for each whose output
    exists already."""
    todo, skipped = [], []
    for j in jobs:
        if os.path.exists(j.dst):
            skipped.append(FileResult(j.src, j.dst, ok=True, skipped=True))
        else:
            todo.append(j)
    return todo, skipped


class Progress:
    """A one-line progress display on a terminal (stderr), silent when
    stderr is not a terminal unless ``force``."""

    def __init__(self, total_seconds: float = 0.0, stream=None, force: bool = False):
        self.stream = stream or sys.stderr
        self.enabled = force or getattr(self.stream, "isatty", lambda: False)()
        self.total_seconds = total_seconds
        self.done_seconds = 0.0
        self.files = 0
        self.files_done = 0
        self.failed = 0
        self._t0 = time.monotonic()
        self._last = 0.0
        self._current = ""

    def start(self, files: int) -> None:
        self.files = files
        self._t0 = time.monotonic()
        self._draw(force=True)

    def file_started(self, src: str) -> None:
        self._current = os.path.basename(src)
        self._draw(force=True)

    def advance(self, seconds: float) -> None:
        self.done_seconds += seconds
        self._draw()

    def file_done(self, r: FileResult) -> None:
        self.files_done += 1
        if not r.ok:
            self.failed += 1
        elif self.files > 1 and self._current == "":
            self.done_seconds += r.seconds
        self._draw(force=True)

    def finish(self) -> None:
        if self.enabled:
            self._draw(force=True)
            self.stream.write("\n")
            self.stream.flush()

    def _draw(self, force: bool = False) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if not force and now - self._last < 0.2:
            return
        self._last = now
        el = now - self._t0
        pct = ""
        if self.total_seconds:
            frac = min(1.0, self.done_seconds / self.total_seconds)
            bar = "#" * int(frac * 24)
            eta = (el / frac - el) if frac > 0 else 0
            pct = f"[{bar:<24}] {frac * 100:5.1f}% eta {eta:5.0f}s "
        line = (f"\r{pct}{self.files_done}/{self.files} files"
                f"{', ' + str(self.failed) + ' failed' if self.failed else ''} "
                f"{self.done_seconds:8.1f}s audio {el:6.1f}s {self._current[:30]}")
        self.stream.write(line + "\x1b[K")
        self.stream.flush()


def total_duration(jobs: list[Job]) -> float:
    """Sum of input durations (0 for unreadable files) for the progress bar."""
    from pedalboard.io import AudioFile

    total = 0.0
    for j in jobs:
        try:
            with AudioFile(j.src) as f:
                total += f.duration
        except Exception:
            pass
    return total
