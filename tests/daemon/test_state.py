"""The state store: atomic saves, debounce with a cap, corrupt files set aside."""

from __future__ import annotations

import json
import time

from quietcast.daemon.state import StateStore


def test_a_burst_is_one_save_and_continuous_changes_still_save(tmp_path):
    st = StateStore(str(tmp_path / "s.json"), debounce_s=0.2)
    n = {"v": 0}
    st.attach(lambda: {"params": {"x": n["v"]}})
    for i in range(20):  # a fader sweep: one save after it settles
        n["v"] = i
        st.changed()
    time.sleep(0.5)
    assert st.saves == 1 and json.loads((tmp_path / "s.json").read_text())["params"]["x"] == 19
    # automation that never stops: saved anyway, at least every 5 debounces (2 s here)
    end = time.monotonic() + 2.6
    while time.monotonic() < end:
        n["v"] += 1
        st.changed()
        time.sleep(0.01)
    assert st.saves >= 2
    st.flush()
    assert json.loads((tmp_path / "s.json").read_text())["params"]["x"] == n["v"]


def test_changes_start_no_threads(tmp_path):
    import threading

    st = StateStore(str(tmp_path / "s.json"), debounce_s=10)
    st.attach(lambda: {"params": {}})
    before = threading.active_count()
    for _ in range(1000):
        st.changed()
    assert threading.active_count() == before  # one saver thread, no timer per change
    st.flush()


def test_corrupt_file_is_moved_aside(tmp_path):
    p = tmp_path / "s.json"
    p.write_text("{not json")
    assert StateStore(str(p)).load() is None
    assert not p.exists() and list(tmp_path.glob("s.json.corrupt-*"))
