"""Model bundles: a folder with ``config.json`` + weights + checksum.

Layout of a bundle folder::

    config.json          {"format": "quietcast-bundle", "format_version": 1,
                          "model": "neural", "arch": {...hyper-parameters...},
                          "latency_samples": 960, "weights": {"file": ...,
                          "sha256": ...}, "training": {...}, "data": {...},
                          "defaults": {"strength_db": ...}, ...}
    weights.safetensors  the state_dict (or weights.pt, a state_dict saved
                         with torch.save and loaded with weights_only=True)
    MODEL_CARD.md        (shipped bundles) architecture, data, metrics

Bundles named by a plain name live in ``models/assets/<name>/`` (installed
as package data). The sha256 of the weights file is checked on every load;
a mismatch raises :class:`BundleError` naming the file. Nothing is ever
downloaded.

Every problem with a bundle is a :class:`BundleError` (a ValueError)
naming the file and what is wrong: a config that is not a JSON object,
keys of ``arch`` / ``defaults`` / ``licence`` of the wrong type (checked
by :func:`verify_bundle`, without torch), an unreadable file, weights
with NaN or Inf (:func:`load_bundle`), an ``arch`` no network can be
built from, ``defaults`` out of the suppressor's ranges, or weights that
do not fit the network (naming the first tensor that differs;
:func:`check_bundle` runs all of these).

:func:`save_bundle` replaces a bundle so that the folder holds a loadable
bundle, the old or the new one, at every instant: the weights keep their
usual name (``weights.safetensors`` or ``weights.pt``, the name
config.json gives), written through a temporary copy.

This module imports torch only inside the functions that need it.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import pathlib
import re
import uuid
from dataclasses import dataclass, field

from . import common

ASSETS = pathlib.Path(__file__).resolve().parent / "assets"
#: a bundle's files' permission bits, whatever the umask: bundles are package data
BUNDLE_MODE = 0o644
FORMAT = "quietcast-bundle"
FORMAT_VERSION = 1
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")

__all__ = ["Bundle", "BundleError", "load_bundle", "save_bundle", "bundle_path", "list_bundles",
           "verify_bundle", "check_bundle", "sha256_file"]


class BundleError(ValueError):
    """A bundle is missing, malformed or fails its checksum."""


def sha256_file(path: pathlib.Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def bundle_path(name_or_path) -> pathlib.Path:
    """A bundle name (``models/assets/<name>``) or a folder path."""
    if isinstance(name_or_path, pathlib.Path) or "/" in str(name_or_path) or "\\" in str(name_or_path):
        return pathlib.Path(name_or_path)
    name = str(name_or_path)
    if not _NAME_RE.match(name):
        raise BundleError(f"invalid bundle name {name!r}")
    return ASSETS / name


def list_bundles() -> list[str]:
    """Names of the bundles under ``models/assets`` (folders with a config.json)."""
    if not ASSETS.is_dir():
        return []
    return sorted(p.name for p in ASSETS.iterdir() if (p / "config.json").is_file())


#: the keys of a bundle's ``arch`` (the network's hyper-parameters, those of
#: :data:`quietcast.models.neural.DEFAULT_ARCH`, which fills in a key left
#: out) and what each must be: ``(kind, least)``, kind ``"int"`` (a whole
#: number, not a bool, >= least) or ``"float"`` (a finite number > least)
ARCH_TYPES: dict[str, tuple[str, float]] = {
    "sample_rate": ("int", 1), "hop": ("int", 1), "window": ("int", 1), "n_bands": ("int", 2),
    "min_band_bins": ("int", 1), "df_bins": ("int", 1), "df_order": ("int", 0), "fine_bins": ("int", 0),
    "harm_bins": ("int", 0), "floor_input": ("int", 0), "enc_dim": ("int", 1), "df_enc_dim": ("int", 1),
    "hidden": ("int", 1), "norm_tau_s": ("float", 0.0), "warm_start": ("int", 0), "pitch_input": ("int", 0),
    "pause_head": ("int", 0),
}
#: the keys of a bundle's ``defaults`` (the suppressor's runtime parameters;
#: their ranges are checked by :meth:`Bundle.check_config`); only
#: ``background_db`` may be null (-inf: no background mixed back)
DEFAULTS_KEYS = ("strength_db", "background_db", "pitch_filter", "pause_db", "pause_threshold")


def _kind(v) -> str:
    return "null" if v is None else type(v).__name__


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _check_sections(cfg: dict, where: str) -> None:
    """``arch``, ``defaults`` and ``licence`` of a config: the right keys of
    the right types (no torch). Raises BundleError naming ``where``, the
    key and what is wrong."""
    arch = cfg["arch"]
    unknown = sorted(set(arch) - set(ARCH_TYPES))
    if unknown:
        raise BundleError(f"{where}: arch: unknown keys {unknown}; known: {', '.join(ARCH_TYPES)}")
    for k, v in arch.items():
        kind, least = ARCH_TYPES[k]
        if kind == "int" and not (isinstance(v, int) and not isinstance(v, bool) and v >= least):
            raise BundleError(f"{where}: arch.{k}: expected a whole number >= {least}, got {v!r} ({_kind(v)})")
        if kind == "float" and not (_is_number(v) and math.isfinite(v) and v > least):
            raise BundleError(f"{where}: arch.{k}: expected a finite number > {least:g}, got {v!r} ({_kind(v)})")
    defaults = cfg.get("defaults", {})
    if not isinstance(defaults, dict):
        raise BundleError(f"{where}: 'defaults' must be an object, got {_kind(defaults)}")
    unknown = sorted(set(defaults) - set(DEFAULTS_KEYS))
    if unknown:
        raise BundleError(f"{where}: defaults: unknown keys {unknown}; known: {', '.join(DEFAULTS_KEYS)}")
    for k, v in defaults.items():
        if v is None and k == "background_db":
            continue
        if not _is_number(v) or math.isnan(v):
            raise BundleError(f"{where}: defaults.{k}: expected a number, got {v!r} ({_kind(v)})")
    lic = cfg.get("licence")
    if lic is not None:
        if not isinstance(lic, dict):
            raise BundleError(f"{where}: 'licence' must be an object, got {_kind(lic)}")
        if not isinstance(lic.get("commercial_use"), bool):
            raise BundleError(f"{where}: licence.commercial_use: expected true or false, "
                              f"got {lic.get('commercial_use')!r}")
        if not isinstance(lic.get("note"), str):
            raise BundleError(f"{where}: licence.note: expected a text, got {lic.get('note')!r}")
        for k in ("reasons", "copyleft"):
            if k in lic and not isinstance(lic[k], list):
                raise BundleError(f"{where}: licence.{k}: expected a list, got {_kind(lic[k])}")


def _read_config(path: pathlib.Path) -> dict:
    cfg_path = path / "config.json"
    try:
        if not cfg_path.is_file():
            raise BundleError(f"no model bundle at {path} (missing {cfg_path.name})")
        cfg = json.loads(cfg_path.read_text())
    except (OSError, ValueError) as exc:
        if isinstance(exc, BundleError):
            raise
        why = f"{exc.strerror} ({exc.filename})" if isinstance(exc, OSError) and exc.strerror else exc
        raise BundleError(f"{cfg_path}: unreadable config: {why}") from None
    if not isinstance(cfg, dict):
        raise BundleError(f"{cfg_path}: not a {FORMAT} config: the file holds a JSON {_kind(cfg)}, "
                          "not an object")
    if cfg.get("format") != FORMAT or cfg.get("format_version") != FORMAT_VERSION:
        raise BundleError(f"{cfg_path}: not a {FORMAT} v{FORMAT_VERSION} config")
    w = cfg.get("weights")
    if not isinstance(w, dict) or not isinstance(w.get("file"), str) or not isinstance(w.get("sha256"), str):
        raise BundleError(f"{cfg_path}: 'weights' must give 'file' and 'sha256'")
    if not w["file"] or "/" in w["file"] or "\\" in w["file"] or w["file"].startswith("."):
        raise BundleError(f"{cfg_path}: weights file must be a plain file name, got {w['file']!r}")
    if not isinstance(cfg.get("arch"), dict):
        raise BundleError(f"{cfg_path}: missing 'arch'")
    _check_sections(cfg, str(cfg_path))
    return cfg


def _unreadable(wpath: pathlib.Path, exc: OSError) -> BundleError:
    return BundleError(f"{wpath}: cannot read weights: {exc.strerror or exc}")


def verify_bundle(name_or_path) -> dict:
    """Check config and weights checksum without importing torch; returns
    the config. Raises BundleError."""
    path = bundle_path(name_or_path)
    cfg = _read_config(path)
    wpath = path / cfg["weights"]["file"]
    try:
        if not wpath.is_file():
            raise BundleError(f"{wpath}: weights file missing")
        got = sha256_file(wpath)
    except OSError as exc:
        raise _unreadable(wpath, exc) from None
    if got != cfg["weights"]["sha256"].lower():
        raise BundleError(f"{wpath}: sha256 mismatch (config.json says {cfg['weights']['sha256']}, "
                          f"file has {got}); the weights are corrupt or were replaced")
    return cfg


@dataclass
class Bundle:
    path: pathlib.Path
    config: dict
    state_dict: dict = field(repr=False)

    @property
    def name(self) -> str:
        return self.path.name

    def check_config(self) -> None:
        """What the neural suppressor needs of the config beyond the types
        :func:`verify_bundle` checks: its geometry (sample rate, hop,
        window) and ``defaults`` within the ranges of its parameters.
        Raises BundleError naming config.json and the key."""
        from .neural import DEFAULT_ARCH, NeuralSuppressor as N

        where = self.path / "config.json"
        arch = dict(DEFAULT_ARCH, **self.config["arch"])
        geometry = (arch["sample_rate"], arch["hop"], arch["window"])
        if geometry != (N.sample_rate, N.hop, N.window):
            raise BundleError(f"{where}: arch: sample_rate/hop/window {'/'.join(map(str, geometry))} differ from "
                              f"the suppressor's {N.sample_rate}/{N.hop}/{N.window}")
        ranges = dict(N.PARAMS, pause_db=N.PAUSE_PARAM, pause_threshold=N.PAUSE_THRESHOLD_PARAM)
        for k, v in (self.config.get("defaults") or {}).items():
            if v is None and k == "background_db":
                continue
            if k not in ranges or not _is_number(v):
                raise BundleError(f"{where}: defaults.{k}: not a parameter of the suppressor, or not a number: {v!r}")
            lo, hi = ranges[k][:2]
            if not lo <= v <= hi:
                raise BundleError(f"{where}: defaults.{k}: {v!r} is out of range [{lo:g}, {hi:g}]")

    def build_model(self):
        """A :class:`~quietcast.models.neural.QCNet` with these weights.
        Raises BundleError when config.json's ``arch`` cannot be built or
        the weights do not fit it (naming the first tensor that differs)."""
        from .neural import QCNet

        try:
            net = QCNet(**{k: v for k, v in self.config["arch"].items()})
        except (TypeError, ValueError, ZeroDivisionError, IndexError, KeyError) as e:
            raise BundleError(f"{self.path / 'config.json'}: arch: {e}") from None
        want, got = net.state_dict(), self.state_dict
        diffs = []
        for k, v in want.items():
            if k not in got:
                diffs.append(f"{k}: the architecture has it, the weights lack it")
            elif tuple(got[k].shape) != tuple(v.shape):
                diffs.append(f"{k}: the architecture needs shape {list(v.shape)}, the weights have {list(got[k].shape)}")
        diffs += [f"{k}: in the weights, not in the architecture" for k in got if k not in want]
        if diffs:
            raise BundleError(f"{self.path}: weights do not match the architecture of config.json "
                              f"({len(diffs)} tensor(s) differ; the first, {diffs[0]}); are they another bundle's?")
        try:
            net.load_state_dict(got, strict=True)
        except RuntimeError as exc:
            raise BundleError(f"{self.path}: weights do not match the architecture: "
                              f"{str(exc).strip().splitlines()[-1].strip()}") from None
        return net


def _decode_error(wpath: pathlib.Path, exc: Exception) -> BundleError:
    """A weights decoder's error as a BundleError. A pickle that holds more
    than tensors is refused by ``torch.load(weights_only=True)``; say only
    that (the global it names, if any), never torch's advice to load it
    with weights_only=False (which would run its code)."""
    import pickle

    if isinstance(exc, pickle.UnpicklingError):
        m = re.search(r"GLOBAL ([\w.]+)", str(exc))
        names = f" ({m.group(1)})" if m else ""
        return BundleError(f"{wpath}: not plain weights: the file holds Python objects{names} besides tensors; "
                           "refused, nothing in it was run")
    return BundleError(f"{wpath}: cannot read weights: {exc}")


def load_bundle(name_or_path="default") -> Bundle:
    """Load and verify a bundle (name under models/assets, or a folder):
    config, sha256, a state_dict of tensors, every value finite."""
    path = bundle_path(name_or_path)
    cfg = verify_bundle(path)
    wpath = path / cfg["weights"]["file"]
    import torch

    try:
        data = wpath.read_bytes()
    except OSError as exc:
        raise _unreadable(wpath, exc) from None
    if hashlib.sha256(data).hexdigest() != cfg["weights"]["sha256"].lower():  # changed since verify
        raise BundleError(f"{wpath}: sha256 mismatch (file changed while loading)")
    try:
        if wpath.suffix == ".safetensors":
            from safetensors.torch import load as st_load

            sd = st_load(data)
        else:
            import io

            sd = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any decoder error is a bad bundle
        raise _decode_error(wpath, exc) from None
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise BundleError(f"{wpath}: not a state_dict of tensors")
    bad = _non_finite(sd)
    if bad:
        raise BundleError(f"{wpath}: tensor {bad}; the weights are unusable (a training run that diverged?)")
    return Bundle(path=path, config=cfg, state_dict=sd)


def _non_finite(sd: dict) -> str | None:
    """``"NAME holds N NaN/Inf value(s) of M"`` for the first tensor of
    ``sd`` with a value that is not finite, else None."""
    import torch

    for k, v in sd.items():
        if v.is_floating_point() or v.is_complex():
            ok = torch.isfinite(v)
            if not bool(ok.all()):
                return f"{k!r} holds {int((~ok).sum())} NaN/Inf value(s) of {v.numel()}"
    return None


def check_bundle(name_or_path) -> Bundle:
    """Everything short of running it: :func:`load_bundle` (config and its
    types, sha256, finite weights), :meth:`Bundle.check_config` (geometry,
    defaults in range) and the network built with the weights
    (:meth:`Bundle.build_model`). Returns the Bundle; raises BundleError
    saying what is wrong. Imports torch; about as fast as loading."""
    b = load_bundle(name_or_path)
    b.check_config()
    b.build_model()
    return b


def save_bundle(model, config: dict, path, fmt: str = "auto") -> pathlib.Path:
    """Write ``model`` (an nn.Module or a state_dict) and ``config`` to the
    folder ``path``; fills in format, weights file name and sha256.
    ``fmt``: "safetensors", "pt" or "auto" (safetensors when installed).

    Refuses (BundleError, the folder untouched) weights with a NaN or Inf
    and a config that :func:`verify_bundle` would refuse. Over an existing
    bundle the folder holds a loadable bundle, the old one or the new one,
    at every instant, whenever the write fails or stops: the new weights
    go to a file of their own first (fsynced), config.json is replaced
    (atomically) to name it, the weights are copied to their usual name
    (``weights.safetensors`` or ``weights.pt``, replaced atomically), and
    config.json is replaced again to name that; the extra copy is then
    removed. Saves to one folder are serialised (an flock on the folder).
    """
    import torch

    path = pathlib.Path(path)
    sd = model.state_dict() if hasattr(model, "state_dict") else dict(model)
    sd = {k: v.detach().to("cpu").contiguous() for k, v in sd.items()}
    if fmt == "auto":
        try:
            import safetensors  # noqa: F401

            fmt = "safetensors"
        except ImportError:
            fmt = "pt"
    if fmt == "safetensors":
        from safetensors.torch import save as st_save

        wname = "weights.safetensors"
        data = st_save(sd, metadata={"format": FORMAT})
    elif fmt == "pt":
        import io

        wname = "weights.pt"
        buf = io.BytesIO()
        torch.save(sd, buf)
        data = buf.getvalue()
    else:
        raise ValueError(f"unknown weights format {fmt!r}")
    bad = _non_finite(sd)
    if bad:
        raise BundleError(f"{path}: not written: tensor {bad}")
    cfg = dict(config)
    cfg["format"] = FORMAT
    cfg["format_version"] = FORMAT_VERSION
    weights = {"file": wname, "sha256": hashlib.sha256(data).hexdigest(),
               "params": int(sum(v.numel() for v in sd.values()))}
    cfg["weights"] = weights
    if not isinstance(cfg.get("arch"), dict):
        raise BundleError(f"{path}: not written: the config has no 'arch'")
    _check_sections(cfg, f"{path / 'config.json'} (not written)")

    def config_text(wfile: str) -> bytes:
        return (json.dumps(dict(cfg, weights=dict(weights, file=wfile)), indent=2, sort_keys=False) + "\n").encode()

    path.mkdir(parents=True, exist_ok=True)
    import fcntl

    # one save at a time per folder (two trainings with the same --out): the steps below, and the
    # clean-up of what other saves left, assume no other saver is half-way
    lock = os.open(path, os.O_RDONLY)  # (flock on the folder itself: no file of its own)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return _save_locked(path, data, wname, config_text)
    finally:
        os.close(lock)


def _save_locked(path: pathlib.Path, data: bytes, wname: str, config_text) -> pathlib.Path:
    tag = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
    staged = f"weights-new-{tag}{pathlib.Path(wname).suffix}"  # a plain name: loadable as it is
    common.write_synced(path / staged, data, BUNDLE_MODE)
    try:
        common.atomic_write(path / "config.json", config_text(staged), BUNDLE_MODE, tag)  # from here on the new bundle
    except BaseException:
        try:
            os.unlink(path / staged)
        except OSError:
            pass
        raise
    common.atomic_write(path / wname, data, BUNDLE_MODE, tag)  # config.json still names the staged copy
    common.atomic_write(path / "config.json", config_text(wname), BUNDLE_MODE, tag)
    for p in path.iterdir():  # the staged copy, the other format's old weights, what interrupted saves left
        n = p.name
        if n != wname and (n in ("weights.safetensors", "weights.pt", "config.json.tmp")
                           or n.startswith("weights-new-")
                           or (n.startswith((".config.json.", ".weights.")) and n.endswith(".tmp"))):
            try:
                p.unlink()
            except OSError:
                pass
    return path
