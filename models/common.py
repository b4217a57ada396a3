"""What every part of quietcast uses, kept where each part can import it:
``quietcast.bridge`` and ``quietcast.daemon`` import ``quietcast.models``,
which imports neither. Standard library only.

- :func:`quietcast_version`: the installed package's version (``quietcast
  --version``, the ``version`` command, the CodingHistory line of an
  offline output);
- :func:`atomic_write`: a file replaced atomically and durably (the
  daemon's state file and MIDI mapping, a model bundle's files), with
  :func:`write_synced` and :func:`sync_dir`, its steps.
"""

from __future__ import annotations

import functools
import os
import uuid

__all__ = ["quietcast_version", "atomic_write", "write_synced", "sync_dir"]


@functools.cache
def quietcast_version() -> str:
    """The installed quietcast's version ("unknown" where it is not
    installed, or its metadata cannot be read); looked up once."""
    try:
        from importlib.metadata import version

        return version("quietcast")
    except Exception:
        return "unknown"


def write_synced(path: str | os.PathLike, data: bytes, mode: int | None = None) -> None:
    """``data`` into the new file ``path`` (one that exists already is a
    FileExistsError), on disk when this returns (fsync); nothing is left
    at ``path`` if it fails. ``mode``: its permission bits whatever the
    umask (None: 0o666 less the umask, as ``open`` makes a file)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666 if mode is None else mode)
    try:
        with os.fdopen(fd, "wb") as f:
            if mode is not None:
                os.fchmod(f.fileno(), mode)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        try:
            os.unlink(path)
        except OSError:
            pass
        raise


def sync_dir(path: str | os.PathLike) -> None:
    """Make the renames in folder ``path`` durable (where the file system
    allows a folder to be fsynced)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike, data: bytes, mode: int | None = None, tag: str | None = None) -> None:
    """Replace the file ``path`` by one holding ``data``, atomically and
    durably: ``data`` goes to a new file beside it, ``.NAME.TAG.tmp``
    (:func:`write_synced`; ``tag``: the process id and a random part
    unless given), which is renamed over ``path``, and the folder is
    fsynced. At every instant ``path`` holds the old content or the new;
    the temporary file is removed when a step fails (and the error
    raised). The folder is made when it is missing. ``mode``: the file's
    permission bits whatever the umask (None: the umask's)."""
    folder = os.path.dirname(os.path.abspath(path)) or "."
    os.makedirs(folder, exist_ok=True)
    tag = tag or f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp = os.path.join(folder, f".{os.path.basename(path)}.{tag}.tmp")
    write_synced(tmp, data, mode)
    try:
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    sync_dir(folder)
