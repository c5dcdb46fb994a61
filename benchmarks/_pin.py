"""Thread pinning shared by the benchmark scripts. Import it before numpy, jax or torch.

Every side of a comparison must run on the same compute: one thread, on one core.
On import this module

- appends `--xla_cpu_multi_thread_eigen=false` to `XLA_FLAGS` (keeping the caller's
  other flags, replacing a setting of that one; XLA has no flag for its intra-op
  pool size, so the core pinning below is what bounds it);
- sets `OMP_NUM_THREADS`, `OPENBLAS_NUM_THREADS` and `MKL_NUM_THREADS` to 1,
  overriding the caller's values (a silently multi-threaded peer would not be a like
  for like comparison);
- pins the process to one core: `JAXNUM_BENCH_CPU` if set, else the lowest core of
  the current affinity set (so `taskset -c 1 python benchmarks/x.py` stays on core 1).
  Threads that jax, numpy or torch start later inherit the pinning.

`describe()` returns a line for a script's header.
"""

import os

_FLAG = "--xla_cpu_multi_thread_eigen=false"
_THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")

_kept = [f for f in os.environ.get("XLA_FLAGS", "").split() if not f.startswith("--xla_cpu_multi_thread_eigen")]
os.environ["XLA_FLAGS"] = " ".join([*_kept, _FLAG])
for _var in _THREAD_VARS:
    os.environ[_var] = "1"

_allowed = sorted(os.sched_getaffinity(0))
_requested = os.environ.get("JAXNUM_BENCH_CPU")
if _requested is not None:
    try:
        CPU = int(_requested)
    except ValueError:
        raise SystemExit(f"JAXNUM_BENCH_CPU must be a core number, got {_requested!r}.") from None
    if CPU not in _allowed:
        raise SystemExit(
            f"JAXNUM_BENCH_CPU={CPU} is not in this process's affinity set {_allowed}; "
            "pick one of those cores."
        )
else:
    CPU = _allowed[0]
os.sched_setaffinity(0, {CPU})


def describe() -> str:
    """One line saying how this process is pinned."""
    threads = " ".join(f"{v}={os.environ[v]}" for v in _THREAD_VARS)
    return f"pinned to core {CPU}; XLA_FLAGS={os.environ['XLA_FLAGS']!r}; {threads}"
