"""jaxnum.data: generation, resumable storage, sharding, loader, CLI, catalogue."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from typing import ClassVar

import h5py
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
import scipy.sparse.linalg as spla

import jaxnum.linalg as jl
from jaxnum.data import DataLoader, dataset_info, generate, map_over_devices, sample_key
from jaxnum.data.__main__ import main as data_main
from jaxnum.data._cli import run_generate
from jaxnum.pde import (
    AbstractEllipticProblem,
    AbstractTimeDependentProblem,
    problem_from_name,
    problem_names,
)

from .helpers import to_scipy

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# --- small problems implementing the interface ----------------------------------------


class ToyDarcy(AbstractEllipticProblem):
    """`-div(exp(log a) grad u) = 1` on an `n x n` grid, `log a` a random sine series."""

    name: ClassVar[str] = "toy_darcy"
    n: int = 12
    modes: int = 3

    @property
    def grid_shape(self):
        return (self.n, self.n)

    def sample_parameters(self, key):
        return {"theta": 0.6 * jr.normal(key, (self.modes, self.modes))}

    def log_a(self, params):
        x = jnp.arange(1, self.n + 1) / (self.n + 1)
        s = jnp.sin(jnp.pi * jnp.arange(1, self.modes + 1)[:, None] * x[None, :])  # (m, n)
        return jnp.einsum("jk,jx,ky->xy", params["theta"], s, s)

    def inputs(self, params):
        return jnp.exp(self.log_a(params))[None]

    def config(self):
        return {"n": self.n, "modes": self.modes}

    def operator(self, params):
        return jl.diffusion_operator(jnp.exp(self.log_a(params)))

    def rhs(self, params):
        return jnp.ones(self.grid_shape)

    def features(self, params):
        return params["theta"].ravel()

    def default_solver(self):
        return jl.DeflatedCG(1e-10, 0.0, recycle=4)

    def outputs(self, params, u):
        return u[None]


class ToyHeat(AbstractTimeDependentProblem):
    """Periodic 1D heat equation `u_t = nu u_xx`, integrated by implicit Euler in
    Fourier space (the check computes it independently with a dense matrix)."""

    name: ClassVar[str] = "toy_heat"
    n: int = 16
    steps: int = 20

    @property
    def grid_shape(self):
        return (self.n,)

    @property
    def save_times(self):
        return jnp.linspace(0.0, 0.02, 5)

    def sample_parameters(self, key):
        k1, k2 = jr.split(key)
        return {"u0": jr.normal(k1, (self.n,)), "nu": jr.uniform(k2, (), minval=0.5, maxval=1.0)}

    def inputs(self, params):
        return params["u0"][None]

    def scalar_parameters(self, params):
        return params["nu"][None]

    def config(self):
        return {"n": self.n, "steps": self.steps}

    def solve(self, params):
        k = 2 * jnp.pi * jnp.fft.fftfreq(self.n, d=1.0 / self.n)
        dt = (self.save_times[1] - self.save_times[0]) / self.steps
        factor = (1.0 / (1.0 + dt * params["nu"] * k**2)) ** self.steps
        uh = jnp.fft.fft(params["u0"])
        frames = [jnp.real(jnp.fft.ifft(uh * factor**j)) for j in range(self.save_times.size)]
        return jnp.stack(frames)[None]


def read_all(path):
    out = {}
    with h5py.File(path, "r") as f:
        f.visititems(lambda name, obj: out.__setitem__(name, obj[()]) if isinstance(obj, h5py.Dataset) else None)
        attrs = {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in f.attrs.items()}
    return out, attrs


def _read_bytes(path):
    with open(path, "rb") as f:
        return f.read()


def assert_same_data(path_a, path_b):
    a, attrs_a = read_all(path_a)
    b, attrs_b = read_all(path_b)
    assert sorted(a) == sorted(b)
    for name in a:
        assert a[name].dtype == b[name].dtype, name
        assert a[name].shape == b[name].shape, name
        assert a[name].tobytes() == b[name].tobytes(), f"{name} differs"
    assert attrs_a == attrs_b


_SUBPROCESS_PRELUDE = """
import sys, time
sys.path.insert(0, {root!r})
import jax
jax.config.update("jax_enable_x64", True)
from tests.test_data import ToyDarcy, ToyHeat
from jaxnum.data import generate
"""


def run_python(code, env_extra=None, **kwargs):
    env = dict(os.environ)
    env.update(env_extra or {})
    return subprocess.Popen(
        [sys.executable, "-c", _SUBPROCESS_PRELUDE.format(root=ROOT) + textwrap.dedent(code)],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs,
    )


# --- generation against independent references ---------------------------------------


@pytest.fixture(scope="module")
def darcy_file(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("darcy") / "toy.h5")
    generate(ToyDarcy(), 10, path, seed=3, chunk_size=4, progress=False)
    return path


def _interrupt_at(chunk):
    """An `on_chunk` callback that stops a generation (as Ctrl-C does) after `chunk`."""

    def interrupt(t):
        if t == chunk:
            raise KeyboardInterrupt

    return interrupt


def test_elliptic_against_spsolve(darcy_file):
    problem = ToyDarcy()
    data, attrs = read_all(darcy_file)
    assert data["inputs"].shape == (10, 1, 12, 12)
    assert data["outputs"].shape == (10, 1, 12, 12)
    for i in range(10):
        params = problem.sample_parameters(sample_key(3, i))
        # Parameters depend only on (seed, i), and are stored in sample-index order.
        # (to the last bit only within the same compiled program: XLA fuses the
        # Gaussian transform differently when jitted, hence rtol ~ ulp here)
        np.testing.assert_allclose(data["params/theta"][i], np.asarray(params["theta"]), rtol=1e-15, atol=1e-16)
        np.testing.assert_allclose(data["inputs"][i, 0], np.exp(np.asarray(problem.log_a(params))), rtol=1e-13)
        u = spla.spsolve(to_scipy(problem.operator(params)).tocsc(), np.ones(144)).reshape(12, 12)
        np.testing.assert_allclose(data["outputs"][i, 0], u, rtol=1e-7, atol=1e-12 * np.abs(u).max())
    assert np.all(data["stats/result"] == 0)
    assert np.all(data["stats/residual"] <= 1.1e-10)
    # Solve-order bookkeeping: a permutation, positions consistent, recycling used.
    order = data["order"]
    assert sorted(order.tolist()) == list(range(10))
    np.testing.assert_array_equal(data["stats/solve_position"][order], np.arange(10))
    np.testing.assert_array_equal(data["stats/chunk"][order], np.arange(10) // 4)
    assert data["stats/carried"][order][1:].any() and not data["stats/carried"][order][0]
    assert attrs["complete"] and attrs["num_samples"] == 10 and attrs["seed"] == 3
    assert attrs["problem"] == "toy_darcy" and json.loads(attrs["problem_config"]) == {"n": 12, "modes": 3}
    assert attrs["grid_shape"] == [12, 12] and attrs["domain"] == [[0.0, 1.0], [0.0, 1.0]]
    assert attrs["kind"] == "elliptic" and "DeflatedCG" in attrs["solver"]
    assert json.loads(attrs["config"])["jaxnum_version"] == attrs["jaxnum_version"]
    assert not os.path.exists(darcy_file + ".parts")


def test_similarity_order_matches_linalg(darcy_file):
    problem = ToyDarcy()
    feats = jnp.stack([problem.features(problem.sample_parameters(sample_key(3, i))) for i in range(10)])
    with h5py.File(darcy_file, "r") as f:
        np.testing.assert_array_equal(f["order"][()], np.asarray(jl.similarity_order(feats)))


def test_time_dependent(tmp_path):
    problem = ToyHeat()
    path = str(tmp_path / "heat.h5")
    generate(problem, 7, path, seed=1, chunk_size=3, progress=False)
    data, attrs = read_all(path)
    assert data["outputs"].shape == (7, 1, 5, 16)
    assert data["scalars"].shape == (7, 1)
    np.testing.assert_allclose(data["save_times"], np.linspace(0, 0.02, 5))
    # Independent reference: dense implicit Euler with the periodic Laplacian.
    n = 16
    k = 2 * np.pi * np.fft.fftfreq(n, d=1.0 / n)
    spectral = np.real(np.fft.ifft(-(k**2)[:, None] * np.fft.fft(np.eye(n), axis=0), axis=0))
    for i in range(7):
        p = problem.sample_parameters(sample_key(1, i))
        u0, nu = np.asarray(p["u0"]), float(p["nu"])
        assert data["scalars"][i, 0] == nu
        dt = 0.005 / 20
        step = np.linalg.inv(np.eye(n) - dt * nu * spectral)
        u = u0.copy()
        for j in range(5):
            np.testing.assert_allclose(data["outputs"][i, 0, j], u, atol=1e-10)
            u = np.linalg.matrix_power(step, 20) @ u
    assert attrs["kind"] == "time_dependent"


# --- resume guarantees -----------------------------------------------------------------


def test_resume_after_kill(tmp_path):
    """A generation killed (SIGKILL) in a subprocess and resumed gives the same data
    as an uninterrupted run, byte for byte."""
    path = str(tmp_path / "killed.h5")
    proc = run_python(
        f"""
        generate(ToyDarcy(), 24, {path!r}, seed=7, chunk_size=3, progress=False,
                 on_chunk=lambda t: time.sleep(0.4))
        """
    )
    parts = path + ".parts"
    deadline = time.time() + 240
    try:
        while time.time() < deadline:
            done = [f for f in os.listdir(parts)] if os.path.isdir(parts) else []
            if sum(f.startswith("chunk_") and f.endswith(".h5") for f in done) >= 2:
                break
            if proc.poll() is not None:
                pytest.fail("the generation finished before it could be killed: " + proc.stderr.read())
            time.sleep(0.05)
        else:
            pytest.fail("no chunk was written in time")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert not os.path.exists(path)
    finished = sorted(f for f in os.listdir(parts) if f.startswith("chunk_") and f.endswith(".h5"))
    assert 2 <= len(finished) < 8
    # Resume in this process, and an uninterrupted reference run.
    calls = []
    generate(ToyDarcy(), 24, path, seed=7, chunk_size=3, progress=False, on_chunk=calls.append)
    assert calls and calls[0] >= len(finished) - 0  # finished chunks are not redone
    assert not os.path.exists(parts)
    reference = str(tmp_path / "reference.h5")
    generate(ToyDarcy(), 24, reference, seed=7, chunk_size=3, progress=False)
    assert_same_data(path, reference)
    assert _read_bytes(path) == _read_bytes(reference)  # the whole file, in fact


def test_resume_after_keyboard_interrupt_and_stale_files(tmp_path):
    """Ctrl-C between chunks, then a resume that finds a half-written temporary part
    and an interrupted assembly."""
    path = str(tmp_path / "a.h5")

    with pytest.raises(KeyboardInterrupt):
        generate(ToyDarcy(), 11, path, seed=2, chunk_size=3, progress=False, on_chunk=_interrupt_at(1))
    parts = path + ".parts"
    assert sorted(os.listdir(parts)) == ["chunk_00000.h5", "chunk_00001.h5", "manifest.h5"]
    with open(os.path.join(parts, "chunk_00002.h5.tmp-999"), "wb") as f:
        f.write(b"half a file")
    with open(path + ".tmp", "wb") as f:
        f.write(b"half an assembly")
    calls = []
    generate(ToyDarcy(), 11, path, seed=2, chunk_size=3, progress=False, on_chunk=calls.append)
    assert calls == [2, 3]
    assert not os.path.exists(path + ".tmp") and not os.path.exists(parts)
    reference = str(tmp_path / "b.h5")
    generate(ToyDarcy(), 11, reference, seed=2, chunk_size=3, progress=False)
    assert_same_data(path, reference)


def test_resume_keeps_the_stored_stream_layout(tmp_path):
    """Several streams (solved side by side, each carrying its own space): resumed
    without naming `streams`, the stored layout and carried spaces are used."""
    path = str(tmp_path / "s.h5")

    with pytest.raises(KeyboardInterrupt):
        generate(ToyDarcy(), 10, path, seed=1, chunk_size=3, streams=2, progress=False, on_chunk=_interrupt_at(1))
    generate(ToyDarcy(), 10, path, seed=1, chunk_size=3, progress=False)
    reference = str(tmp_path / "r.h5")
    generate(ToyDarcy(), 10, reference, seed=1, chunk_size=3, streams=2, progress=False)
    assert_same_data(path, reference)
    with h5py.File(path, "r") as f:
        assert f.attrs["streams"] == 2 and sorted(set(f["stats/stream"][()].tolist())) == [0, 1]


def test_row_writes_match_gathered_and_resume(tmp_path, monkeypatch):
    """Fields with large rows (`_storage._ROW_BYTES`) are written row by row, into the
    part files and straight from each chunk into the final file: the same data as the
    gathered path, and a resumed run (chunks read back from the part files) gives the
    same file byte for byte, no sample lost or repeated."""
    import jaxnum.data._storage as stg

    gathered = str(tmp_path / "gathered.h5")
    monkeypatch.setattr(stg, "_ROW_BYTES", 1 << 40)
    generate(ToyDarcy(), 11, gathered, seed=4, chunk_size=3, progress=False)
    monkeypatch.setattr(stg, "_ROW_BYTES", 1024)  # 12 x 12 float64 fields: 1152 bytes
    rows = str(tmp_path / "rows.h5")
    generate(ToyDarcy(), 11, rows, seed=4, chunk_size=3, progress=False)
    assert_same_data(gathered, rows)

    resumed = str(tmp_path / "resumed.h5")

    with pytest.raises(KeyboardInterrupt):
        generate(ToyDarcy(), 11, resumed, seed=4, chunk_size=3, progress=False, on_chunk=_interrupt_at(1))
    generate(ToyDarcy(), 11, resumed, seed=4, chunk_size=3, progress=False)
    assert _read_bytes(resumed) == _read_bytes(rows)
    with h5py.File(resumed) as f:
        # Every sample at its own row: the stored coefficient is sample i's (up to
        # rounding: `generate` draws under jit).
        problem = ToyDarcy()
        for i in (0, 5, 10):
            expected = problem.inputs(problem.sample_parameters(sample_key(4, i)))
            np.testing.assert_allclose(f["inputs"][i], expected, rtol=1e-14)


def test_time_dependent_resume(tmp_path):
    path = str(tmp_path / "h.h5")

    with pytest.raises(KeyboardInterrupt):
        generate(ToyHeat(), 5, path, seed=4, chunk_size=2, progress=False, on_chunk=_interrupt_at(0))
    generate(ToyHeat(), 5, path, seed=4, chunk_size=2, progress=False)
    reference = str(tmp_path / "r.h5")
    generate(ToyHeat(), 5, reference, seed=4, chunk_size=2, progress=False)
    assert_same_data(path, reference)


def test_complete_file_is_not_redone_and_never_overwritten(darcy_file):
    before = _read_bytes(darcy_file)
    calls = []
    generate(ToyDarcy(), 10, darcy_file, seed=3, chunk_size=4, progress=False, on_chunk=calls.append)
    assert calls == []
    for kwargs in (
        {"seed": 4, "chunk_size": 4},
        {"seed": 3, "chunk_size": 5},
        {"seed": 3, "chunk_size": 4, "solver": jl.DeflatedCG(1e-8, 0.0, recycle=4)},
        {"seed": 3, "chunk_size": 4, "streams": 2},
    ):
        with pytest.raises(ValueError, match="different configuration"):
            generate(ToyDarcy(), 10, darcy_file, progress=False, on_chunk=calls.append, **kwargs)
    with pytest.raises(ValueError, match="num_samples"):
        generate(ToyDarcy(), 11, darcy_file, seed=3, chunk_size=4, progress=False)
    with pytest.raises(ValueError, match="problem_config"):
        generate(ToyDarcy(n=10), 10, darcy_file, seed=3, chunk_size=4, progress=False)
    assert calls == []
    assert _read_bytes(darcy_file) == before


def test_partial_run_with_other_configuration(tmp_path):
    path = str(tmp_path / "p.h5")

    def interrupt(t):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        generate(ToyDarcy(), 6, path, seed=0, chunk_size=2, progress=False, on_chunk=interrupt)
    snapshot = {f: _read_bytes(os.path.join(path + ".parts", f)) for f in os.listdir(path + ".parts")}
    with pytest.raises(ValueError, match="seed"):
        generate(ToyDarcy(), 6, path, seed=1, chunk_size=2, progress=False)
    after = {f: _read_bytes(os.path.join(path + ".parts", f)) for f in os.listdir(path + ".parts")}
    assert after == snapshot and not os.path.exists(path)


def test_bad_inputs(tmp_path):
    path = str(tmp_path / "x.h5")
    for n in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match="num_samples"):
            generate(ToyDarcy(), n, path, progress=False)
    with pytest.raises(ValueError, match="chunk_size"):
        generate(ToyDarcy(), 4, path, chunk_size=0, progress=False)
    with pytest.raises(ValueError, match="streams"):
        generate(ToyDarcy(), 4, path, streams=5, progress=False)
    with pytest.raises(ValueError, match="does not exist"):
        generate(ToyDarcy(), 4, str(tmp_path / "missing" / "x.h5"), progress=False)
    with pytest.raises(ValueError, match="solver"):
        generate(ToyHeat(), 4, path, solver=jl.CG(1e-8, 0.0), progress=False)
    with pytest.raises(TypeError, match="problem"):
        generate("darcy", 4, path, progress=False)
    # A file that is not ours is never touched.
    other = tmp_path / "notes.h5"
    other.write_bytes(b"precious")
    with pytest.raises(ValueError, match="not a complete jaxnum dataset"):
        generate(ToyDarcy(), 4, str(other), progress=False)
    assert other.read_bytes() == b"precious"
    assert not os.path.exists(path) and not os.path.exists(path + ".parts")
    assert sorted(os.listdir(tmp_path)) == ["notes.h5"]


def test_one_generation_per_target(tmp_path):
    from jaxnum.data._storage import target_lock

    path = str(tmp_path / "busy.h5")
    # As if another process were generating it:
    with target_lock(path), pytest.raises(ValueError, match="Another process is generating"):
        generate(ToyDarcy(), 4, path, progress=False)
    assert sorted(os.listdir(tmp_path)) == []


def test_non_recycling_solver(tmp_path):
    path = str(tmp_path / "cg.h5")
    generate(ToyDarcy(), 5, path, seed=3, chunk_size=2, solver=jl.CG(1e-10, 0.0), progress=False)
    with h5py.File(path, "r") as f:
        u = f["outputs"][()]
    problem = ToyDarcy()
    p = problem.sample_parameters(sample_key(3, 4))
    ref = spla.spsolve(to_scipy(problem.operator(p)).tocsc(), np.ones(144)).reshape(12, 12)
    np.testing.assert_allclose(u[4, 0], ref, rtol=1e-7)


# --- sharding --------------------------------------------------------------------------


def test_streams_on_one_device_match_single_stream(tmp_path, darcy_file):
    path = str(tmp_path / "s.h5")
    generate(ToyDarcy(), 10, path, seed=3, chunk_size=4, streams=3, progress=False)
    a, attrs = read_all(path)
    b, _ = read_all(darcy_file)
    assert attrs["streams"] == 3
    np.testing.assert_array_equal(a["inputs"], b["inputs"])
    np.testing.assert_allclose(a["outputs"], b["outputs"], rtol=1e-8)
    assert sorted(np.unique(a["stats/stream"]).tolist()) == [0, 1, 2]


@pytest.mark.slow
def test_sharded_over_four_host_devices(tmp_path):
    """With 4 (forced host) devices, streams and batches are split across them; the
    data match one-device runs (elliptic: up to the tolerance; see docs/data.md)."""
    ell, heat = str(tmp_path / "ell4.h5"), str(tmp_path / "heat4.h5")
    proc = run_python(
        f"""
        import numpy as np, jax.numpy as jnp
        from jaxnum.data import map_over_devices
        assert jax.device_count() == 4
        f = map_over_devices(lambda x: 2 * x, 8)
        y = f(jnp.arange(8.0))
        assert len(y.sharding.device_set) == 4, y.sharding
        np.testing.assert_array_equal(np.asarray(y), 2 * np.arange(8.0))
        generate(ToyDarcy(), 10, {ell!r}, seed=3, chunk_size=4, progress=False)
        generate(ToyHeat(), 7, {heat!r}, seed=1, chunk_size=4, progress=False)
        print("OK")
        """,
        env_extra={"XLA_FLAGS": "--xla_force_host_platform_device_count=4"},
    )
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0 and "OK" in out, err
    one_ell, one_heat = str(tmp_path / "ell1.h5"), str(tmp_path / "heat1.h5")
    generate(ToyDarcy(), 10, one_ell, seed=3, chunk_size=4, streams=4, progress=False)
    generate(ToyHeat(), 7, one_heat, seed=1, chunk_size=4, progress=False)
    a, attrs = read_all(ell)
    b, _ = read_all(one_ell)
    assert attrs["streams"] == 4
    np.testing.assert_array_equal(a["params/theta"], b["params/theta"])
    np.testing.assert_allclose(a["outputs"], b["outputs"], rtol=1e-8)
    a, _ = read_all(heat)
    b, _ = read_all(one_heat)
    np.testing.assert_array_equal(a["params/u0"], b["params/u0"])
    np.testing.assert_allclose(a["outputs"], b["outputs"], rtol=1e-12, atol=1e-13)


def test_map_over_devices_single_device():
    f = map_over_devices(lambda x, y: {"s": x + y}, 3)
    out = f(jnp.arange(3.0), jnp.ones(3))
    np.testing.assert_array_equal(np.asarray(out["s"]), np.arange(3.0) + 1)


# --- loader ------------------------------------------------------------------------------


def test_loader(darcy_file):
    with h5py.File(darcy_file, "r") as f:
        inputs, outputs = f["inputs"][()], f["outputs"][()]
    loader = DataLoader(darcy_file, 4)
    assert len(loader) == 3
    seen = []
    for batch in loader.batches(jr.PRNGKey(0)):
        rows = [int(np.argmin(np.abs(inputs - x).sum(axis=(1, 2, 3)))) for x in batch["inputs"]]
        np.testing.assert_array_equal(batch["inputs"], inputs[rows])
        np.testing.assert_array_equal(batch["outputs"], outputs[rows])
        seen += rows
    assert sorted(seen) == list(range(10)) and seen != list(range(10))
    again = np.concatenate([b["inputs"] for b in loader.batches(jr.PRNGKey(0))])
    other = np.concatenate([b["inputs"] for b in loader.batches(jr.PRNGKey(1))])
    np.testing.assert_array_equal(again, inputs[seen])
    assert not np.array_equal(again, other)
    np.testing.assert_array_equal(np.concatenate([b["outputs"] for b in loader]), outputs)
    sub = DataLoader(darcy_file, 3, indices=[7, 2, 5, 9], drop_last=True, fields=("scalars", "params/theta"))
    batches = list(sub.batches(jr.PRNGKey(3)))
    assert len(sub) == 1 and len(batches) == 1 and batches[0]["params/theta"].shape == (3, 3, 3)
    np.testing.assert_array_equal(sub.read([9, 2])["params/theta"], read_all(darcy_file)[0]["params/theta"][[9, 2]])
    with pytest.raises(ValueError, match="no dataset"):
        DataLoader(darcy_file, 2, fields=("nope",))
    with pytest.raises(ValueError, match="batch_size"):
        DataLoader(darcy_file, 0)
    info = dataset_info(darcy_file)
    assert info["num_samples"] == 10 and info["shapes"]["outputs"] == (10, 1, 12, 12)


# --- catalogue and command line ---------------------------------------------------------


def test_catalogue_errors():
    with pytest.raises(ValueError, match="Unknown problem 'nope'. Known problems"):
        problem_from_name("nope", resolution=8)
    names = problem_names()
    for name in names:
        with pytest.raises(ValueError, match="resolution"):
            problem_from_name(name, resolution=0)
        with pytest.raises(ValueError, match="does not accept"):
            problem_from_name(name, resolution=8, not_an_option=1)


def test_cli_errors(tmp_path, capsys):
    out = str(tmp_path / "c.h5")
    assert data_main(["generate", "nope", "--samples", "4", "--resolution", "8", "--out", out]) == 2
    assert "Unknown problem 'nope'" in capsys.readouterr().err
    for bad in (["--samples", "0", "--resolution", "8"], ["--samples", "4", "--resolution", "-1"]):
        with pytest.raises(SystemExit) as e:
            data_main(["generate", "darcy", *bad, "--out", out])
        assert e.value.code == 2
        assert "must be a positive integer" in capsys.readouterr().err
    assert not os.path.exists(out)


@pytest.mark.skipif("darcy" not in problem_names(), reason="jaxnum.pde Darcy not available yet")
def test_cli_darcy_end_to_end(tmp_path, capsys):
    import argparse

    from jaxnum.data._cli import add_generate_parser

    parser = argparse.ArgumentParser()
    add_generate_parser(parser.add_subparsers(dest="command"))
    out = str(tmp_path / "darcy.h5")
    args = parser.parse_args(
        ["generate", "darcy", "--samples", "6", "--resolution", "16", "--seed", "1", "--out", out,
         "--chunk-size", "3", "--no-progress"]
    )
    assert run_generate(args) == 0
    data, _ = read_all(out)
    assert data["inputs"].shape[0] == 6 and data["inputs"].shape[2:] == (16, 16)
    assert data["outputs"].shape[2:] == (16, 16)
    assert np.all(data["stats/result"] == 0)
    problem = problem_from_name("darcy", resolution=16)
    p = problem.sample_parameters(sample_key(1, 5))
    A = to_scipy(problem.operator(p)).tocsc()
    b = np.asarray(problem.rhs(p)).ravel()
    u = spla.spsolve(A, b).reshape(16, 16)
    u_file = np.asarray(problem.outputs(p, jnp.asarray(u)))
    np.testing.assert_allclose(data["outputs"][5], u_file, rtol=1e-6, atol=1e-9 * np.abs(u_file).max())
    # Same command again: nothing to do; another seed: refused, file unchanged.
    before = _read_bytes(out)
    assert run_generate(args) == 0
    args.seed = 2
    assert run_generate(args) == 2
    assert "different configuration" in capsys.readouterr().err
    assert _read_bytes(out) == before
    # Another preconditioner on the command line is another configuration too.
    args.seed = 1
    args.preconditioner = "none"
    assert run_generate(args) == 2
    assert "preconditioner" in capsys.readouterr().err
    assert _read_bytes(out) == before
    assert read_all(out)[1]["preconditioner"] == "jaxnum.linalg._multigrid.multigrid(dtype='float32')"


# --- preconditioners --------------------------------------------------------------------


def test_problem_default_preconditioners():
    from jaxnum.pde import ConvectionDiffusion, Darcy, Helmholtz, Poisson

    for prob in (Darcy(8), Poisson(8)):
        pc = prob.default_preconditioner()
        assert pc.func is jl.multigrid and pc.keywords == {"dtype": "float32"}
        assert isinstance(prob.default_generation_solver(), jl.CG)
        assert isinstance(prob.default_solver(), jl.DeflatedCG)  # `solve(recycle=...)`
    assert Helmholtz(8).default_preconditioner() is None
    assert ConvectionDiffusion(8).default_preconditioner() is jl.multigrid
    assert ConvectionDiffusion(8, scheme="central").default_preconditioner() is None
    assert isinstance(Helmholtz(8).default_generation_solver(), jl.GCRODR)
    # The base class's defaults (a problem that defines neither): no preconditioner,
    # its default solver.
    assert ToyDarcy().default_preconditioner() is None
    assert isinstance(ToyDarcy().default_generation_solver(), jl.DeflatedCG)


def test_large_dataset_paths_match(tmp_path, monkeypatch):
    """Above the memory thresholds, each chunk draws its samples again and the file is
    assembled chunk by chunk (scattered row writes); the data are those of the
    in-memory path (the HDF5 layout may differ: which path is taken depends only on
    the configuration, so a resumed run still matches an uninterrupted one byte for
    byte), and every sample's parameters are those of
    `sample_parameters(sample_key(seed, i))`."""
    import jaxnum.data._generate as gen
    import jaxnum.data._storage as stg

    small = str(tmp_path / "small.h5")
    generate(ToyDarcy(), 10, small, seed=5, chunk_size=4, progress=False)
    monkeypatch.setattr(gen, "_KEEP_PARAMS_BYTES", 0)
    monkeypatch.setattr(stg, "_IN_MEMORY_BYTES", 0)
    large = str(tmp_path / "large.h5")
    generate(ToyDarcy(), 10, large, seed=5, chunk_size=4, progress=False)
    assert_same_data(small, large)
    with h5py.File(large) as f:
        theta = np.asarray(f["params/theta"])
    for i in (0, 3, 9):
        expected = ToyDarcy().sample_parameters(sample_key(5, i))["theta"]
        np.testing.assert_allclose(theta[i], expected, rtol=1e-14, atol=1e-15)


def test_describe_preconditioner_and_bad_preconditioners(tmp_path):
    import functools

    from jaxnum.data._generate import describe_preconditioner

    assert describe_preconditioner(None) is None
    assert describe_preconditioner(jl.jacobi) == "jaxnum.linalg._precond.jacobi"
    text = describe_preconditioner(functools.partial(jl.multigrid, dtype="float32", pre=1))
    assert text == "jaxnum.linalg._multigrid.multigrid(dtype='float32', pre=1)"
    path = str(tmp_path / "x.h5")
    with pytest.raises(ValueError, match="cannot be recorded"):
        generate(ToyDarcy(), 4, path, preconditioner=lambda op: jl.jacobi(op), progress=False)
    with pytest.raises(ValueError, match="'default'"):
        generate(ToyDarcy(), 4, path, preconditioner="amg", progress=False)
    with pytest.raises(ValueError, match="callable"):
        generate(ToyDarcy(), 4, path, preconditioner=3, progress=False)
    with pytest.raises(ValueError, match="elliptic problems only"):
        generate(ToyHeat(), 4, path, preconditioner=jl.jacobi, progress=False)
    assert sorted(os.listdir(tmp_path)) == []


def test_darcy_default_multigrid_resume_and_refusal(tmp_path):
    import functools

    from jaxnum.pde import Darcy

    problem = Darcy(16)
    full = str(tmp_path / "full.h5")
    generate(problem, 6, full, seed=2, chunk_size=3, progress=False)
    data, attrs = read_all(full)
    assert attrs["preconditioner"] == "jaxnum.linalg._multigrid.multigrid(dtype='float32')"
    assert attrs["solver"].startswith("CG(")
    assert json.loads(attrs["config"])["preconditioner"] == attrs["preconditioner"]
    assert np.all(data["stats/result"] == 0) and np.all(data["stats/num_matvecs"] <= 20)
    assert np.all(data["stats/residual"] <= 1.01e-8)
    for i in (0, 5):
        p = problem.sample_parameters(sample_key(2, i))
        u = spla.spsolve(to_scipy(problem.operator(p)).tocsc(), np.asarray(problem.rhs(p)).ravel())
        np.testing.assert_allclose(data["outputs"][i, 0].ravel(), u, rtol=1e-6, atol=1e-9 * np.abs(u).max())

    # The same preconditioner named explicitly is the same configuration: an
    # interrupted run resumes to identical data.
    same = functools.partial(jl.multigrid, dtype="float32")
    path = str(tmp_path / "resumed.h5")

    def interrupt(t):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        generate(problem, 6, path, seed=2, chunk_size=3, preconditioner=same, progress=False,
                 on_chunk=interrupt)
    # Resuming with another preconditioner is refused, the partial run untouched.
    snapshot = {f: _read_bytes(os.path.join(path + ".parts", f)) for f in os.listdir(path + ".parts")}
    for other in (None, jl.multigrid, jl.jacobi):
        with pytest.raises(ValueError, match="preconditioner"):
            generate(problem, 6, path, seed=2, chunk_size=3, preconditioner=other, progress=False)
    after = {f: _read_bytes(os.path.join(path + ".parts", f)) for f in os.listdir(path + ".parts")}
    assert after == snapshot
    generate(problem, 6, path, seed=2, chunk_size=3, preconditioner=same, progress=False)
    assert_same_data(full, path)
    # A complete file is never overwritten by a request with another preconditioner.
    before = _read_bytes(full)
    with pytest.raises(ValueError, match="preconditioner"):
        generate(problem, 6, full, seed=2, chunk_size=3, preconditioner=None, progress=False)
    assert _read_bytes(full) == before


def test_coefficient_stored_once_as_a_view(tmp_path):
    """Darcy's coefficient is its input: it is stored once, `params/coefficient` is a
    virtual dataset onto `inputs[:, 0]` that reads the same values (also through the
    loader, and after the file is moved elsewhere), and an interrupted run resumes to
    the same bytes."""
    import shutil

    from jaxnum.pde import Darcy

    problem = Darcy(8)
    full = str(tmp_path / "full.h5")
    generate(problem, 5, full, seed=4, chunk_size=2, progress=False)
    path = str(tmp_path / "resumed.h5")

    with pytest.raises(KeyboardInterrupt):
        generate(problem, 5, path, seed=4, chunk_size=2, progress=False, on_chunk=_interrupt_at(1))
    with h5py.File(os.path.join(path + ".parts", "chunk_00000.h5")) as f:
        assert "params/coefficient" not in f["samples"] and "inputs" in f["samples"]
    generate(problem, 5, path, seed=4, chunk_size=2, progress=False)
    assert _read_bytes(path) == _read_bytes(full)
    moved = tmp_path / "elsewhere" / "moved.h5"
    moved.parent.mkdir()
    shutil.move(full, moved)
    with h5py.File(moved) as f:
        view = f["params/coefficient"]
        assert view.is_virtual and view.shape == (5, 8, 8) and view.dtype == np.float64
        coefficient, inputs = view[()], f["inputs"][()]
        assert coefficient.tobytes() == np.ascontiguousarray(inputs[:, 0]).tobytes()
        np.testing.assert_array_equal(view[3], inputs[3, 0])
        np.testing.assert_array_equal(view[[0, 2, 4]], inputs[[0, 2, 4], 0])
    for i in (0, 4):
        expected = problem.sample_parameters(sample_key(4, i))["coefficient"]
        np.testing.assert_array_equal(coefficient[i], expected)
    assert dataset_info(str(moved))["shapes"]["params/coefficient"] == (5, 8, 8)
    loader = DataLoader(str(moved), 2, fields=("params/coefficient", "inputs"))
    batches = list(loader.batches(jr.PRNGKey(0)))
    assert sum(len(b["inputs"]) for b in batches) == 5
    for b in batches:
        np.testing.assert_array_equal(b["params/coefficient"], b["inputs"][:, 0])


def test_parameters_in_inputs_is_checked(tmp_path):
    from jaxnum.pde import Darcy

    class WrongChannel(Darcy):
        def parameters_in_inputs(self):
            return {"coefficient": 1}

    class WrongValues(Darcy):
        def inputs(self, params):
            return 2.0 * params["coefficient"][None]

    class WrongName(ToyDarcy):
        def parameters_in_inputs(self):
            return {"theta": 0}

    for bad in (WrongChannel(8), WrongName()):
        with pytest.raises(ValueError, match="parameters_in_inputs"):
            generate(bad, 3, str(tmp_path / "bad.h5"), seed=0, progress=False)
        assert not os.path.exists(str(tmp_path / "bad.h5.parts"))
    with pytest.raises(RuntimeError, match="differ"):
        generate(WrongValues(8), 3, str(tmp_path / "values.h5"), seed=0, progress=False)
    assert not os.path.exists(str(tmp_path / "values.h5"))
