"""Benchmark: jaxnum.special.log_ive against scipy and TensorFlow Probability.

    python benchmarks/special.py [--n 1000000] [--repeats 5] [--json]

Two cases, float64, 1e6 elements each: the vMF case (v = 1023, x uniform in
[1, 1e4]) and a mixed log-uniform case (v in [1e-3, 1e4], x in [1e-10, 1e5]).
Peers: scipy, `log(ive(v, x))` (the issue's `log(ive) + x` is log I; we compare
the scaled form so all three return the same quantity), and TFP's JAX
`log_bessel_ive` (tfp-nightly; skipped with a note if it does not import).
Accuracy is measured against the
committed 40-digit mpmath table (tests/data/special), plus agreement with scipy
wherever scipy is finite. Threads are pinned alike before numpy/jax import.
"""

import os


import _pin  # noqa: F401  (pins threads and the core before numpy/jax/torch)

# isort: split

import argparse  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402
import scipy.special as sc  # noqa: E402


jax.config.update("jax_enable_x64", True)
import jax.numpy as jnp  # noqa: E402

from jaxnum.special import log_ive, log_iv, log_kv  # noqa: E402


HERE = os.path.dirname(os.path.abspath(__file__))
TABLE = os.path.join(HERE, "..", "tests", "data", "special", "log_bessel_values.npz")


def _median_time(fn, repeats):
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        jax.block_until_ready(out)
        times.append(time.perf_counter() - t0)
    return float(np.median(times)), out


def _tfp():
    try:
        import tensorflow_probability.substrates.jax as tfp

        return tfp.math.log_bessel_ive
    except Exception as e:  # pragma: no cover - depends on the environment
        print(f"# TFP unavailable: {type(e).__name__}: {e}")
        return None


def accuracy():
    t = np.load(TABLE)
    v, x = t["v"], t["x"]
    out = {}
    for name, fn, ref, lo in (("log I", log_iv, t["log_iv"], t["log_iv_lo"]), ("log K", log_kv, t["log_kv"], t["log_kv_lo"])):
        got = np.asarray(fn(v, x))
        err = np.abs(got - ref - lo) / np.maximum(1, np.abs(ref))
        out[name] = {"max": float(err.max()), "p99": float(np.quantile(err, 0.99)), "finite": float(np.isfinite(got).mean())}
    with np.errstate(all="ignore"):
        out["scipy log I finite"] = float(np.isfinite(np.log(sc.ive(v, x)) + x).mean())
        out["scipy log K finite"] = float(np.isfinite(np.log(sc.kve(v, x)) - x).mean())
    return out


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=10**6)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    n = args.n
    cases = {
        "vmf": (np.full(n, 1023.0), rng.uniform(1.0, 1e4, n)),
        "mixed": (10 ** rng.uniform(-3, 4, n), 10 ** rng.uniform(-10, 5, n)),
    }
    tfp_ive = _tfp()
    ours = jax.jit(log_ive)
    theirs = jax.jit(tfp_ive) if tfp_ive is not None else None
    results = {"n": n, "threads": 1, "cases": {}}
    for name, (v, x) in cases.items():
        vj, xj = jnp.asarray(v), jnp.asarray(x)
        row = {}
        got = np.asarray(ours(vj, xj))  # compile
        with np.errstate(all="ignore"):
            ref = np.log(sc.ive(v, x))
        fin = np.isfinite(ref)
        row["scipy_nonfinite"] = float(1 - fin.mean())
        row["jaxnum_finite"] = float(np.isfinite(got).mean())
        row["max_rel_diff_vs_scipy_where_finite"] = float(
            np.max(np.abs(got[fin] - ref[fin]) / np.maximum(1, np.abs(ref[fin])))
        )
        assert row["jaxnum_finite"] == 1.0
        assert row["max_rel_diff_vs_scipy_where_finite"] < 1e-12
        row["jaxnum_s"], _ = _median_time(lambda: ours(vj, xj), args.repeats)
        with np.errstate(all="ignore"):
            row["scipy_s"], _ = _median_time(lambda: np.log(sc.ive(v, x)), args.repeats)
        if theirs is not None:
            tg = np.asarray(theirs(vj, xj))  # compile
            both = fin & np.isfinite(tg)
            row["tfp_finite"] = float(np.isfinite(tg).mean())
            row["tfp_max_rel_diff_vs_scipy"] = float(
                np.max(np.abs(tg[both] - ref[both]) / np.maximum(1, np.abs(ref[both])))
            )
            row["tfp_s"], _ = _median_time(lambda: theirs(vj, xj), max(1, args.repeats // 2))
            row["speedup_vs_tfp"] = row["tfp_s"] / row["jaxnum_s"]
        row["speedup_vs_scipy"] = row["scipy_s"] / row["jaxnum_s"]
        results["cases"][name] = row
    results["accuracy_vs_mpmath_table"] = accuracy()
    if args.json:
        print(json.dumps(results))
    else:
        print(f"{'case':8s} {'jaxnum s':>9s} {'scipy s':>9s} {'tfp s':>9s} {'x scipy':>8s} {'x tfp':>8s} {'scipy nonfinite':>16s}")
        for name, row in results["cases"].items():
            print(
                f"{name:8s} {row['jaxnum_s']:9.3f} {row['scipy_s']:9.3f} {row.get('tfp_s', float('nan')):9.3f} "
                f"{row['speedup_vs_scipy']:8.2f} {row.get('speedup_vs_tfp', float('nan')):8.2f} {row['scipy_nonfinite']:16.3f}"
            )
        print(json.dumps(results["accuracy_vs_mpmath_table"], indent=1))


if __name__ == "__main__":
    main()
