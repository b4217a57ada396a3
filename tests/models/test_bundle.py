"""Model bundles (models/bundle.py): what a damaged or hand-edited bundle
gives (a BundleError that names the file and what is wrong, never another
exception), the checks a daemon config or a chain file runs on a bundle
folder, the ``default`` model's fallback to ``dsp`` (never silent), and
save_bundle's writes (a loadable bundle at every instant).

Every damaged bundle here is a copy in a temporary folder; the shipped
bundles under models/assets are never touched (``shipped_copy`` points
the loader at a copy of them)."""

from __future__ import annotations

import errno
import hashlib
import io
import json
import logging
import os
import pathlib
import shutil

import pytest
import torch

from quietcast.models import bundle as B
from quietcast.models import common
from quietcast.models import bundle_folder, create_suppressor, default_fallback_reason, resolve_model
from quietcast.models.bundle import BundleError, check_bundle, load_bundle, save_bundle, verify_bundle
from quietcast.models.neural import DEFAULT_ARCH, NeuralSuppressor, QCNet

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
    for fn in (verify_bundle, load_bundle, check_bundle):
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
    for fn in (verify_bundle, load_bundle, check_bundle):
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


# ----------------------------------------------- configs that cannot build (3)
@pytest.mark.parametrize("edit, match", [
    (lambda c: c["arch"].__setitem__("hidden", "16"), r"arch\.hidden: expected a whole number >= 1, got '16' \(str\)"),
    (lambda c: c["arch"].__setitem__("hidden", 16.0), r"arch\.hidden: expected a whole number >= 1, got 16\.0"),
    (lambda c: c["arch"].__setitem__("hidden", True), r"arch\.hidden: expected a whole number >= 1, got True"),
    (lambda c: c["arch"].__setitem__("hidden", 0), r"arch\.hidden: expected a whole number >= 1, got 0"),
    (lambda c: c["arch"].__setitem__("window", None), r"arch\.window: expected a whole number >= 1, got None"),
    (lambda c: c["arch"].__setitem__("n_bands", 1), r"arch\.n_bands: expected a whole number >= 2, got 1"),
    (lambda c: c["arch"].__setitem__("df_order", -1), r"arch\.df_order: expected a whole number >= 0, got -1"),
    (lambda c: c["arch"].__setitem__("norm_tau_s", 0), r"arch\.norm_tau_s: expected a finite number > 0, got 0"),
    (lambda c: c["arch"].__setitem__("norm_tau_s", float("inf")), r"arch\.norm_tau_s: expected a finite number > 0"),
    (lambda c: c["arch"].__setitem__("hiden", 16), r"arch: unknown keys \['hiden'\]"),
    (lambda c: c.__setitem__("defaults", []), r"'defaults' must be an object, got list"),
    (lambda c: c.__setitem__("defaults", None), r"'defaults' must be an object, got null"),
    (lambda c: c["defaults"].__setitem__("strength_db", "loud"), r"defaults\.strength_db: expected a number, got 'loud'"),
    (lambda c: c["defaults"].__setitem__("strength_db", None), r"defaults\.strength_db: expected a number, got None"),
    (lambda c: c["defaults"].__setitem__("pause_db", float("nan")), r"defaults\.pause_db: expected a number, got nan"),
    (lambda c: c["defaults"].__setitem__("strenght_db", 3), r"defaults: unknown keys \['strenght_db'\]"),
    (lambda c: c.__setitem__("licence", "MIT"), r"'licence' must be an object, got str"),
    (lambda c: c["licence"].pop("note"), r"licence\.note: expected a text, got None"),
    (lambda c: c["licence"].__setitem__("commercial_use", "yes"), r"licence\.commercial_use: expected true or false"),
])
def test_config_types_are_checked_without_torch(small, edit, match):
    """Keys of the wrong type, unknown keys, a section that is not an
    object: refused by verify_bundle (no torch), naming config.json and the
    key, as by everything that loads the bundle."""
    _edit(small, edit)
    for fn in (verify_bundle, load_bundle, check_bundle, bundle_folder):
        with pytest.raises(BundleError, match=rf"{small}/config\.json: {match}"):
            fn(small)
    with pytest.raises(ValueError, match=match):
        create_suppressor(str(small))


