"""Model bundles (models/bundle.py): what a damaged or hand-edited bundle
gives (a BundleError that names the file and what is wrong, never another
exception).

Every damaged bundle here is a copy in a temporary folder; the shipped
bundles under models/assets are never touched."""

from __future__ import annotations

import hashlib
import io
import json
import os
import pathlib

import pytest
import torch

from quietcast.models import bundle as B
from quietcast.models.bundle import BundleError, load_bundle, save_bundle, verify_bundle
from quietcast.models.neural import QCNet

SMALL = {"hidden": 16, "enc_dim": 8, "df_enc_dim": 8, "pause_head": 1}


def _net(seed: int = 0, **arch) -> QCNet:
    torch.manual_seed(seed)
    return QCNet(**dict(SMALL, **arch))


def _save(path, seed: int = 0, fmt: str = "auto", defaults=None, **arch) -> pathlib.Path:
    net = _net(seed, **arch)
    save_bundle(net, {"model": "neural", "arch": net.arch, "defaults": defaults or {"strength_db": 20.0},
                      "licence": {"commercial_use": True, "note": "test weights"}}, path, fmt=fmt)
    return pathlib.Path(path)


def _edit(path: pathlib.Path, fn) -> None:
    """Hand-edit config.json (the weights and their sha256 stay right)."""
    cfg = json.loads((path / "config.json").read_text())
    fn(cfg)
    (path / "config.json").write_text(json.dumps(cfg))


def _write_weights(path: pathlib.Path, sd: dict, name: str = "weights.safetensors") -> None:
    """Write ``sd`` as the bundle's weights as they are (not through
    save_bundle, which refuses bad ones), with the right sha256."""
    from safetensors.torch import save

    data = save(sd) if name.endswith(".safetensors") else _pt_bytes(sd)
    (path / name).write_bytes(data)
    _edit(path, lambda c: c.__setitem__("weights", {"file": name, "sha256": hashlib.sha256(data).hexdigest()}))


def _pt_bytes(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


@pytest.fixture
def small(tmp_path) -> pathlib.Path:
    return _save(tmp_path / "small")


# ------------------------------------------------------- damaged files (1)
@pytest.mark.parametrize("raw, kind", [("[]", "list"), ('"hello"', "str"), ("3", "int"), ("null", "null")])
def test_a_config_that_is_not_an_object_is_a_bundle_error(small, raw, kind):
    (small / "config.json").write_text(raw)
    for fn in (verify_bundle, load_bundle):
        with pytest.raises(BundleError, match=rf"{small}/config\.json: not a quietcast-bundle config: "
                                              rf"the file holds a JSON {kind}, not an object"):
            fn(small)


needs_proc_mem = pytest.mark.skipif(not os.path.exists("/proc/self/mem"), reason="reading /proc/self/mem gives EIO")


@needs_proc_mem
def test_unreadable_weights_are_a_bundle_error(small, monkeypatch):
    """A weights file that cannot be read (EIO: a bad disk; here a link to
    /proc/self/mem, whose first page cannot be read) is a BundleError that
    names it, when checked (sha256) and when loaded (read after the check)."""
    w = small / "weights.safetensors"
    good = verify_bundle(small)
    data = w.read_bytes()
    w.unlink()
    w.symlink_to("/proc/self/mem")
    for fn in (verify_bundle, load_bundle):
        with pytest.raises(BundleError, match=rf"^{w}: cannot read weights: Input/output error$"):
            fn(small)
    monkeypatch.setattr(B, "verify_bundle", lambda path: good)  # it became unreadable after the check
    with pytest.raises(BundleError, match=rf"^{w}: cannot read weights: Input/output error$"):
        load_bundle(small)
    monkeypatch.undo()
    w.unlink()
    w.write_bytes(data)
    (small / "config.json").rename(small / "c.json")
    (small / "config.json").symlink_to("/proc/self/mem")
    with pytest.raises(BundleError, match=r"config\.json: unreadable config: Input/output error"):
        verify_bundle(small)
