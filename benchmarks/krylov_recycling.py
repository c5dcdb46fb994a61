"""Krylov subspace recycling on sequences of PDE systems: jaxnum against its peers.

Runs, in one process and on the same systems (float64, relative tolerance 1e-8,
right-hand side f = 1):

* (a) convection-diffusion `-div(a grad u) + v.grad u` (upwind, non-symmetric) with
  log-normal Gaussian-random-field coefficients, 2D at 64^2 and 128^2 (and 256^2 for
  the growth table);
* (b) Darcy `-div(a grad u)` (SPD), 2D at 128^2 and 3D at 32^3;
* (c) Helmholtz `-Laplace u - k^2 (1 + 0.1 c) u` (indefinite), varying wavenumber;
* (u) unrelated systems at high Peclet number (independent coefficients): does
  carrying a space hurt?

Peers: `lineax.GMRES(restart=40)` / `lineax.CG`, `jax.scipy.sparse.linalg.gmres` /
`cg`, `scipy.sparse.linalg.gmres(restart=40)` / `cg`, scipy's `gcrotmk` with one
recycle list shared along the sequence, and `scipy.sparse.linalg.spsolve`. jaxnum:
GMRES(40), GCRO-DR(40, 20) without carrying the space between systems, with it in
the given order and in similarity order (DeflatedCG for SPD), and, with
`--warm-start P` (default 4), the similarity-ordered sequence warm-started from the
previous P solutions (`solve_sequence(warm_start=P)`), both for the recycling solver
and for plain GMRES(40)/CG, so that the warm start's own share is visible. The "no
carry" rows stay independent solves from zero. GCRO-DR runs with
`harvest_every=2` (`--harvest-every`), the same in every GCRO-DR row, "no carry"
included; DeflatedCG with its default `harvest_keep = k // 2` (`--dcg-keep`), and with
`--dcg-cheap K H` also `DeflatedCG(recycle=K, harvest_every=H)` in similarity order
(a smaller space harvested on every H-th solve only), and with `--gcrodr-cheap H`
also GCRO-DR with `harvest_every=H` in similarity order, and with `--gcrodr-alt M K H`
also `GCRODR(restart=M, recycle=K, harvest_every=H)`, both without carrying and in
similarity order (rows named by their `(m, k)`; its carry ratio uses its own no-carry
row), with `--gcrodr-alt32 M K H` the same with `projection_dtype=float32` (C held
and applied in float32, the answer in float64; session 13), with `--gcrodr-alt32b M K
H` also with `basis_dtype=float32` (session 14), and with `--coarse B`
also GMRES(40) and GCRO-DR(40, 20) with two-level (subdomain) deflation on blocks
of edge B (`coarse_blocks=B`), GCRO-DR both without carrying and in similarity order.
jaxnum GMRES(40) is the default, CGS2 re-orthogonalisation (the Arnoldi the issue
names; since session 21); with `--gmres-cgs1`, also jaxnum GMRES(40) with one
Gram-Schmidt pass (`reorthogonalize=False`), and the products ratios against it.

Times are the process CPU time per system (every side single-threaded, so this is
the compute each side spent, independent of other load on a shared machine); wall
time is printed beside it. Each row has the mean per system, and where every system
was timed on its own also the median: the peers solve one system per call, and the
recycling rows in similarity order (and `deflated_cg.py`'s coarse rows) are re-run
one system per jitted call, carrying the space from call to call exactly as
`solve_sequence`'s `lax.scan` does (`stepped_sequence`; its products are checked
against the scan's), so that the issue's median ratios can be taken. Ratios are
printed both ways ("time ..." of means, "median time ..." of medians). The peers are timed on the first `--peer-systems` systems
(their products counted on the first `--count-systems`); jaxnum's independent solves
(GMRES, GCRO-DR without carrying) on the first `--indep-systems` (default: all); the
recycling runs solve the whole sequence (`--systems`), since the sequence is the
point. Each row says how many systems it covers. Ratios of products compare two rows
over the systems both cover (session 8: earlier sessions compared a median over the
first 8 systems with one over all 100); a ratio of times between rows over different
numbers of systems says so in its name, so run with `--peer-systems` equal to
`--systems` for like-for-like times. Every solution is
checked (true residual, and agreement with `spsolve`) before it is timed. Matrix-vector
products are counted by wrapping the operator (separate, untimed runs for peers).

    python benchmarks/krylov_recycling.py                 # everything, defaults
    python benchmarks/krylov_recycling.py --cases a64 u --systems 50 --json
"""

import _pin  # (pins threads and the core before numpy/jax/torch)

# isort: split

import argparse
import json
import time

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp
import jax.random as jr
import lineax as lx
import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as spla

import jaxnum.linalg as jl
from jaxnum._families import (
    convection_diffusion_family,
    darcy_family,
    gaussian_random_field,
    helmholtz_family,
)

RTOL = 1e-8


def rms_norm(x):
    """The root-mean-square norm, for lineax's `norm=`: lineax's test is
    `norm(r / (atol + rtol |b|)) <= 1`, per component, so with the benchmark's
    right-hand side of ones `rms_norm` makes it `||r||_2 <= rtol ||b||_2`, the test of
    jaxnum, scipy and `jax.scipy`. lineax's default `max_norm` is up to `sqrt(n)`
    times stricter (session 19 review: it inflated lineax's times by about 10%)."""
    leaves = jax.tree_util.tree_leaves(x)
    size = sum(leaf.size for leaf in leaves)
    return jnp.sqrt(sum(jnp.sum(jnp.square(leaf)) for leaf in leaves) / size)
