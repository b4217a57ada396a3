"""Persistent state: every parameter value (and MIDI learn bindings),
saved atomically and restored at start.

- Saving writes a temporary file beside the target, fsyncs it, renames it
  into place and fsyncs the folder: a crash (or kill -9) at any moment
  leaves either the old file or the new one, never a torn one.
- Saves are debounced: a change arms a timer; more changes within
  ``debounce_s`` push it back, so a fader sweep costs one write.
- A state file that cannot be read or parsed is moved aside
  (``state.json.corrupt-TIMESTAMP``) with a warning, never fatal; the
  daemon starts from its config.
"""

from __future__ import annotations

import json
import logging
import math
import os
import threading
import time
from typing import Any, Callable

log = logging.getLogger("quietcast.state")

STATE_VERSION = 1


def default_state_dir() -> str:
    """$STATE_DIRECTORY (systemd), else $XDG_STATE_HOME/quietcast, else
    ~/.local/state/quietcast."""
    d = os.environ.get("STATE_DIRECTORY", "").split(":")[0]
    if d:
        return d
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return os.path.join(base, "quietcast")


def _enc(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return "-inf" if v < 0 else ("inf" if v > 0 else "nan")
    return v


def atomic_write(path: str, data: bytes) -> None:
    folder = os.path.dirname(os.path.abspath(path)) or "."
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f".{os.path.basename(path)}.tmp-{os.getpid()}-{threading.get_ident()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    try:
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:  # pragma: no cover - some filesystems refuse
        pass


class StateStore:
    """The state file of one daemon."""

    def __init__(self, path: str, debounce_s: float = 1.0):
        self.path = path
        self.debounce_s = debounce_s
        self.saves = 0
        self.last_error: str | None = None
        self._timer: threading.Timer | None = None
        self._lock = threading.Lock()  # control/MIDI threads only; never the audio path
        self._snapshot: Callable[[], dict] | None = None

    # -- reading
    def load(self) -> dict | None:
        """The saved document, or None (no file, or a corrupt one set aside)."""
        try:
            with open(self.path, "rb") as f:
                raw = f.read()
        except FileNotFoundError:
            return None
        except OSError as e:
            log.warning("state file %s cannot be read (%s); starting from the config", self.path, e.strerror)
            return None
        try:
            doc = json.loads(raw.decode("utf-8"))
            if not isinstance(doc, dict) or not isinstance(doc.get("params", {}), dict):
                raise ValueError("not a quietcast state document")
            return doc
        except (UnicodeDecodeError, ValueError) as e:
            aside = f"{self.path}.corrupt-{time.strftime('%Y%m%d-%H%M%S')}"
            try:
                os.replace(self.path, aside)
            except OSError:
                aside = "(could not move it)"
            log.warning("state file %s is corrupt (%s); moved aside to %s; starting from the config",
                        self.path, str(e)[:200], aside)
            return None

    # -- writing
    def save(self, doc: dict) -> None:
        data = json.dumps({k: ({a: _enc(v) for a, v in d.items()} if k == "params" else d) for k, d in doc.items()},
                          indent=1, sort_keys=True).encode()
        with self._lock:
            atomic_write(self.path, data)
            self.saves += 1

    def attach(self, snapshot: Callable[[], dict]) -> None:
        """Use ``snapshot()`` for debounced saves."""
        self._snapshot = snapshot

    def changed(self, *_ignored) -> None:
        """A value changed: save after the debounce delay."""
        if self._snapshot is None:
            return
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()
            self._timer = threading.Timer(self.debounce_s, self._save_now)
            self._timer.daemon = True
            self._timer.start()

    def _save_now(self) -> None:
        try:
            self.save(self._snapshot())
            self.last_error = None
        except Exception as e:  # a full disk must not kill the daemon
            self.last_error = f"{type(e).__name__}: {e}"
            log.warning("could not save state to %s: %s", self.path, self.last_error)

    def flush(self) -> None:
        """Save now if a debounced save is pending."""
        with self._lock:
            t, self._timer = self._timer, None
        if t is not None:
            t.cancel()
            self._save_now()


def snapshot(registry, midi=None) -> dict:
    """Every live value by address (+ MIDI bindings when available)."""
    doc = {"version": STATE_VERSION, "saved_at": time.time(),
           "params": {d["address"]: d["value"] for d in registry.list()}}
    if midi is not None:
        try:
            doc["midi"] = midi.bindings()
        except Exception:  # pragma: no cover
            pass
    return doc


def restore(registry, doc: dict) -> tuple[int, list[str]]:
    """Apply saved values that still exist; returns (applied, problems)."""
    applied, problems = 0, []
    for addr, v in (doc.get("params") or {}).items():
        try:
            if isinstance(v, str) and v in ("-inf", "inf"):
                v = float(v)
            registry.set(addr, v, source="state")
            applied += 1
        except Exception as e:
            problems.append(f"{addr}: {e}")
    return applied, problems
