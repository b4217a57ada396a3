"""quietcast suppressors.

Every suppressor shares the streaming interface of
:class:`quietcast.models.base.Suppressor`: ``process(block[channels,
frames]) -> same shape`` at 48 kHz, any block size, a fixed declared
``latency`` in samples, per-channel state, all channels in one batch.

Names known to :func:`create_suppressor`:

- ``dsp``: classic noise-floor tracking + Wiener-type gain, no weights; the
  always-available fallback and baseline.
- ``passthrough``: removes nothing (input delayed by one hop); for tests and
  as the reference of the bypass path.
- ``neural``: the small causal recurrent network of :mod:`.neural` with the
  shipped bundle ``models/assets/default`` (or ``bundle=NAME_OR_PATH``);
  needs torch, which is imported only when such a suppressor is built.
  Its training data include non-commercial sets: see the bundle's
  ``licence`` and model card.
- ``neural-clean``: the same network with ``models/assets/clean``, trained
  only on data that allows commercial use (listed when that bundle is
  present).
- ``default``: the best model available here (the shipped neural bundle
  when present, its checksum is right and torch is installed, else
  ``dsp``: never silently, the reason is logged once as a warning and
  given by :func:`default_fallback_reason`, ``quietcast models`` and
  ``quietcast process``'s warnings).
- a bundle folder: any name with a ``/`` in it (``./mymodel``,
  ``/srv/models/studio``) is the path of a ``neural`` bundle, such as one
  ``python -m quietcast.models.train --out`` wrote; checked like the
  shipped ones (config, sha256, finite weights that fit the network)
  when the suppressor is built, and by :func:`bundle_folder` when a
  daemon config or a chain file names it.
"""

from __future__ import annotations

from .base import HOP, SAMPLE_RATE, HopSuppressor, Passthrough, Suppressor, sanitize
from .bundle import ASSETS  # no torch: bundle.py imports it only to load weights

__all__ = [
    "HOP", "SAMPLE_RATE", "Suppressor", "HopSuppressor", "Passthrough", "sanitize",
    "available_models", "create_suppressor", "bundle_licence", "is_bundle_path", "bundle_folder",
    "default_fallback_reason",
]


def _dsp(channels: int, **kw) -> Suppressor:
    from .dsp import DspSuppressor

    return DspSuppressor(channels=channels, **kw)


def _neural(channels: int, **kw) -> Suppressor:
    from .neural import NeuralSuppressor

    return NeuralSuppressor(channels=channels, **kw)


def _neural_clean(channels: int, **kw) -> Suppressor:
    kw.setdefault("bundle", "clean")
    return _neural(channels, **kw)


_GPU_MODELS = {"neural", "neural-clean"}


_FACTORIES = {
    "dsp": _dsp,
    "neural": _neural,
    "passthrough": lambda channels, **kw: Passthrough(channels),
}
if (ASSETS / "clean" / "config.json").is_file():
    _FACTORIES["neural-clean"] = _neural_clean

_default_cache: dict = {}


def _default_model() -> str:
    """"neural" when the shipped bundle models/assets/default verifies
    (config + sha256, no torch import) and torch is installed, else "dsp".
    Cached per bundle state (folder, config/weights mtimes and sizes). A
    fallback to "dsp" is never silent: its reason is logged once (a
    warning naming the file and what is wrong) and kept for
    :func:`default_fallback_reason`."""
    import importlib.util
    import logging

    from . import bundle

    d = bundle.ASSETS / "default"
    try:
        key = (str(d),) + tuple((p.name, p.stat().st_mtime_ns, p.stat().st_size)
                                for p in sorted(d.iterdir()) if p.is_file())
        why = None
    except OSError as e:
        key, why = (str(d), "unreadable"), f"no usable bundle at {d}: {e.strerror or e}"
    if key not in _default_cache:
        if why is None:
            try:
                bundle.verify_bundle(d)
                if importlib.util.find_spec("torch") is None:
                    why = "torch is not installed (the neural models need it)"
            except bundle.BundleError as e:
                why = str(e)
        _default_cache.clear()
        _default_cache[key] = ("neural", None) if why is None else ("dsp", why)
        if why is not None:
            logging.getLogger("quietcast.models").warning(
                "model 'default' falls back to 'dsp' (no neural suppression): the shipped bundle "
                "cannot be used: %s", why)
    return _default_cache[key][0]