M, K = 40, 20


# --------------------------------------------------------------------------- problems
def smooth_family(key, num, shape, modes=6, sigma=1.0):
    """Log-coefficients from a Gaussian random field with covariance
    (-Laplace + 9)^-2 restricted to its `modes` leading Fourier modes (a finite-rank
    Karhunen-Loeve expansion), so that systems form a continuous family in which
    similarity ordering means something."""
    axes = [(jnp.arange(n) + 1.0) / (n + 1) for n in shape]
    grids = jnp.meshgrid(*axes, indexing="ij")
    cands = []
    rng = range(4)
    for ks in np.ndindex(*(len(rng),) * len(shape)):
        if not any(ks):
            continue
        phase = 2 * jnp.pi * sum(k * g for k, g in zip(ks, grids))
        lam = (4 * np.pi**2 * sum(k * k for k in ks) + 9.0) ** -2.0
        cands += [(lam, jnp.cos(phase)), (lam, jnp.sin(phase))]
    cands.sort(key=lambda c: -c[0])
    lam = jnp.asarray([c[0] for c in cands[:modes]])
    phi = jnp.stack([c[1] for c in cands[:modes]])
    xi = jr.normal(key, (num, modes))
    fields = jnp.einsum("sj,j...->s...", xi * jnp.sqrt(lam), phi)
    return sigma * fields / jnp.std(fields)


def make_case(name, num, seed):
    """(params, make_operator, rhs, symmetric, description) for one benchmark case."""
    key = jr.PRNGKey(seed)
    if name.startswith("a"):
        n = int(name[1:])
        params = smooth_family(key, num, (n, n))
        vel = jnp.asarray([10.0, 5.0])
        make = lambda p: convection_diffusion_family(p, vel)
        return params, make, jnp.ones((n, n)), False, f"conv-diff 2D {n}^2, |v|=11, log-normal KL-6 GRF"
    if name == "b128":
        params = gaussian_random_field(key, num, (128, 128))
        return params, darcy_family, jnp.ones((128, 128)), True, "Darcy 2D 128^2, log-normal GRF"
    if name == "b3d":
        params = gaussian_random_field(key, num, (32, 32, 32))
        return params, darcy_family, jnp.ones((32, 32, 32)), True, "Darcy 3D 32^3, log-normal GRF"
    if name == "c":
        n = 64
        k1, k2 = jr.split(key)
        ks = jr.uniform(k1, (num,), minval=8.0, maxval=12.0)
        cs = gaussian_random_field(k2, num, (n, n), sigma=0.5)
        return (ks, cs), helmholtz_family((n, n)), jnp.ones((n, n)), False, "Helmholtz 2D 64^2, k in [8,12]"
    if name == "u":
        n = 64
        k1, k2 = jr.split(key)
        params = gaussian_random_field(k1, num, (n, n), sigma=1.5)
        angles = jr.uniform(k2, (num,), maxval=2 * jnp.pi)
        def make(p):
            log_a, th = p
            return convection_diffusion_family(log_a, 300.0 * jnp.stack([jnp.cos(th), jnp.sin(th)]))
        return (params, angles), make, jnp.ones((n, n)), False, "unrelated conv-diff 64^2, |v|=300, independent GRF and direction"
    raise ValueError(f"unknown case {name!r}")


def take(params, i):
    return jax.tree_util.tree_map(lambda x: x[i], params)


def to_csr(operator):
    bcoo = operator.as_bcoo()
    idx = np.asarray(bcoo.indices)
    return sp.csr_matrix((np.asarray(bcoo.data), (idx[:, 0], idx[:, 1])), shape=bcoo.shape)


class Counter:
    def __init__(self):
        self.n = 0


# ------------------------------------------------------------------------------ runs
class Clock:
    """CPU time of this process (and wall time beside it).

    Every side runs single-threaded (pinned above), so the process CPU time is the
    compute each side spent, and does not depend on what else the shared 2-core
    machine is doing; wall time is recorded too.
    """

    def __enter__(self):
        self.cpu0, self.wall0 = time.process_time(), time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.cpu = time.process_time() - self.cpu0
        self.wall = time.perf_counter() - self.wall0


def time_sequence(fn, params):
    """AOT-compile `fn(params)`, then run once and time it."""
    compiled = jax.jit(fn).lower(params).compile()
    with Clock() as clock:
        out = compiled(params)
        jax.block_until_ready(out)
    return out, clock


# A solution passes the answer check when its true relative residual is within this
# factor of the requested tolerance (the peers' exit tests use recurrence residuals,
# which drift from the true one by a little).
CHECK_SLACK = 2.0


