"""glibc `malloc` settings for training on CPU, applied by jaxnum itself.

XLA:CPU allocates a compiled step's temporary buffers afresh on every execution, and
for an FNO they are tens of MiB. glibc serves blocks that large with `mmap` (the
dynamic threshold stops at 32 MiB) and gives them back with `munmap`, so every step
pays one page fault per 4 KiB it touches: measured a third of a 1D FNO step
(`docs/train.md`). Three `mallopt` settings keep freed memory inside the process
instead:

- `M_MMAP_MAX = 0`: large blocks come from the heap, not from fresh mappings;
- `M_TRIM_THRESHOLD = INT_MAX`: a free heap top is kept (up to 2 GiB) rather than
  returned to the system;
- `M_ARENA_MAX = 1`: threads created from now on share the main heap. XLA's worker
  threads otherwise get heaps of their own, and glibc unmaps a thread heap as soon as
  it is empty, and maps a block that does not fit in one whatever `M_MMAP_MAX` says.

The last point is why the call must come before XLA starts its threads: a thread keeps
the heap it first allocated from. `jaxnum.train` therefore calls `tune_malloc()` when
it is imported (`import jaxnum` imports it), which is before the first JAX
computation unless the caller ran one before importing jaxnum.
"""

import ctypes
import logging
import os
import sys
from typing import Any

logger = logging.getLogger("jaxnum.train")

# mallopt parameter numbers from glibc's <malloc.h>
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8
_INT_MAX = 2**31 - 1

ENV_VAR = "JAXNUM_TUNE_MALLOC"
SETTINGS = {"M_MMAP_MAX": 0, "M_TRIM_THRESHOLD": _INT_MAX, "M_ARENA_MAX": 1}

def _glibc():
    """The C library through ctypes if it is glibc, else None (never raises)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None)
        version = libc.gnu_get_libc_version  # only glibc has it (musl does not)
        libc.mallopt  # noqa: B018  (raises AttributeError if missing)
    except (OSError, AttributeError, TypeError):
        return None
    version.restype = ctypes.c_char_p
    libc.mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    libc.mallopt.restype = ctypes.c_int
    return libc


def _jax_started() -> bool:
    """Whether JAX has already created a backend (and with it XLA's worker threads)."""
    mod = sys.modules.get("jax._src.xla_bridge")
    return bool(getattr(mod, "_backends", None)) if mod is not None else False


def tune_malloc() -> dict[str, Any]:
    r"""Makes glibc keep freed memory in the process, so XLA:CPU's per-step buffers stop
    costing page faults (the same effect as starting Python with
    `GLIBC_TUNABLES=glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=...:glibc.malloc.arena_max=1`).

    jaxnum calls it once itself, when `jaxnum.train` is imported (so at `import
    jaxnum`), unless the environment variable `JAXNUM_TUNE_MALLOC=0` is set, or
    `GLIBC_TUNABLES` already holds `glibc.malloc` settings (yours are kept), or
    `JAX_PLATFORMS` names no `cpu`. Call it yourself only if you opted out at import
    and want it later; calling it again is harmless.

    It changes no results, only where memory comes from. **Cost:** the process keeps
    its peak heap until it exits (freed memory is reused, not returned to the
    system). Glibc only (Linux); elsewhere it does nothing and says so.

    Called after JAX has started its CPU backend (`"late": True`), the threads XLA
    already runs keep heaps of their own, so part of the page faults stays (measured
    on a 2D FNO step); the settings still hold for the main thread and new threads.

    **Returns:** a dict: `applied` (bool), `reason` (str), `glibc` (its version or
    `None`), `settings` (the `mallopt` values set), `late` (bool). The record of the
    call made at import is `jaxnum.train._malloc.AT_IMPORT`.
    """
    libc = _glibc()
    record: dict[str, Any] = {"applied": False, "glibc": None, "settings": {}, "late": _jax_started()}
    if libc is None:
        record["reason"] = "not glibc: nothing done"
        logger.info("tune_malloc: %s", record["reason"])
        return record
    record["glibc"] = libc.gnu_get_libc_version().decode()
    codes = {"M_MMAP_MAX": _M_MMAP_MAX, "M_TRIM_THRESHOLD": _M_TRIM_THRESHOLD, "M_ARENA_MAX": _M_ARENA_MAX}
    failed = [name for name, value in SETTINGS.items() if libc.mallopt(codes[name], value) != 1]
    record["settings"] = {k: v for k, v in SETTINGS.items() if k not in failed}
    record["applied"] = not failed
    record["reason"] = f"mallopt refused {failed}" if failed else "set " + ", ".join(
        f"{k}={v}" for k, v in SETTINGS.items()
    )
    if record["late"]:
        record["reason"] += " (after JAX started: XLA's existing threads keep their own heaps)"
    logger.info("tune_malloc: %s", record["reason"])
    return record


def _not_applied(reason: str) -> dict[str, Any]:
    return {"applied": False, "reason": reason, "glibc": None, "settings": {}, "late": False}


def _tune_at_import() -> dict[str, Any]:
    if os.environ.get(ENV_VAR, "1").strip().lower() in ("0", "false", "no", "off"):
        return _not_applied(f"{ENV_VAR}=0: glibc defaults kept")
    if "glibc.malloc" in os.environ.get("GLIBC_TUNABLES", ""):
        return _not_applied("GLIBC_TUNABLES sets glibc.malloc: left as given")
    platforms = os.environ.get("JAX_PLATFORMS", "")
    if platforms and "cpu" not in platforms.lower().split(","):
        return _not_applied(f"JAX_PLATFORMS={platforms}: no CPU backend")
    return tune_malloc()


# what the call made at import did (see `tune_malloc`)
AT_IMPORT: dict[str, Any] = _tune_at_import()