def default_fallback_reason() -> str | None:
    """Why the model ``default`` is ``dsp`` here (the shipped neural bundle
    is missing or damaged, naming the file, or torch is not installed), or
    None when it is the neural model."""
    _default_model()
    return next(iter(_default_cache.values()))[1]


def bundle_licence(sup: Suppressor) -> dict | None:
    """The ``licence`` record of the bundle behind ``sup`` (``commercial_use``,
    ``reasons``, ``copyleft``, ``note``), or None for a suppressor without weights or a
    bundle that predates the record."""
    bundle = getattr(sup, "bundle", None)
    return bundle.config.get("licence") if bundle is not None else None


def available_models() -> list[str]:
    """Names accepted by :func:`create_suppressor`."""
    return ["default"] + sorted(_FACTORIES)


def is_bundle_path(name) -> bool:
    """Whether a model name is meant as a bundle folder (it has a ``/``,
    or starts with ``~``); such a name is never a registered model."""
    s = str(name)
    return "/" in s or s.startswith("~")


def bundle_folder(name, base_dir: str | None = None, *, build: bool = True) -> str:
    """The absolute path of the neural bundle folder ``name`` (relative to
    ``base_dir``, else the current folder), checked: its config (the types
    of ``arch``, ``defaults`` and ``licence``), sha256 and, with ``build``
    (the default; imports torch), everything short of running it: the
    weights readable and finite, ``defaults`` in range, the network built
    and the weights fitting it (:func:`~.bundle.check_bundle`). Raises
    ValueError (a :class:`~.bundle.BundleError`) saying what is wrong,
    without the name."""
    import os

    from .bundle import BundleError, check_bundle, verify_bundle

    path = os.path.normpath(os.path.join(base_dir or os.getcwd(), os.path.expanduser(str(name))))
    cfg = verify_bundle(path)
    if cfg.get("model", "neural") != "neural":
        raise BundleError(f"a {cfg.get('model')!r} bundle; only neural bundles load from a folder")
    if build:
        check_bundle(path)
    return path


def resolve_model(name: str) -> str:
    """The real model behind ``name`` ("default" -> "neural" or "dsp")."""
    if name == "default":
        return _default_model()
    return name


def create_suppressor(name: str = "default", channels: int = 1, device: str = "cpu", **kwargs) -> Suppressor:
    """Build the suppressor called ``name`` for ``channels`` channels.

    ``device`` (``"cpu"``, ``"cuda"``, ``"cuda:N"``, ``"auto"``) is used by
    the models that can run on a GPU (``neural``); the others run on the
    CPU whatever it says (their :attr:`~Suppressor.backend` is ``"cpu"``).

    Raises ValueError naming the model and listing the known ones."""
    if is_bundle_path(name):  # a bundle folder of the neural network
        try:
            path = bundle_folder(name, build=False)  # the suppressor loads and builds it
        except ValueError as e:
            raise ValueError(f"model {name!r}: {e}") from None
        return _neural(channels, bundle=path, device=device, **kwargs)
    real = resolve_model(name)
    if real in _GPU_MODELS:
        kwargs["device"] = device
    if real not in _FACTORIES:
        import difflib

        close = difflib.get_close_matches(str(name), available_models(), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(f"unknown model {name!r}{hint}; known models: {', '.join(available_models())}, "
                         "or a bundle folder (a path with a '/')")
    return _FACTORIES[real](channels, **kwargs)
