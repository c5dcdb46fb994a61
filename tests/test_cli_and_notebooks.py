import json
import pathlib
import subprocess
import sys

import jax.numpy as jnp
import pytest

from jaxnum.cli import main

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_bench_recycling_runs_small_and_reports_three_methods(capsys):
    code = main(["bench", "recycling", "--resolution", "12", "--samples", "5", "--restart", "12", "--recycle", "4"])
    out = capsys.readouterr().out
    assert code == 0
    assert "GMRES(12), independent" in out
    assert "GCRO-DR(12,4), given order" in out
    assert "GCRO-DR(12,4), similarity order" in out
    assert "5/5" in out  # every system converged, for every method


def test_bench_recycling_rejects_bad_arguments(capsys):
    assert main(["bench", "recycling", "--restart", "10", "--recycle", "10"]) == 2
    assert "--recycle" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["bench", "recycling", "--samples", "0"])


def test_console_script_help():
    out = subprocess.run(
        [sys.executable, "-m", "jaxnum.cli", "bench", "recycling", "--help"], capture_output=True, text=True, check=False
    )
    assert out.returncode == 0 and "--resolution" in out.stdout


@pytest.mark.slow
def test_notebook_code_runs():
    nb = json.loads((ROOT / "notebooks" / "krylov_recycling.ipynb").read_text())
    src = "\n".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code")
    namespace = {}
    exec(compile(src, "krylov_recycling.ipynb", "exec"), namespace)
    assert namespace["second"].stats["num_matvecs"] < namespace["first"].stats["num_matvecs"]


@pytest.mark.slow
def test_demo_pipeline_small(tmp_path, capsys):
    import jax

    x64 = jax.config.jax_enable_x64
    out = tmp_path / "demo"
    argv = ["demo", "--out", str(out), "--resolution", "16", "--train-samples", "40",
            "--test-samples", "10", "--epochs", "2", "--batch-size", "10", "--modes", "6",
            "--width", "8", "--no-progress"]
    try:
        assert main(argv) == 0
        summary = json.loads((out / "summary.json").read_text())
        assert set(summary["errors"]) == {"16", "32"}
        assert all(0 < e < 2 for e in summary["errors"].values())
        for name in ("report.md", "samples.png", "prediction.png", "prediction_zero_shot.png",
                     "training_curve.png", "inversion.png", "darcy_16.h5", "darcy_32.h5"):
            assert (out / name).stat().st_size > 0
        report = (out / "report.md").read_text()
        assert "zero-shot" in report and "DeflatedCG" in report and "Inversion" in report
        # The inversion through the solver recovers the field much better than the
        # prior mean alone would (relative error of a constant guess ~0.3-0.5).
        assert summary["inversion"]["solver (adjoint, recycled)"]["error"] < 0.3
        # Running again reuses the datasets and the final checkpoint: same errors.
        assert main(argv) == 0
        again = json.loads((out / "summary.json").read_text())
        assert again["errors"] == summary["errors"]
    finally:
        jax.config.update("jax_enable_x64", x64)


def test_demo_rejects_bad_arguments(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path), "--resolution", "16", "--modes", "12"]) == 2
    assert "--modes" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["demo", "--epochs", "0"])


def test_hyperparameter_notebook_runs():
    # The implicit-differentiation notebook: the hypergradient matches a central
    # difference, the adjoint solves are logged, and the bilevel loop lowers the
    # validation loss by penalising the uninformative features more.
    nb = json.loads((ROOT / "notebooks" / "hyperparameters.ipynb").read_text())
    src = "\n".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code")
    ns = {}
    exec(compile(src, "hyperparameters.ipynb", "exec"), ns)
    # (The finite difference of a loss computed by a solve to 1e-10 is good to ~1e-4.)
    assert abs(float(ns["g"] @ ns["v"]) - float(ns["fd"])) <= 1e-4 * abs(float(ns["fd"]))
    assert len(ns["log"]) == 60 and all(r["converged"] for r in ns["log"].records)
    assert float(ns["validation_loss"](ns["result"].params)) < float(ns["validation_loss"](ns["theta0"]))
    w = ns["weights"]
    assert float(jnp.median(w[5:])) > 100 * float(jnp.median(w[:5]))
