"""Loading quietcast's optional C extensions with ctypes (no torch, no numpy).

The compiled parts of quietcast (``daemon/rtcallback.c``, the JACK process
callback; ``models/qcstep.c``, the neural suppressor's streaming step) are
plain C files with no Python C-API. setuptools builds each as an optional
extension module at install time only so that pip compiles it: it has no
``PyInit`` function, is found with importlib, never imported, and loaded
with ctypes. An install without a C compiler has none, and the Python (or
torch) path runs instead, with the reason this module gives.
"""

from __future__ import annotations

import ctypes
import importlib.util
import logging
import os
import pathlib
from typing import Callable

log = logging.getLogger("quietcast.native")


def load_extension(name: str, source: pathlib.Path, layout_symbol: str, want: tuple,
                   declare: Callable[[ctypes.CDLL], None]) -> tuple[ctypes.CDLL | None, str]:
    """``(library, path)`` of the extension module ``name`` (built from
    ``source``), or ``(None, why not)``.

    ``layout_symbol`` names a ``const int64_t[len(want)]`` in the library
    (ABI version, struct size, offsets, ...): it must equal ``want``, so a
    library built from another version of the C file is refused.
    ``declare(lib)`` sets the functions' argtypes and restypes. A library
    older than its source (an editable install whose C file was edited)
    loads, with a warning."""
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError) as e:
        spec, err = None, f": {e}"
    else:
        err = ""
    if spec is None or not spec.origin or not os.path.isfile(spec.origin):
        return None, (f"{name} is not built{err} ({source.parent.name}/{source.name} is compiled when quietcast is "
                      "installed; install a C compiler and re-install)")
    try:
        lib = ctypes.CDLL(spec.origin)
        layout = tuple((ctypes.c_int64 * len(want)).in_dll(lib, layout_symbol))
        declare(lib)
    except (OSError, AttributeError, ValueError) as e:
        return None, f"cannot load {spec.origin}: {e}"
    if layout != tuple(want):
        return None, (f"{spec.origin} was built from another version of {source.name} "
                      f"(layout {layout}, expected {tuple(want)}); re-install quietcast")
    try:
        if source.stat().st_mtime > os.stat(spec.origin).st_mtime:
            log.warning("%s is older than %s: re-run `pip install -e .` to rebuild it", spec.origin, source)
    except OSError:
        pass
    return lib, spec.origin
