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
- ``default``: the best model available here (the shipped neural bundle
  when present, else ``dsp``).
"""

from __future__ import annotations

from .base import HOP, SAMPLE_RATE, HopSuppressor, Passthrough, Suppressor, sanitize

__all__ = [
    "HOP", "SAMPLE_RATE", "Suppressor", "HopSuppressor", "Passthrough", "sanitize",
    "available_models", "create_suppressor",
]


def _dsp(channels: int, **kw) -> Suppressor:
    from .dsp import DspSuppressor

    return DspSuppressor(channels=channels, **kw)


_FACTORIES = {
    "dsp": _dsp,
    "passthrough": lambda channels, **kw: Passthrough(channels),
}


def available_models() -> list[str]:
    """Names accepted by :func:`create_suppressor`."""
    return ["default"] + sorted(_FACTORIES)


def resolve_model(name: str) -> str:
    if name == "default":
        return "dsp"
    return name


def create_suppressor(name: str = "default", channels: int = 1, **kwargs) -> Suppressor:
    """Build the suppressor called ``name`` for ``channels`` channels.

    Raises ValueError naming the model and listing the known ones."""
    real = resolve_model(name)
    if real not in _FACTORIES:
        import difflib

        close = difflib.get_close_matches(str(name), available_models(), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(f"unknown model {name!r}{hint}; known models: {', '.join(available_models())}")
    return _FACTORIES[real](channels, **kwargs)