def record_row(rows, label, mv, cpu, wall, sols, mats, b, refs, note="", per=1, width=34,
               residuals=None, clocks=None):
    """Adds (and prints) `rows[label]`: median products (`mv`, None if not counted),
    CPU and wall time per system (`cpu`, `wall` over `per` systems), the largest true
    relative residual of the first `len(mats)` solutions against the CSR matrices
    `mats`, and the largest relative error of the first `len(refs)` against the
    `spsolve` solutions `refs` (0 while there are none).

    The answer check: `residuals` (the true relative residuals of *every* solution the
    row returned, computed with the operator; by default the CSR residuals above)
    counts the systems whose residual exceeds `CHECK_SLACK * RTOL` as `unconverged`.
    The printed line says how many, and every ratio that uses the row says so in its
    name (see `flag`).

    `clocks`: one `Clock` per system when every system was timed on its own; the row
    then has median CPU and wall times too (`time_median`, `wall_median`)."""
    bnorm = np.linalg.norm(b)
    res = [np.linalg.norm(b - mats[i] @ np.asarray(sols[i]).ravel()) / bnorm for i in range(min(len(mats), len(sols)))]
    err = [np.linalg.norm(np.asarray(sols[i]).ravel() - refs[i]) / np.linalg.norm(refs[i])
           for i in range(min(len(refs), len(sols)))] if refs else [0.0]
    checked = np.asarray(res if residuals is None else residuals, dtype=float).ravel()
    bad = int(np.sum(~(checked <= CHECK_SLACK * RTOL)))  # NaN counts as unconverged
    rows[label] = r = {
        "matvecs": float(np.median(mv)) if mv is not None else float("nan"),
        # Per-system products in the caller's order (the first `len` systems), so that
        # ratios can compare rows over the same systems (see `ratios`).
        "per_system": None if mv is None else [int(v) for v in np.asarray(mv).ravel()],
        "systems": int(per),
        # How many systems the products median covers (for JAX peers `--count-systems`,
        # fewer than the timed `systems`): compare products over the same systems only.
        "counted": None if mv is None else int(np.asarray(mv).size),
        "time": float(cpu / per),
        "wall": float(wall / per),
        "time_median": None if not clocks else float(np.median([c.cpu for c in clocks])),
        "wall_median": None if not clocks else float(np.median([c.wall for c in clocks])),
        "max_residual": float(np.max(res)),
        "max_error_vs_spsolve": float(np.max(err)),
        "checked": int(checked.size),
        "max_checked_residual": float(np.max(checked)),
        "unconverged": bad,
        "label": label,
        "note": note,
    }
    check = "ok" if bad == 0 else f"UNCONVERGED {bad}/{checked.size} (max {r['max_checked_residual']:.1e})"
    med = "" if not clocks else f"median cpu {r['time_median']*1e3:9.1f} ms  "
    print(f"  {label:{width}s} [{per:3d} sys] matvecs/sys {r['matvecs']:8.0f}  cpu/sys {r['time']*1e3:9.1f} ms  wall/sys {r['wall']*1e3:9.1f} ms  {med}"
          f"max resid {r['max_residual']:.1e}  err vs spsolve {r['max_error_vs_spsolve']:.1e}  "
          f"check {check} {note}", flush=True)


def stepped_sequence(make, rhs, params, solver, perm, preconditioner=None):
    """The solves of `solve_sequence(make, params, rhs, solver, order=perm,
    preconditioner=...)`, one jitted call per system: each call is `solve_sequence`
    itself on that one system, started from the space the previous call returned, as
    the sequence's `lax.scan` carries it. Per-system times, for medians.

    Returns the per-system `Clock`s and products, both in the caller's order (the
    products should equal the scan's; rounding in a differently compiled program
    may move a carried sequence's by a little)."""

    def step(space, p):
        one = jax.tree_util.tree_map(lambda x: x[None], p)
        out = jl.solve_sequence(make, one, rhs, solver, order="given", preconditioner=preconditioner,
                                recycle=space, throw=False)
        return out.recycle, out.stats["num_matvecs"][0]

    perm = [int(i) for i in np.asarray(perm)]
    space = solver.empty_recycle(make(take(params, perm[0])))
    compiled = jax.jit(step).lower(space, take(params, perm[0])).compile()
    clocks, mvs = [None] * len(perm), [0] * len(perm)
    for i in perm:
        p = jax.block_until_ready(take(params, i))
        with Clock() as c:
            space, mv = jax.block_until_ready(compiled(space, p))
        clocks[i], mvs[i] = c, int(mv)
    return clocks, np.asarray(mvs)


def check_stepped(label, mv_scan, mv_step, clocks, scan_clock):
    """Prints how far the stepped run's products and mean time are from the scan's."""
    mv_scan = np.asarray(mv_scan)
    n = mv_scan.size
    print(f"    stepped re-run of {label}: median products {np.median(mv_step):.0f} (scan "
          f"{np.median(mv_scan):.0f}); identical on {int(np.sum(mv_step == mv_scan))}/{n} systems; "
          f"mean CPU {sum(c.cpu for c in clocks) / n * 1e3:.1f} ms (scan {scan_clock.cpu / n * 1e3:.1f} ms)",
          flush=True)


def true_residuals(make, rhs):
    """A jitted `(params, xs) -> ||rhs - A(p) x|| / ||rhs||` over a stack of systems: the
    answer check of every solution a row returns, with the operator itself."""
    bnorm = jnp.linalg.norm(rhs)
    one = lambda p, x: jnp.linalg.norm(rhs - make(p).mv(x)) / bnorm
    return jax.jit(lambda q, xs: jax.lax.map(lambda px: one(*px), (q, xs)))


