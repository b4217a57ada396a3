"""Build the clip that ``quietcast demo`` ships (daemon/assets/demo/).

Reproducible: the same sources and the same seed give the same files.

    python bench/make_demo_clip.py [--data ../shared/data] [--out daemon/assets/demo]

What it makes (48 kHz, mono, 16-bit FLAC, both exactly the same length):

- ``clean.flac``: two LJ Speech utterances (public domain), resampled to
  48 kHz, levelled to about -24 dBFS RMS over the voice, with a 1 s silent
  lead-in, a short pause between them and a short tail.
- ``noise.flac``: a stationary recorded room/machine noise bed
  (``noise/misc/noise1.flac``, from an Apache-2.0 / MIT repository's test
  samples) resampled to 48 kHz, plus a faint seeded synthetic hiss above
  its 8 kHz band edge (so the bed covers the full 48 kHz band as a real
  microphone chain's would), scaled so that the whole clip's SNR is 5 dB.

The demo adds them at run time (noisy = clean + noise), so every SNR
figure it prints is exact. Only licence-clean sources are used: no
UrbanSound8K (non-commercial) and no nonspeech100 (licence not stated).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import SR, fade, hiss, load_48k, voice_rms_db  # noqa: E402

SEED = 20240611
LEAD_IN_S = 1.0        # noise only, so the noise floor is obvious
GAP_S = 0.45           # pause between the two utterances
TAIL_S = 0.5
SNR_DB = 5.0           # whole-clip energy ratio clean : noise
VOICE_RMS_DBFS = -24.0 # over voice-active 20 ms frames
HISS_DB = -30.0        # synthetic hiss level relative to the recorded bed

SPEECH = ["speech/ljspeech/LJ001-0107.flac", "speech/ljspeech/LJ001-0054.flac"]
NOISE = "noise/misc/noise1.flac"
NOISE_OFFSET_S = 4.0   # where in the noise recording the bed starts

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)


def build(data: str) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(SEED)
    parts = [np.zeros(int(LEAD_IN_S * SR), np.float32)]
    for i, rel in enumerate(SPEECH):
        if i:
            parts.append(np.zeros(int(GAP_S * SR), np.float32))
        parts.append(fade(load_48k(os.path.join(data, rel))[0]))
    parts.append(np.zeros(int(TAIL_S * SR), np.float32))
    clean = np.concatenate(parts)
    n = len(clean)
    clean *= 10 ** ((VOICE_RMS_DBFS - voice_rms_db(clean)) / 20)

    bed = load_48k(os.path.join(data, NOISE))[0]
    start = int(NOISE_OFFSET_S * SR)
    if len(bed) < start + n:
        raise SystemExit(f"{NOISE} is too short for a {n / SR:.1f} s clip")
    bed = bed[start:start + n].astype(np.float64)
    bed -= bed.mean()
    h = hiss(n, rng, np.float32).astype(np.float64)  # float32 on the way, as the shipped clip was built
    h *= np.sqrt(np.mean(bed**2) / np.mean(h**2)) * 10 ** (HISS_DB / 20)
    noise = bed + h
    # fade the bed in over 20 ms so the file does not start with a step
    ramp = np.minimum(1.0, np.arange(n) / (0.02 * SR))
    noise *= ramp
    noise *= np.sqrt(np.sum(clean.astype(np.float64) ** 2) / np.sum(noise**2) / 10 ** (SNR_DB / 10))
    noise = noise.astype(np.float32)

    peak = np.max(np.abs(clean + noise))
    if peak > 10 ** (-3 / 20):
        raise SystemExit(f"mix peaks at {20 * np.log10(peak):.1f} dBFS; lower VOICE_RMS_DBFS")
    return quantize(clean), quantize(noise)


def quantize(x: np.ndarray) -> np.ndarray:
    """Round to 16-bit steps here, so the files hold exactly these values."""
    return (np.round(np.clip(x, -1, 32767 / 32768) * 32768) / 32768).astype(np.float32)


def write(path: str, x: np.ndarray) -> None:
    from pedalboard.io import AudioFile

    with AudioFile(path, "w", SR, 1, bit_depth=16) as f:
        f.write(x[None, :])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=os.path.normpath(os.path.join(REPO, "..", "shared", "data")))
    ap.add_argument("--out", default=os.path.join(REPO, "daemon", "assets", "demo"))
    a = ap.parse_args(argv)
    clean, noise = build(a.data)
    os.makedirs(a.out, exist_ok=True)
    for name, x in (("clean.flac", clean), ("noise.flac", noise)):
        p = os.path.join(a.out, name)
        write(p, x)
        digest = hashlib.sha256(x.tobytes()).hexdigest()[:16]
        print(f"{p}: {len(x) / SR:.2f} s, {os.path.getsize(p) / 1024:.0f} KiB, samples sha256 {digest}")
    e = lambda v: float(np.sum(v.astype(np.float64) ** 2))  # noqa: E731
    print(f"SNR {10 * np.log10(e(clean) / e(noise)):.2f} dB, voice {voice_rms_db(clean):.1f} dBFS RMS, "
          f"mix peak {20 * np.log10(np.max(np.abs(clean + noise))):.1f} dBFS")
    return 0


if __name__ == "__main__":
    sys.exit(main())
