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

This module imports torch only inside the functions that need it.
"""

from __future__ import annotations

import hashlib
import json
import pathlib
import re
from dataclasses import dataclass, field

ASSETS = pathlib.Path(__file__).resolve().parent / "assets"
FORMAT = "quietcast-bundle"
FORMAT_VERSION = 1
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")

__all__ = ["Bundle", "BundleError", "load_bundle", "save_bundle", "bundle_path", "list_bundles",
           "verify_bundle", "sha256_file"]


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


def _kind(v) -> str:
    return "null" if v is None else type(v).__name__


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
    if "/" in w["file"] or "\\" in w["file"] or w["file"].startswith("."):
        raise BundleError(f"{cfg_path}: weights file must be a plain file name, got {w['file']!r}")
    if not isinstance(cfg.get("arch"), dict):
        raise BundleError(f"{cfg_path}: missing 'arch'")
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

    def build_model(self):
        """A :class:`~quietcast.models.neural.QCNet` with these weights."""
        from .neural import QCNet

        net = QCNet(**{k: v for k, v in self.config["arch"].items()})
        try:
            net.load_state_dict(self.state_dict, strict=True)
        except RuntimeError as exc:
            raise BundleError(f"{self.path}: weights do not match the architecture: {exc}") from None
        return net


def load_bundle(name_or_path="default") -> Bundle:
    """Load and verify a bundle (name under models/assets, or a folder)."""
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
        raise BundleError(f"{wpath}: cannot read weights: {exc}") from None
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise BundleError(f"{wpath}: not a state_dict of tensors")
    return Bundle(path=path, config=cfg, state_dict=sd)


def save_bundle(model, config: dict, path, fmt: str = "auto") -> pathlib.Path:
    """Write ``model`` (an nn.Module or a state_dict) and ``config`` to the
    folder ``path``; fills in format, weights file name and sha256.
    ``fmt``: "safetensors", "pt" or "auto" (safetensors when installed)."""
    import torch

    path = pathlib.Path(path)
    path.mkdir(parents=True, exist_ok=True)
    sd = model.state_dict() if hasattr(model, "state_dict") else dict(model)
    sd = {k: v.detach().to("cpu").contiguous() for k, v in sd.items()}
    if fmt == "auto":
        try:
            import safetensors  # noqa: F401

            fmt = "safetensors"
        except ImportError:
            fmt = "pt"
    for old in ("weights.safetensors", "weights.pt"):
        if (path / old).exists():
            (path / old).unlink()
    if fmt == "safetensors":
        from safetensors.torch import save_file

        wname = "weights.safetensors"
        save_file(sd, str(path / wname), metadata={"format": FORMAT})
    elif fmt == "pt":
        wname = "weights.pt"
        torch.save(sd, path / wname)
    else:
        raise ValueError(f"unknown weights format {fmt!r}")
    (path / wname).chmod(0o644)  # safetensors writes 0600; bundles are package data
    cfg = dict(config)
    cfg["format"] = FORMAT
    cfg["format_version"] = FORMAT_VERSION
    cfg["weights"] = {"file": wname, "sha256": sha256_file(path / wname),
                      "params": int(sum(v.numel() for v in sd.values()))}
    tmp = path / "config.json.tmp"
    tmp.write_text(json.dumps(cfg, indent=2, sort_keys=False) + "\n")
    tmp.replace(path / "config.json")
    return path