def run_case(name, args):
    N = args.systems
    P = min(args.peer_systems, N)
    params, make, rhs, symmetric, desc = make_case(name, N, args.seed)
    b_np = np.asarray(rhs).ravel()
    mats = [to_csr(make(take(params, i))) for i in range(P)]
    print(f"\n== ({name}) {desc}: {N} systems, {b_np.size} unknowns; peers timed on {P} ==", flush=True)
    refs = []
    rows = {}

    def record(label, mv, clocks, sols, note="", per=1, residuals=None, per_system=None):
        # Per-system clocks: the peers' (one per system), or a stepped re-run's.
        if per_system is None and len(clocks) == per and per > 1:
            per_system = clocks
        record_row(rows, label, mv, sum(c.cpu for c in clocks), sum(c.wall for c in clocks), sols, mats, b_np,
                   refs, note=note, per=per, residuals=residuals, clocks=per_system)

    check = true_residuals(make, rhs)

    # scipy spsolve: the direct reference.
    times, sols = [], []
    for A in mats:
        A = A.tocsc()
        with Clock() as c:
            x = spla.spsolve(A, b_np)
        times.append(c)
        sols.append(x)
    refs = sols
    record("scipy spsolve", None, times, sols, per=len(mats))

    # scipy iterative: timed on the raw CSR matrix, counted through a wrapper.
    def scipy_solver(kind, A, cu=None, count=None):
        op = A
        if count is not None:
            def mv(v):
                count.n += 1
                return A @ v
            op = spla.LinearOperator(A.shape, matvec=mv, dtype=A.dtype)
        if kind == "gmres":
            return spla.gmres(op, b_np, rtol=RTOL, atol=0.0, restart=M, maxiter=200)[0]
        if kind == "cg":
            return spla.cg(op, b_np, rtol=RTOL, atol=0.0, maxiter=20 * b_np.size)[0]
        return spla.gcrotmk(op, b_np, rtol=RTOL, atol=0.0, m=K, k=K, CU=cu, discard_C=True, maxiter=500)[0]

    kinds = ["cg"] if symmetric else ["gmres", "gcrotmk"]
    for kind in kinds:
        times, sols, mvs = [], [], []
        cu = []
        for A in mats:
            with Clock() as c:
                sols.append(scipy_solver(kind, A, cu))
            times.append(c)
        cu = []
        for A in mats:
            c = Counter()
            scipy_solver(kind, A, cu, c)
            mvs.append(c.n)
        record(f"scipy {kind}" + ("(40)" if kind == "gmres" else "(m=20,k=20, shared CU)" if kind == "gcrotmk" else ""), mvs, times, sols, per=len(mats))

    # JAX peers: jitted single solves over the subset; matvecs counted separately.
    def counted_operator(p, counter):
        op = make(p)
        def mv(v):
            jax.debug.callback(lambda _: setattr(counter, "n", counter.n + 1), v[(0,) * v.ndim])
            return op.mv(v)
        return lx.FunctionLinearOperator(mv, op.in_structure(), op.tags)

    if symmetric:
        jax_peers = {
            "lineax CG": lambda op, b: lx.linear_solve(op, b, lx.CG(rtol=RTOL, atol=0.0, norm=rms_norm, max_steps=20 * b.size), throw=False).value,
            "jax.scipy cg": lambda op, b: jax.scipy.sparse.linalg.cg(op.mv, b, tol=RTOL, atol=0.0, maxiter=20 * b.size)[0],
        }
    else:
        jax_peers = {
            "lineax GMRES(40)": lambda op, b: lx.linear_solve(op, b, lx.GMRES(rtol=RTOL, atol=0.0, restart=M, norm=rms_norm, max_steps=40 * b.size, stagnation_iters=10**6), throw=False).value,
            "jax.scipy gmres(40)": lambda op, b: jax.scipy.sparse.linalg.gmres(op.mv, b, tol=RTOL, atol=0.0, restart=M, maxiter=400)[0],
        }
    for label, solve in jax_peers.items():
        f = jax.jit(lambda p, s=solve: s(make(p), rhs))
        jax.block_until_ready(f(take(params, 0)))
        times, sols = [], []
        for i in range(P):
            p = take(params, i)
            with Clock() as c:
                x = jax.block_until_ready(f(p))
            times.append(c)
            sols.append(x)
        mvs = []
        for i in range(min(P, args.count_systems)):
            c = Counter()
            jax.block_until_ready(solve(counted_operator(take(params, i), c), rhs))
            jax.effects_barrier()
            mvs.append(c.n)
        record(label, mvs, times, sols, per=P)

    # jaxnum.
    if symmetric:
        indep = {"jaxnum CG": jl.CG(RTOL, 0.0), "jaxnum DeflatedCG, no carry": None}
        rec = jl.DeflatedCG(RTOL, 0.0, recycle=args.dcg_recycle, harvest_keep=args.dcg_keep)
        rec_name = f"DeflatedCG(k={args.dcg_recycle})"
    else:
        indep = {"jaxnum GMRES(40)": jl.GMRES(RTOL, 0.0, restart=M), "jaxnum GCRO-DR(40,20), no carry": None}
        if args.gmres_cgs1:
            # Session 21: the default is CGS2, as the issue specifies GMRES; one
            # Gram-Schmidt pass next to it (the default of sessions 1-20).
            indep["jaxnum GMRES(40), CGS1"] = jl.GMRES(RTOL, 0.0, restart=M, reorthogonalize=False)
        rec = jl.GCRODR(RTOL, 0.0, restart=M, recycle=K, harvest_every=args.harvest_every)
        rec_name = "GCRO-DR(40,20)"
    alts = []
    alt_settings = [(*a, None) for a in args.gcrodr_alt or []]
    alt_settings += [(*a, "float32") for a in args.gcrodr_alt32 or []]
    alt_settings += [(*a, "float32 basis") for a in args.gcrodr_alt32b or []]
    if not symmetric and alt_settings:
        # Session 6: other (m, k, harvest_every) settings (repeatable since session 9),
        # each with its own no-carry row, so that its carry ratio compares like with like.
        # Session 13: also with C held in float32 (`projection_dtype`); session 14: and
        # the Arnoldi basis between harvests (`basis_dtype`).
        for m2, k2, h2, pd in alt_settings:
            low = {"projection_dtype": jnp.float32} if pd else {}
            if pd == "float32 basis":
                low["basis_dtype"] = jnp.float32
            if args.drop_ratio is not None:
                low["drop_ratio"] = args.drop_ratio
            alt = jl.GCRODR(RTOL, 0.0, restart=m2, recycle=k2, harvest_every=h2, **low)
            suffix = {None: ")", "float32": ", float32 C)", "float32 basis": ", float32 C and basis)"}
            drop = "" if args.drop_ratio is None else f", drop_ratio={args.drop_ratio}"
            alt_name = f"GCRO-DR({m2},{k2}, harvest_every={h2}{drop}" + suffix[pd]
            indep[f"jaxnum {alt_name}, no carry"] = alt
            alts.append((alt, alt_name, "similarity"))
    if not symmetric and args.coarse:
        # Session 7: two-level (subdomain) deflation, `coarse_blocks=B`, for plain
        # GMRES(40) and for GCRO-DR (no carry / similarity order), so that what the
        # block space buys and what recycling adds on top of it are both visible.
        cb = args.coarse
        coarse_gm = jl.GMRES(RTOL, 0.0, restart=M, coarse_blocks=cb)
        coarse_rec = jl.GCRODR(RTOL, 0.0, restart=M, recycle=K, harvest_every=args.harvest_every,
                               coarse_blocks=cb)
        indep[f"jaxnum GMRES(40) + coarse({cb})"] = coarse_gm
        indep[f"jaxnum GCRO-DR(40,20) + coarse({cb}), no carry"] = coarse_rec
    # jaxnum's independent solves (GMRES(40), GCRO-DR without carrying) run on the
    # first `--indep-systems` systems, by default all of them: the recycling targets
    # compare them with the sequence, and a median over the first few systems is not
    # the median over the sequence (session 8: the first 8 of the a128 draw needed
    # 8% more products without carrying than all 100).
    I = N if args.indep_systems is None else min(max(args.indep_systems, P), N)
    sub = take(params, slice(0, I))
    for label, solver in indep.items():
        if solver is None or isinstance(solver, jl.GCRODR):
            # A recycling solver with nothing carried between systems.
            def one(p, s=rec if solver is None else solver):
                sol = lx.linear_solve(make(p), rhs, s, throw=False)
                return sol.value, sol.stats["num_matvecs"]

            fn = lambda q, one=one: jax.lax.map(one, q)
            (xs, mv), t = time_sequence(fn, sub)
        else:
            fn = lambda q, s=solver: jl.solve_sequence(make, q, rhs, s, order="given", throw=False)
            out, t = time_sequence(fn, sub)
            xs, mv = out.value, out.stats["num_matvecs"]
        record(label, np.asarray(mv), [t], list(xs[:P]), per=I, residuals=check(sub, xs))
    runs = [(rec, rec_name, order) for order in ("given", "similarity")]
    if not symmetric and args.gcrodr_cheap:
        # Session 5: the same solver with rarer harmonic-Ritz refreshes (each costs
        # O(n k m) flops and a small eigenproblem), in similarity order.
        h2 = args.gcrodr_cheap
        cheap = jl.GCRODR(RTOL, 0.0, restart=M, recycle=K, harvest_every=h2)
        runs.append((cheap, f"GCRO-DR(40,20, harvest_every={h2})", "similarity"))
    runs += alts
    if not symmetric and args.coarse:
        runs.append((coarse_rec, f"GCRO-DR(40,20) + coarse({args.coarse})", "similarity"))
    if symmetric and args.dcg_cheap:
        # The cheaper configuration (session 4): a smaller space, harvested (eigCG +
        # Rayleigh-Ritz) only on every h-th solve and carried unchanged in between.
        k2, h2 = args.dcg_cheap
        cheap = jl.DeflatedCG(RTOL, 0.0, recycle=k2, harvest_every=h2)
        runs.append((cheap, f"DeflatedCG(k={k2}, harvest_every={h2})", "similarity"))
    for solver, name_, order in runs:
        fn = lambda q, o=order, s=solver: jl.solve_sequence(make, q, rhs, s, order=o, throw=False)
        out, t = time_sequence(fn, params)
        mv = np.asarray(out.stats["num_matvecs"])
        carried = float(np.mean(np.asarray(out.stats["carried"])))
        per_system = None
        if order == "similarity" and args.step_times:
            per_system, mv_step = stepped_sequence(make, rhs, params, solver, out.order)
            check_stepped(name_, mv, mv_step, per_system, t)
        record(f"jaxnum {name_}, {order}", mv, [t], list(out.value[:P]),
               note=f"(all {N}; carried {carried:.0%})", per=N, residuals=check(params, out.value),
               per_system=per_system)
    if args.warm_start:
        # Warm start along the similarity-ordered sequence (the minimal-residual
        # combination of the previous solutions), for the recycling solver and, to
        # show what the warm start alone buys, for the plain solver too.
        w = args.warm_start
        plain = jl.CG(RTOL, 0.0) if symmetric else jl.GMRES(RTOL, 0.0, restart=M)
        plain_name = "CG" if symmetric else "GMRES(40)"
        for label, solver in ((f"jaxnum {plain_name}", plain), (f"jaxnum {rec_name}", rec)):
            def fn(q, s=solver):
                return jl.solve_sequence(make, q, rhs, s, order="similarity", warm_start=w, throw=False)
            out, t = time_sequence(fn, params)
            mv = np.asarray(out.stats["num_matvecs"])
            note = f"(all {N}"
            if "carried" in out.stats:
                note += f"; carried {float(np.mean(np.asarray(out.stats['carried']))):.0%}"
            record(f"{label}, similarity + warm start({w})", mv, [t], list(out.value[:P]),
                   note=note + ")", per=N, residuals=check(params, out.value))
    return desc, rows