@pytest.mark.parametrize("edit, match", [
    (lambda c: c["arch"].__setitem__("fine_bins", 999), r"arch: fine_bins 999 out of range 0\.\.df_bins \(64\)"),
    (lambda c: c["arch"].__setitem__("harm_bins", 999), r"arch: harm_bins 999 out of range"),
    (lambda c: c["arch"].__setitem__("min_band_bins", 100), r"arch: 32 bands of >= 100 bins do not fit in 481 bins"),
    (lambda c: c["arch"].__setitem__("warm_start", 2), r"arch: warm_start 2 must be 0 or 1"),
    (lambda c: c["arch"].__setitem__("hop", 441), r"arch: sample_rate/hop/window 48000/441/960 differ from the "
                                                   r"suppressor's 48000/480/960"),
    (lambda c: c["defaults"].__setitem__("strength_db", 99), r"defaults\.strength_db: 99 is out of range \[0, 60\]"),
    (lambda c: c["defaults"].__setitem__("pitch_filter", 2), r"defaults\.pitch_filter: 2 is out of range \[0, 1\]"),
    (lambda c: c["defaults"].__setitem__("pause_threshold", 0), r"defaults\.pause_threshold: 0 is out of range"),
])
def test_a_config_that_cannot_build_is_refused_up_front(small, edit, match):
    """Right sha256, right types, but no network can be built from it, or
    its defaults are out of the suppressor's ranges: check_bundle (and so
    bundle_folder, which a daemon config or a chain file runs) and the
    suppressor refuse it with the reason, naming config.json."""
    _edit(small, edit)
    verify_bundle(small)  # the types are right
    for fn in (check_bundle, bundle_folder):
        with pytest.raises(BundleError, match=rf"^{small}/config\.json: {match}"):
            fn(small)
    with pytest.raises(BundleError, match=rf"{small}/config\.json: {match}"):
        NeuralSuppressor(1, bundle=small)


def test_weights_of_another_bundle_name_the_first_tensor_that_differs(small, tmp_path):
    """One line, not torch's dump of every tensor."""
    other = load_bundle(_save(tmp_path / "wide", hidden=24)).state_dict
    _write_weights(small, other)
    for fn in (check_bundle, bundle_folder, lambda p: NeuralSuppressor(1, bundle=p)):
        with pytest.raises(BundleError) as e:
            fn(small)
        msg = str(e.value)
        assert "\n" not in msg and "size mismatch" not in msg and len(msg) < 300, msg
        assert msg.startswith(f"{small}: weights do not match the architecture of config.json (")
        assert "gru1.weight_ih_l0: the architecture needs shape [48, 16], the weights have [72, 16]" in msg
    same = load_bundle(_save(tmp_path / "same")).state_dict  # the right weights, and one more
    _write_weights(small, dict(same, extra=torch.zeros(1)))
    with pytest.raises(BundleError, match=r"1 tensor\(s\) differ; the first, extra: in the weights, not in the arch"):
        check_bundle(small)


def test_the_arch_types_cover_the_network(small):
    """bundle.ARCH_TYPES (checked without torch) names every key of
    DEFAULT_ARCH; a key left out takes DEFAULT_ARCH's value (the clean
    bundle has no pitch_input)."""
    assert set(B.ARCH_TYPES) == set(DEFAULT_ARCH)
    _edit(small, lambda c: (c["arch"].pop("pitch_input"), c["arch"].pop("sample_rate")))
    assert check_bundle(small).build_model().arch["sample_rate"] == 48_000


def test_bundle_folder_checks_everything_short_of_running(tmp_path):
    """What a daemon config (config check, reload) and a chain file run on
    a bundle folder: the network built and the weights fitting it."""
    from quietcast.bridge import Chain
    from quietcast.bridge.errors import ChainSpecError
    from quietcast.daemon.config import ConfigError, parse_config

    good = _save(tmp_path / "good")
    assert bundle_folder("good", str(tmp_path)) == str(good)
    bad = _save(tmp_path / "bad")
    _edit(bad, lambda c: c["arch"].__setitem__("hidden", 24))
    one = '[[channel]]\nname = "host"\n'
    with pytest.raises(ConfigError, match=r"\[engine\] model: './bad': .*weights do not match the architecture"):
        parse_config('[engine]\nmodel = "./bad"\n' + one, base_dir=str(tmp_path))
    assert parse_config('[engine]\nmodel = "./good"\n' + one, base_dir=str(tmp_path)).engine.model == str(good)
    with pytest.raises(ChainSpecError, match=r"model '\./bad': .*gru1\.weight_ih_l0"):
        Chain.from_dict({"stage": [{"name": "nr", "type": "denoise", "model": "./bad"}]}, base_dir=str(tmp_path))


