"""Regenerates the mpmath reference tables for jaxnum.special (run from the repo root):

    python tests/data/special/make_tables.py [--quick]

Values are computed at 40 significant digits: `mpmath.besseli` for $x \le 1000$,
otherwise from integral representations with positive integrands, evaluated by
mpmath's tanh-sinh quadrature in log space (shifted by the integrand's peak),
which stay accurate where mpmath's own `besseli`/`besselk` give up (large order
and argument):

- $I_v(x) = \\frac{(x/2)^v}{\\sqrt\\pi\\,\\Gamma(v+1/2)}\\int_{-1}^{1}(1-t^2)^{v-1/2}e^{xt}dt$ (DLMF 10.32.2),
- $K_v(x) = \\int_0^\\infty e^{-x\\cosh t}\\cosh(vt)dt$ (DLMF 10.32.9).

$v$-derivatives differentiate under the integral sign; $x$-derivatives use the
exact identities $\\partial_x\\log I_v = I_{v+1}/I_v + v/x$ and
$\\partial_x\\log K_v = v/x - K_{v+1}/K_v$. The script cross-checks a sample
against `mpmath.besseli`/`besselk` and the Wronskian before writing.
Outputs (float64, hi + lo parts of the 40-digit values):
`log_bessel_values.npz`, `log_bessel_derivs.npz`.
"""

import argparse
import os
import sys

import mpmath as mp
import numpy as np


mp.mp.dps = 40
HERE = os.path.dirname(os.path.abspath(__file__))


def _breakpoints(a, b, peak, width, step=None):
    pts = {mp.mpf(a), mp.mpf(b)}
    if step is not None:
        # a uniform grid as well: the K integrand has a flat plateau then a cliff
        t = mp.mpf(a)
        while t < b:
            pts.add(t)
            t += step
    for m in (0, 0.5, 1, 2, 4, 8, 16, 32, 64):
        for sgn in (-1, 1):
            p = peak + sgn * m * width
            if a < p < b:
                pts.add(mp.mpf(p))
    return sorted(pts)


def _peak_quad(logf, a, b, peak, width, step=None):
    # log of int_a^b exp(logf(t)) dt, breaking the interval around the peak.
    pts = _breakpoints(a, b, peak, width, step)
    shift = logf(mp.mpf(min(max(peak, a), b))) if a <= peak < b else None
    if shift is None or not mp.isfinite(shift):
        shift = max(logf(p) for p in pts if mp.isfinite(logf(p)))
    val = mp.quad(lambda t: mp.exp(logf(t) - shift), pts, maxdegree=10)
    return mp.log(val) + shift


def log_iv_mp(v, x, dv=False):
    """log I_v(x) (and d/dv with dv=True): mpmath's series for x <= 1000, where it
    converges quickly, and the Poisson integral beyond (where mpmath gives up)."""
    v = mp.mpf(v)
    x = mp.mpf(x)
    if x <= 1000:
        val = mp.log(mp.besseli(v, x, maxterms=10**6))
        if not dv:
            return val
        return val, mp.diff(lambda vv: mp.log(mp.besseli(vv, x, maxterms=10**6)), v)
    a = v - mp.mpf(1) / 2

    def logf(t):
        # tanh-sinh nodes can round onto t = +-1; the (integrable) endpoint
        # singularity for v < 1/2 contributes nothing at a single node.
        return a * mp.log1p(-t * t) + x * t if abs(t) < 1 else -mp.inf

    # peak of a log(1-t^2) + x t
    if a > 0:
        tp = (-a + mp.sqrt(a * a + x * x)) / x
        width = 1 / mp.sqrt(2 * a * (1 + tp * tp) / (1 - tp * tp) ** 2)
    else:
        tp = mp.mpf(1)
        width = 1 / x
    width = min(width, mp.mpf(1) / 2)
    if a > 0:
        logint = _peak_quad(logf, -1, 1, tp, width)
    else:
        # integrable endpoint singularity at t = 1: split near it geometrically.
        pts = sorted({mp.mpf(-1), mp.mpf(1)} | {1 - mp.mpf(c) / x for c in (1, 4, 16, 64, 256) if 1 - mp.mpf(c) / x > -1} | {mp.mpf(0)})
        shift = x
        logint = mp.log(mp.quad(lambda t: mp.exp(logf(t) - shift), pts, maxdegree=10)) + shift
    pref = v * mp.log(x / 2) - mp.log(mp.pi) / 2 - mp.loggamma(v + mp.mpf(1) / 2)
    val = pref + logint
    if not dv:
        return val
    # d/dv: log(x/2) - psi(v+1/2) + <log(1-t^2)>
    num = _weighted(logf, lambda t: mp.log1p(-t * t), -1, 1, tp, width, a)
    return val, mp.log(x / 2) - mp.digamma(v + mp.mpf(1) / 2) + num


def _weighted(logf, g, lo, hi, peak, width, a, step=None):
    pts = _breakpoints(lo, hi, peak, width, step)
    shift = logf(min(max(peak, lo), hi)) if a > 0 else logf(mp.mpf(hi) - width)
    num = mp.quad(lambda t: g(t) * mp.exp(logf(t) - shift), pts, maxdegree=10)
    den = mp.quad(lambda t: mp.exp(logf(t) - shift), pts, maxdegree=10)
    return num / den