def flag(*rows):
    """A suffix for a ratio's name when a row in it failed its answer check."""
    bad = [f"{r['label']}: {r['unconverged']}/{r['checked']}" for r in rows if r.get("unconverged")]
    return f" [UNCONVERGED {'; '.join(bad)}]" if bad else ""


def mv_ratio(a, b):
    """Median products of row `a` over those of row `b`, over the systems both rows
    cover (the first ones in the caller's order; peers are counted on a subset)."""
    n = min(len(a["per_system"]), len(b["per_system"]))
    return float(np.median(a["per_system"][:n]) / np.median(b["per_system"][:n]))


def put_mv(out, key, a, b):
    """`out[key] = mv_ratio(a, b)`, the key flagged when a row failed its check."""
    out[key + flag(a, b)] = mv_ratio(a, b)


def time_ratio(out, key, a, b):
    """`out[key] = time(a) / time(b)` (CPU time) and `out["wall " + key]` (wall time,
    what the issue's targets name; the two agree when the process has its core to
    itself). The key says so when the two rows' times are per-system averages over
    different numbers of systems (not like for like), or when a row failed its
    answer check."""
    if a["systems"] != b["systems"]:
        key += f" [times over {a['systems']} vs {b['systems']} systems]"
    key += flag(a, b)
    out[key] = a["time"] / b["time"]
    out["wall " + key] = a["wall"] / b["wall"]
    if a.get("time_median") and b.get("time_median"):
        out["median " + key] = a["time_median"] / b["time_median"]


