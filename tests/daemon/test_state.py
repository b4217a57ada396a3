"""The state store: atomic saves, debounce with a cap, corrupt files set aside."""

from __future__ import annotations

import json
import time

import pytest

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


def test_a_failed_save_is_tried_again_and_at_the_stop(tmp_path, monkeypatch):
    """A save that fails (a full disk) is tried again later, and once more
    at a clean stop; until session 24 it was dropped, and the change was
    lost after a restart although space had come back."""
    st = StateStore(str(tmp_path / "state.json"), debounce_s=0.05)
    monkeypatch.setattr(StateStore, "RETRY_S", 0.2)
    value = {"v": 1}
    st.attach(lambda: {"version": 1, "params": {"host.strength": value["v"]}})
    real = StateStore.save
    fails = {"n": 2}

    def save(self, doc):
        if fails["n"]:
            fails["n"] -= 1
            raise OSError(28, "No space left on device")
        real(self, doc)

    monkeypatch.setattr(StateStore, "save", save)
    st.changed()
    deadline = time.monotonic() + 5
    # (the saver clears last_error just after the file is renamed into place: wait for both)
    while time.monotonic() < deadline and not ((tmp_path / "state.json").exists() and st.last_error is None):
        time.sleep(0.02)
    assert json.loads((tmp_path / "state.json").read_text())["params"]["host.strength"] == 1
    assert st.last_error is None and fails["n"] == 0
    # failing until the stop: flush tries again
    fails["n"] = 1
    value["v"] = 2
    st.changed()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and st.last_error is None:
        time.sleep(0.02)
    st.flush()
    assert json.loads((tmp_path / "state.json").read_text())["params"]["host.strength"] == 2


def test_two_corrupt_files_in_one_second_are_both_kept(tmp_path):
    st = StateStore(str(tmp_path / "state.json"))
    for junk in (b"{not json", b"[also not]"):
        (tmp_path / "state.json").write_bytes(junk)
        assert st.load() is None
    kept = sorted(p.read_bytes() for p in tmp_path.glob("state.json.corrupt-*"))
    assert kept == sorted([b"{not json", b"[also not]"])


def test_a_failed_save_names_the_state_file_not_the_temporary_one(tmp_path):
    path = tmp_path / "state.json"
    path.mkdir()  # in the way of the rename
    store = StateStore(str(path))
    with pytest.raises(OSError) as e:
        store.save({"params": {"host.strength": 0.5}})
    assert e.value.filename == str(path) and e.value.strerror == "Is a directory"
    assert isinstance(e.value, IsADirectoryError) and store.saves == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json"]