# ------------------------------------------------------- bad weights (5, 8)
def test_nan_or_inf_weights_are_refused(small):
    sd = load_bundle(small).state_dict
    for bad in (float("nan"), float("inf")):
        _write_weights(small, dict(sd, **{"gain.bias": torch.full_like(sd["gain.bias"], bad)}))
        for fn in (load_bundle, check_bundle, bundle_folder):
            with pytest.raises(BundleError, match=rf"weights\.safetensors: tensor 'gain\.bias' holds 32 NaN/Inf "
                                                  r"value\(s\) of 32"):
                fn(small)


def test_a_pickle_with_code_is_refused_without_torchs_advice(small, tmp_path):
    """weights_only loading blocks it; the message says the file is not
    plain weights and never suggests weights_only=False."""
    class Code:
        def __reduce__(self):
            return (os.getcwd, ())  # harmless, and never called

    _write_weights(small, {"x": Code()}, name="weights.pt")
    with pytest.raises(BundleError) as e:
        load_bundle(small)
    msg = str(e.value)
    assert msg.startswith(f"{small}/weights.pt: not plain weights: the file holds Python objects")
    assert "weights_only" not in msg and "Re-running" not in msg and "\n" not in msg


# --------------------------------------------------------------- save (6)
def _files(path: pathlib.Path) -> list[str]:
    return sorted(p.name for p in path.iterdir())


def test_save_bundle_refuses_non_finite_weights(small):
    """No bundle with NaN or Inf weights is written; the folder is left as
    it was."""
    before = {p.name: p.read_bytes() for p in small.iterdir()}
    net = _net()
    with torch.no_grad():
        net.gru2.weight_hh_l0[3, 4] = float("nan")
    with pytest.raises(BundleError, match=r"not written: tensor 'gru2\.weight_hh_l0' holds 1 NaN/Inf value"):
        save_bundle(net, {"model": "neural", "arch": net.arch}, small)
    assert {p.name: p.read_bytes() for p in small.iterdir()} == before


def test_save_bundle_leaves_a_loadable_bundle_at_every_instant(tmp_path, monkeypatch):
    """Over an existing bundle, after every rename and removal the folder
    loads, as the old bundle or the new one; at the end it holds only
    config.json and the weights under their usual name."""
    folder = _save(tmp_path / "b", seed=1)
    old = verify_bundle(folder)["weights"]["sha256"]
    new = verify_bundle(_save(tmp_path / "ref", seed=2))["weights"]["sha256"]
    seen = []
    real_replace, real_unlink = os.replace, os.unlink

    def loads():
        seen.append(load_bundle(folder).config["weights"]["sha256"])
        assert seen[-1] in (old, new)

    def replace(a, b, **kw):
        real_replace(a, b, **kw)
        if pathlib.Path(b).parent == folder:
            loads()

    def unlink(p, **kw):
        real_unlink(p, **kw)
        if pathlib.Path(p).parent == folder:
            loads()

    monkeypatch.setattr(os, "replace", replace)
    monkeypatch.setattr(os, "unlink", unlink)
    _save(folder, seed=2)
    monkeypatch.undo()
    assert seen and seen[-1] == new
    assert _files(folder) == ["config.json", "weights.safetensors"]
    assert verify_bundle(folder)["weights"]["file"] == "weights.safetensors"
    _save(folder, seed=1, fmt="pt")  # another format: the other file goes
    assert _files(folder) == ["config.json", "weights.pt"] and verify_bundle(folder)["weights"]["sha256"] != old
    _save(folder, seed=1)
    assert _files(folder) == ["config.json", "weights.safetensors"] and verify_bundle(folder)["weights"]["sha256"] == old