def ratios(name, rows):
    out = {}
    if name.startswith("a") or name in ("c", "u"):
        sim = rows["jaxnum GCRO-DR(40,20), similarity"]
        given = rows["jaxnum GCRO-DR(40,20), given"]
        nocarry = rows["jaxnum GCRO-DR(40,20), no carry"]
        cgs1 = rows.get("jaxnum GMRES(40), CGS1")  # with --gmres-cgs1
        put_mv(out, "matvecs GMRES(40) / GCRO-DR sim", rows["jaxnum GMRES(40)"], sim)
        if cgs1 is not None:
            put_mv(out, "matvecs GMRES(40) CGS1 / GCRO-DR sim", cgs1, sim)
        put_mv(out, "matvecs scipy GMRES(40) / GCRO-DR sim", rows["scipy gmres(40)"], sim)
        put_mv(out, "matvecs no-carry / sim", nocarry, sim)
        put_mv(out, "matvecs given / no-carry", given, nocarry)
        time_ratio(out, "time lineax GMRES(40) / GCRO-DR sim", rows["lineax GMRES(40)"], sim)
        time_ratio(out, "time scipy GMRES(40) / GCRO-DR sim", rows["scipy gmres(40)"], sim)
        time_ratio(out, "time jax.scipy gmres / GCRO-DR sim", rows["jax.scipy gmres(40)"], sim)
        # scipy's gcrotmk recycles in the given order: compare it with the given-order row.
        time_ratio(out, "time scipy gcrotmk (given) / GCRO-DR given", rows["scipy gcrotmk(m=20,k=20, shared CU)"], given)
        time_ratio(out, "time spsolve / GCRO-DR sim", rows["scipy spsolve"], sim)
        for key in [k for k in rows if "harvest_every" in k and k.endswith(", similarity")]:
            tag = " (" + key.split("jaxnum ")[1].split(", similarity")[0] + ")"
            c = rows[key]
            own = rows.get(key.replace(", similarity", ", no carry"))
            put_mv(out, f"matvecs GMRES(40) / GCRO-DR sim{tag}", rows["jaxnum GMRES(40)"], c)
            if cgs1 is not None:
                put_mv(out, f"matvecs GMRES(40) CGS1 / GCRO-DR sim{tag}", cgs1, c)
            if own is not None:  # the same (m, k, harvest_every) without carrying
                put_mv(out, f"matvecs no-carry / sim{tag}, same setting", own, c)
            else:
                put_mv(out, f"matvecs no-carry / sim{tag}", nocarry, c)
            time_ratio(out, f"time lineax GMRES(40) / GCRO-DR sim{tag}", rows["lineax GMRES(40)"], c)
            time_ratio(out, f"time scipy GMRES(40) / GCRO-DR sim{tag}", rows["scipy gmres(40)"], c)
        coarse = [k for k in rows if "+ coarse(" in k and k.endswith(", similarity")]
        if coarse:
            c = rows[coarse[0]]
            tag = " (" + coarse[0].split("+ ")[1].split(", similarity")[0] + ")"
            gm = rows[next(k for k in rows if k.startswith("jaxnum GMRES(40) + coarse("))]
            nc = rows[coarse[0].replace(", similarity", ", no carry")]
            put_mv(out, f"matvecs GMRES(40) / GCRO-DR sim{tag}", rows["jaxnum GMRES(40)"], c)
            put_mv(out, f"matvecs no-carry / sim{tag}, same setting", nc, c)
            put_mv(out, f"matvecs GMRES(40){tag} / GCRO-DR sim{tag}", gm, c)
            put_mv(out, f"matvecs GMRES(40) / GMRES(40){tag}", rows["jaxnum GMRES(40)"], gm)
            time_ratio(out, f"time lineax GMRES(40) / GCRO-DR sim{tag}", rows["lineax GMRES(40)"], c)
            time_ratio(out, f"time scipy GMRES(40) / GCRO-DR sim{tag}", rows["scipy gmres(40)"], c)
            time_ratio(out, f"time lineax GMRES(40) / GMRES(40){tag}", rows["lineax GMRES(40)"], gm)
        warm = [k for k in rows if k.startswith("jaxnum GCRO-DR") and "warm start" in k]
        if warm:
            sw = rows[warm[0]]
            gw = rows[next(k for k in rows if k.startswith("jaxnum GMRES(40), similarity + warm"))]
            put_mv(out, "matvecs GMRES(40) / GCRO-DR sim+warm", rows["jaxnum GMRES(40)"], sw)
            put_mv(out, "matvecs no-carry / sim+warm", nocarry, sw)
            put_mv(out, "matvecs GMRES(40) sim+warm / GCRO-DR sim+warm", gw, sw)
            time_ratio(out, "time lineax GMRES(40) / GCRO-DR sim+warm", rows["lineax GMRES(40)"], sw)
            time_ratio(out, "time scipy GMRES(40) / GCRO-DR sim+warm", rows["scipy gmres(40)"], sw)
    else:
        sims = [k for k in rows if "DeflatedCG" in k and k.endswith(", similarity")]
        for key in sims:
            d = rows[key]
            tag = "" if key == sims[0] else " (" + key.split("jaxnum ")[1].split(", similarity")[0] + ")"
            put_mv(out, f"matvecs CG / DeflatedCG sim{tag}", rows["jaxnum CG"], d)
            put_mv(out, f"matvecs lineax CG / DeflatedCG sim{tag}", rows["lineax CG"], d)
            time_ratio(out, f"time lineax CG / DeflatedCG sim{tag}", rows["lineax CG"], d)
            time_ratio(out, f"time scipy cg / DeflatedCG sim{tag}", rows["scipy cg"], d)
            time_ratio(out, f"time spsolve / DeflatedCG sim{tag}", rows["scipy spsolve"], d)
        time_ratio(out, "time lineax CG / jaxnum CG", rows["lineax CG"], rows["jaxnum CG"])
        warm = [k for k in rows if "DeflatedCG" in k and "warm start" in k]
        if warm:
            dw = rows[warm[0]]
            cw = rows[next(k for k in rows if k.startswith("jaxnum CG, similarity + warm"))]
            put_mv(out, "matvecs CG / DeflatedCG sim+warm", rows["jaxnum CG"], dw)
            put_mv(out, "matvecs CG sim+warm / DeflatedCG sim+warm", cw, dw)
            time_ratio(out, "time lineax CG / DeflatedCG sim+warm", rows["lineax CG"], dw)
    for k, v in out.items():
        print(f"  ratio {k:42s} {v:6.2f}")
    return out