def log_kv_mp(v, x, dv=False):
    """log K_v(x) (and d/dv) from the cosh integral."""
    v = mp.mpf(v)
    x = mp.mpf(x)
    if x <= 30 and v <= 30:
        # mpmath raises its working precision to absorb the I_{-v} - I_v cancellation
        val = mp.log(mp.besselk(v, x))
        if not dv:
            return val
        return val, mp.diff(lambda vv: mp.log(mp.besselk(vv, x)), v)

    def logf(t):
        vt = v * t
        return -x * mp.cosh(t) + vt + mp.log1p(mp.exp(-2 * vt)) - mp.log(2)

    tp = mp.asinh(v / x)
    r = mp.sqrt(v * v + x * x)
    width = 1 / mp.sqrt(r)
    # beyond hi the integrand is below exp(-150) of its peak (and mpmath's exp of
    # huge arguments is slow, so the infinite tail is cut explicitly)
    hi = tp + mp.acosh(1 + 150 / r) + 1
    val = _peak_quad(logf, 0, hi, tp, width, step=mp.mpf(1) / 2)
    if not dv:
        return val
    num = _weighted(logf, lambda t: t * mp.tanh(v * t), 0, hi, tp, width, 1, step=mp.mpf(1) / 2)
    return val, num


def split(vals):
    hi = np.array([float(z) for z in vals])
    lo = np.array([float(z - mp.mpf(h)) if np.isfinite(h) else 0.0 for z, h in zip(vals, hi)])
    return hi, lo


def sample_points(rng, n):
    v = 10 ** rng.uniform(-3, 4, n)
    x = 10 ** rng.uniform(-10, 5, n)
    v[: n // 50] = 0.0
    v[n // 50 : n // 25] = np.round(v[n // 50 : n // 25]) + 0.5
    return v, x


def boundary_points(rng):
    # Straddle every branch boundary: r = 25, 50, 500 and x = 2 (below r = 25).
    pts = []
    for R in (25.0, 50.0, 500.0):
        for theta in rng.uniform(0, np.pi / 2, 6):
            for f in (1 - 1e-12, 1 + 1e-12, 0.99, 1.01):
                pts.append((R * f * np.cos(theta), R * f * np.sin(theta)))
    for v in (0.0, 0.3, 0.5, 3.7, 12.0, 24.0):
        for f in (1 - 1e-12, 1 + 1e-12, 0.95, 1.05):
            pts.append((v, 2.0 * f))
    return np.array(pts).T


def main(quick=False):
    rng = np.random.default_rng(20240611)
    v, x = sample_points(rng, 120 if quick else 1000)
    bv, bx = boundary_points(rng)
    v = np.concatenate([v, bv])
    x = np.concatenate([x, bx])
    li, lk = [], []
    for i, (vi, xi) in enumerate(zip(v, x)):
        li.append(log_iv_mp(vi, xi))
        lk.append(log_kv_mp(vi, xi))
        if i % 100 == 0:
            print(i, len(v), file=sys.stderr)
    li_hi, li_lo = split(li)
    lk_hi, lk_lo = split(lk)
    np.savez_compressed(
        os.path.join(HERE, "log_bessel_values.npz"),
        v=v, x=x, log_iv=li_hi, log_iv_lo=li_lo, log_kv=lk_hi, log_kv_lo=lk_lo,
    )
    # Cross-checks: mpmath's own functions where they converge, and the Wronskian
    # I_v K_{v+1} + I_{v+1} K_v = 1/x.
    for vi, xi, a, b in list(zip(v, x, li, lk))[:: max(1, len(v) // 40)]:
        if xi < 50 and vi < 50:
            ref_i = mp.log(mp.besseli(vi, xi))
            ref_k = mp.log(mp.besselk(vi, xi))
            assert abs(a - ref_i) < mp.mpf(10) ** -20 * max(1, abs(ref_i)), (vi, xi, a, ref_i)
            assert abs(b - ref_k) < mp.mpf(10) ** -20 * max(1, abs(ref_k)), (vi, xi, b, ref_k)
        a1, b1 = log_iv_mp(mp.mpf(vi) + 1, xi), log_kv_mp(mp.mpf(vi) + 1, xi)
        w = mp.exp(a + b1 + mp.log(xi)) + mp.exp(a1 + b + mp.log(xi))
        assert abs(w - 1) < mp.mpf(10) ** -18, (vi, xi, w)
    # Derivative table (smaller).
    dv_, dx_ = sample_points(np.random.default_rng(7), 40 if quick else 240)
    out = {k: [] for k in ("div_dx", "div_dv", "dkv_dx", "dkv_dv")}
    for vi, xi in zip(dv_, dx_):
        a, a_v = log_iv_mp(vi, xi, dv=True)
        b, b_v = log_kv_mp(vi, xi, dv=True)
        a1 = log_iv_mp(mp.mpf(vi) + 1, xi)
        b1 = log_kv_mp(mp.mpf(vi) + 1, xi)
        out["div_dx"].append(mp.exp(a1 - a) + mp.mpf(vi) / xi)
        out["dkv_dx"].append(mp.mpf(vi) / xi - mp.exp(b1 - b))
        out["div_dv"].append(a_v)
        out["dkv_dv"].append(b_v)
    np.savez_compressed(
        os.path.join(HERE, "log_bessel_derivs.npz"),
        v=dv_, x=dx_, **{k: split(val)[0] for k, val in out.items()},
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    main(parser.parse_args().quick)
