"""Persistent state: every parameter value, the chains ``load_chain`` put
on channels (and MIDI learn bindings, for reading: the mapping file is
theirs), saved atomically and restored at start.

- Saving writes a temporary file beside the target, fsyncs it, renames it
  into place and fsyncs the folder: a crash (or kill -9) at any moment
  leaves either the old file or the new one, never a torn one.
- Saves are debounced by one saver thread: a change sets a due time
  ``debounce_s`` ahead (a fader sweep costs one write), capped at
  ``5 * debounce_s`` after the first unsaved change, so continuous
  automation is still saved every few seconds.
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

from quietcast.models.common import atomic_write

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


class StateStore:
    """The state file of one daemon."""

    def __init__(self, path: str, debounce_s: float = 1.0):
        self.path = path
        self.debounce_s = debounce_s
        self.saves = 0
        self.last_error: str | None = None
        self._lock = threading.Lock()  # control/MIDI/saver threads only; never the audio path
        self._snapshot: Callable[[], dict] | None = None
        self._wake = None
        self._due = self._first = None  # set by changed(); flush() may run before attach()
        self._closed = False

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
            n = 1
            while os.path.exists(aside):  # two in one second: neither replaces the other
                n += 1
                aside = f"{self.path}.corrupt-{time.strftime('%Y%m%d-%H%M%S')}-{n}"
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
            try:
                atomic_write(self.path, data)
            except OSError as e:  # named after the state file, not the hidden temporary one beside it
                raise OSError(e.errno, e.strerror or str(e), self.path) from e
            self.saves += 1

    def attach(self, snapshot: Callable[[], dict]) -> None:
        """Use ``snapshot()`` for debounced saves (one saver thread)."""
        self._snapshot = snapshot
        self._wake = threading.Event()
        self._due = None  # monotonic time of the next save, None when clean
        self._first = None  # when the oldest unsaved change happened
        self._closed = False
        threading.Thread(target=self._saver, name="quietcast-state", daemon=True).start()

    def changed(self, *_ignored) -> None:
        """A value changed: save ``debounce_s`` after the last change, and
        at the latest ``5 * debounce_s`` (at least 2 s) after the first
        unsaved one, so continuous automation is still saved. Cheap: no
        thread or timer per change."""
        if self._snapshot is None:
            return
        now = time.monotonic()
        if self._first is None:
            self._first = now
        cap = self._first + max(5 * self.debounce_s, 2.0)
        self._due = min(now + self.debounce_s, cap)
        self._wake.set()

    def _saver(self) -> None:
        while not self._closed:
            due = self._due
            if due is None:
                self._wake.wait()
                self._wake.clear()
                continue
            left = due - time.monotonic()
            if left > 0:
                self._wake.wait(left)
                self._wake.clear()
                continue
            self._due = self._first = None
            self._save_now()

    #: after a failed save (a full disk), the next try comes this much later
    RETRY_S = 5.0

    def _save_now(self) -> None:
        try:
            self.save(self._snapshot())
            self.last_error = None
        except Exception as e:  # a full disk must not kill the daemon
            if self.last_error is None:
                log.warning("could not save state to %s: %s; trying again every %g s", self.path,
                            f"{type(e).__name__}: {e}", self.RETRY_S)
            self.last_error = f"{type(e).__name__}: {e}"
            if not self._closed and self._due is None:  # what failed is still to be saved: try again
                self._due = time.monotonic() + self.RETRY_S
                if getattr(self, "_wake", None) is not None:
                    self._wake.set()

    def flush(self) -> None:
        """Save now if a save is pending or the last one failed; stop the
        saver thread."""
        pending = self._due is not None or self.last_error is not None
        self._closed = True
        self._due = self._first = None
        if getattr(self, "_wake", None) is not None:
            self._wake.set()
        if pending and self._snapshot is not None:
            self._save_now()


def snapshot(registry, midi=None, chains: dict | None = None, connections: list | None = None,
             midi_connections: list | None = None) -> dict:
    """Every live value by address (+ MIDI bindings when available,
    ``chains``: the chains ``load_chain`` put on channels, channel -> file
    path or bundled name, loaded again before the values at a restart, and
    ``connections``: the JACK connections of the daemon's ports, as
    ``[source, destination]``, made again at a restart; ``midi_connections``
    the same for the JACK MIDI ports, as ``[in|out, other port]``). A
    channel whose pause depth or threshold follows the engine's is saved as
    ``null``, so it still follows it after a restart (e.g. a new
    ``engine.pause_db`` or ``engine.pause_threshold``)."""
    doc = {"version": STATE_VERSION, "saved_at": time.time(),
           "params": {d["address"]: None if d.get("follows_engine") else d["value"] for d in registry.list()}}
    if chains:
        doc["chains"] = dict(chains)
    if connections:
        doc["connections"] = [list(p) for p in connections]
    if midi_connections:
        doc["midi_connections"] = [list(p) for p in midi_connections]
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