def check_cell(r) -> str:
    """The answer check of a row for the Markdown table (rows of logs written before
    session 11 have none)."""
    if "unconverged" not in r:
        return "-"
    bad = r["unconverged"]
    return f"ok ({r['checked']})" if bad == 0 else f"**{bad}/{r['checked']} unconverged**"


def markdown(results) -> str:
    """The results as Markdown tables (what goes into benchmarks/README.md)."""
    lines = []
    for name, res in results.items():
        lines += [f"**({name}) {res['description']}**", "",
                  "| method | systems | matvecs / system (median) | CPU ms / system (mean) | CPU ms / system (median) | wall ms / system | max true rel. residual | max rel. error vs spsolve | answer check |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---|"]
        for label, r in res["rows"].items():
            mv = "-" if r["matvecs"] != r["matvecs"] else f"{r['matvecs']:.0f}"
            if r.get("counted") is not None and r["counted"] != r.get("systems"):
                mv += f" (over {r['counted']})"
            med = "-" if not r.get("time_median") else f"{r['time_median'] * 1e3:.1f}"
            lines.append(f"| {label} {r['note']} | {r.get('systems', '')} | {mv} | {r['time'] * 1e3:.1f} | {med} | {r['wall'] * 1e3:.1f} | "
                         f"{r['max_residual']:.1e} | {r['max_error_vs_spsolve']:.1e} | {check_cell(r)} |")
        lines += ["", "| ratio | value |", "|---|---:|"]
        lines += [f"| {k} | {v:.2f} |" for k, v in res["ratios"].items()]
        lines.append("")
    return "\n".join(lines)


