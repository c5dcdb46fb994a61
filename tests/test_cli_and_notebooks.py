import json
import pathlib
import subprocess
import sys

import pytest

from jaxnum.cli import main


ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_demo_runs_small_and_reports_three_methods(capsys):
    code = main(["demo", "--resolution", "12", "--samples", "5", "--restart", "12", "--recycle", "4"])
    out = capsys.readouterr().out
    assert code == 0
    assert "GMRES(12), independent" in out
    assert "GCRO-DR(12,4), given order" in out
    assert "GCRO-DR(12,4), similarity order" in out
    assert "5/5" in out  # every system converged, for every method


def test_demo_rejects_bad_arguments(capsys):
    assert main(["demo", "--restart", "10", "--recycle", "10"]) == 2
    assert "--recycle" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["demo", "--samples", "0"])


def test_console_script_help():
    out = subprocess.run(
        [sys.executable, "-m", "jaxnum.cli", "demo", "--help"], capture_output=True, text=True
    )
    assert out.returncode == 0 and "--resolution" in out.stdout


@pytest.mark.slow
def test_notebook_code_runs():
    nb = json.loads((ROOT / "notebooks" / "krylov_recycling.ipynb").read_text())
    src = "\n".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code")
    namespace = {}
    exec(compile(src, "krylov_recycling.ipynb", "exec"), namespace)
    assert namespace["second"].stats["num_matvecs"] < namespace["first"].stats["num_matvecs"]