def test_a_failed_save_keeps_a_loadable_bundle(tmp_path, monkeypatch):
    """The disk fills up (or the process stops) at any write or rename of
    save_bundle: the error is raised and the folder still loads, as the
    old bundle or the new one (before: the old weights were deleted first
    and the new ones written in their place)."""
    folder = tmp_path / "b"
    old = verify_bundle(_save(folder, seed=1))["weights"]["sha256"]
    new = verify_bundle(_save(tmp_path / "ref", seed=2))["weights"]["sha256"]
    real_write, real_replace = common.write_synced, os.replace
    calls = []

    def count_write(path, data, mode=None):
        calls.append(path)
        real_write(path, data, mode)

    def count_replace(a, b, **kw):
        calls.append(b)
        real_replace(a, b, **kw)

    monkeypatch.setattr(common, "write_synced", count_write)
    monkeypatch.setattr(os, "replace", count_replace)
    _save(tmp_path / "count", seed=2)
    monkeypatch.undo()
    steps = len(calls)  # each write and each rename
    assert steps >= 4
    got = set()
    for k in range(steps):
        _save(folder, seed=1)
        n = [0]

        def fail_here() -> bool:
            n[0] += 1
            return n[0] == k + 1

        def write(path, data, mode=None):
            if fail_here():
                pathlib.Path(path).write_bytes(data[: len(data) // 2])  # part of it, then the disk is full
                raise OSError(errno.ENOSPC, "No space left on device", str(path))
            real_write(path, data, mode)

        def replace(a, b, **kw):
            if pathlib.Path(b).parent == folder and fail_here():
                raise OSError(errno.EIO, "Input/output error", str(b))
            real_replace(a, b, **kw)

        monkeypatch.setattr(common, "write_synced", write)
        monkeypatch.setattr(os, "replace", replace)
        with pytest.raises(OSError):
            _save(folder, seed=2)
        monkeypatch.undo()
        sha = load_bundle(folder).config["weights"]["sha256"]
        assert sha in (old, new), k
        got.add(sha)
        check_bundle(folder)
    assert got == {old, new}  # early failures keep the old bundle, late ones have the new one
    _save(folder, seed=2)  # the next save tidies what the failed ones left
    assert _files(folder) == ["config.json", "weights.safetensors"]


# ----------------------------------------------------- the default model (2)
@pytest.fixture
def shipped_copy(tmp_path, monkeypatch) -> pathlib.Path:
    """A copy of models/assets that the loader (and ``default``) reads
    instead, to damage; the shipped bundles are never touched."""
    dst = tmp_path / "assets"
    shutil.copytree(B.ASSETS, dst)
    monkeypatch.setattr(B, "ASSETS", dst)
    return dst


def test_default_falls_back_to_dsp_never_silently(shipped_copy, caplog):
    assert resolve_model("default") == "neural" and default_fallback_reason() is None
    w = shipped_copy / "default" / "weights.safetensors"
    w.write_bytes(w.read_bytes()[:-1000])
    with caplog.at_level(logging.WARNING, logger="quietcast.models"):
        assert resolve_model("default") == "dsp"
        assert resolve_model("default") == "dsp"
        why = default_fallback_reason()
    assert why.startswith(f"{w}: sha256 mismatch")
    warned = [r.getMessage() for r in caplog.records if r.name == "quietcast.models"]
    assert len(warned) == 1 and "model 'default' falls back to 'dsp'" in warned[0] and why in warned[0]
    assert create_suppressor("default", 1).name == "dsp"
    (shipped_copy / "default" / "config.json").write_text("[]")
    assert resolve_model("default") == "dsp" and "not a quietcast-bundle config" in default_fallback_reason()


def test_two_saves_to_one_folder_take_turns(tmp_path, monkeypatch):
    """Two trainings with the same ``--out``: one save paused half-way
    (its weights in place, its config not yet), the other waits for it,
    then runs; the folder ends loadable, as the second. (Unserialised, the
    second's clean-up took the first's staged file and the first then
    named weights that were not there: a bundle that never loaded again.)"""
    import threading

    import quietcast.models.bundle as B

    out = tmp_path / "b"
    _save(out, seed=1)
    net_a, net_b = _net(2), _net(3)
    cfg = {"model": "neural", "arch": net_a.arch, "defaults": {"strength_db": 20.0},
           "licence": {"commercial_use": True, "note": "test weights"}}
    real = common.atomic_write
    paused, go = threading.Event(), threading.Event()

    def replace(path, data, mode=None, tag=None):
        real(path, data, mode, tag)
        if threading.current_thread().name == "A" and pathlib.Path(path).name.startswith("weights."):
            paused.set()
            go.wait(10)

    monkeypatch.setattr(common, "atomic_write", replace)
    ta = threading.Thread(target=save_bundle, args=(net_a, cfg, out), name="A")
    tb = threading.Thread(target=save_bundle, args=(net_b, cfg, out), name="B")
    ta.start()
    assert paused.wait(10)
    tb.start()
    tb.join(0.5)
    assert tb.is_alive()  # waiting for A's turn to end
    go.set()
    ta.join(10)
    tb.join(10)
    b = load_bundle(out)
    sd = net_b.state_dict()
    assert all(torch.equal(b.state_dict[k], sd[k]) for k in sd)