def build_parser():
    """The command line; `deflated_cg.py` takes its defaults for `run_case` from here."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", nargs="+", default=["a64", "a128", "b128", "b3d", "c", "u", "a256"])
    parser.add_argument("--systems", type=int, default=200, help="systems per sequence (default 200)")
    parser.add_argument("--peer-systems", type=int, default=12, help="systems timed for independent solvers")
    parser.add_argument("--count-systems", type=int, default=3, help="systems whose JAX-peer matvecs are counted")
    parser.add_argument("--indep-systems", type=int, default=None,
                        help="systems solved by jaxnum's independent rows (GMRES, no carry); default: all")
    parser.add_argument("--dcg-recycle", type=int, default=20)
    parser.add_argument("--harvest-every", type=int, default=2, help="GCRO-DR harvest_every (also for the no-carry rows)")
    parser.add_argument("--dcg-cheap", type=int, nargs=2, metavar=("K", "H"), default=None,
                        help="also run DeflatedCG(recycle=K, harvest_every=H) in similarity order (SPD cases)")
    parser.add_argument("--gcrodr-cheap", type=int, metavar="H", default=None,
                        help="also run GCRODR(harvest_every=H) in similarity order (non-symmetric cases; "
                             "the no-carry row keeps --harvest-every)")
    parser.add_argument("--gcrodr-alt", type=int, nargs=3, metavar=("M", "K", "H"), default=None, action="append",
                        help="also run GCRODR(restart=M, recycle=K, harvest_every=H) without carrying "
                             "(like the other independent rows) and in similarity order (non-symmetric "
                             "cases); repeatable")
    parser.add_argument("--gcrodr-alt32", type=int, nargs=3, metavar=("M", "K", "H"), default=None,
                        action="append",
                        help="as --gcrodr-alt, with projection_dtype=float32 (C in float32); repeatable")
    parser.add_argument("--gcrodr-alt32b", type=int, nargs=3, metavar=("M", "K", "H"), default=None,
                        action="append",
                        help="as --gcrodr-alt32, with basis_dtype=float32 too (the Arnoldi basis of the "
                             "cycles between harvests in float32); repeatable")
    parser.add_argument("--drop-ratio", type=float, default=None,
                        help="GCRODR(drop_ratio=...) for the --gcrodr-alt* settings (the adaptive "
                             "policy's threshold; default 0.95)")
    parser.add_argument("--coarse", type=int, metavar="B", default=None,
                        help="also run GMRES(40) and GCRO-DR(40,20) with coarse_blocks=B (two-level "
                             "deflation; GCRO-DR without carrying and in similarity order; non-symmetric cases)")
    parser.add_argument("--dcg-keep", type=int, default=None, help="DeflatedCG harvest_keep (default: recycle // 2)")
    parser.add_argument("--gmres-cgs1", action="store_true",
                        help="also time jaxnum GMRES(40) with one Gram-Schmidt pass (reorthogonalize=False; "
                             "the default is CGS2)")
    parser.add_argument("--no-step-times", dest="step_times", action="store_false",
                        help="skip the stepped re-runs that give the similarity-order rows per-system "
                             "(median) times")
    parser.add_argument("--warm-start", type=int, default=4, help="previous solutions for the warm-start rows (0: no such rows)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print one machine-readable line at the end")
    parser.add_argument("--markdown-from", metavar="LOG", help="render the JSON line of an earlier run's log as Markdown and exit")
    return parser


def main():
    args = build_parser().parse_args()
    if args.markdown_from:
        with open(args.markdown_from) as f:
            last = [line for line in f if line.startswith("{")][-1]
        print(markdown(json.loads(last)))
        return
    print(f"jax {jax.__version__}, lineax {lx.__version__ if hasattr(lx, '__version__') else ''}, "
          f"backend {jax.default_backend()}; {_pin.describe()}")
    results = {}
    for name in args.cases:
        n_sys = args.systems
        if name == "a256":  # growth table only: fewer systems
            args.systems = max(10, n_sys // 10)
        desc, rows = run_case(name, args)
        results[name] = {"description": desc, "rows": rows, "ratios": ratios(name, rows)}
        args.systems = n_sys
    if args.json:
        print(json.dumps(results))


if __name__ == "__main__":
    main()
