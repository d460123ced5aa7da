"""rhox installs as one namespace: a wheel in a fresh venv gives the documented API and its assets."""
from __future__ import annotations

import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                    "-w", str(out), str(ROOT)], check=True, capture_output=True, timeout=300)
    (whl,) = out.glob("rhox-*.whl")
    return whl


def test_wheel_holds_one_namespace_and_the_bundled_model(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert tops == {"rhox"}, f"top-level names in the wheel: {sorted(tops)}"
    for needed in ("rhox/__init__.py", "rhox/engine/cli.py", "rhox/explorer/app.py",
                   "rhox/assets/model/config.json", "rhox/assets/model/weights.safetensors",
                   "rhox/assets/sigesn_train.db",
                   # the Al and SiGe models of the transfer study, loadable by name (rhox.load_model("Al"))
                   "rhox/assets/models/Al/config.json", "rhox/assets/models/Al/weights.safetensors",
                   "rhox/assets/models/Al/evaluation.json", "rhox/assets/models/SiGe/config.json",
                   "rhox/assets/models/SiGe/weights.safetensors", "rhox/assets/models/SiGe/evaluation.json"):
        assert needed in names, needed


@pytest.mark.slow
def test_wheel_in_a_fresh_venv_gives_the_api_and_finds_the_bundled_model(wheel, tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    py = venv / "bin" / "python"
    # The dependencies (torch, GPAW, ...) come from this test's environment as a plain path entry:
    # a .pth line adds the folder without running the .pth files in it, so the editable install of
    # the checkout stays out of the fresh venv.
    site = subprocess.check_output([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                   text=True).strip()
    Path(site, "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)],
                   check=True, capture_output=True, timeout=300)
    script = (
        "import importlib.util, rhox\n"
        "assert importlib.util.find_spec('engine') is None and importlib.util.find_spec('explorer') is None\n"
        "print(rhox.__file__)\n"
        "from rhox.engine.bundled import default_model_dir\n"
        "print(default_model_dir())\n"
        "m = rhox.load_model()\n"
        "a = rhox.random_alloy('SiGeSn', 'Si0.5Ge0.25Sn0.25', repeat=1, seed=0)\n"
        "f = rhox.predict(m, a, shape=(8, 8, 8), n_samples=2)\n"
        "print(f.mean.shape, float(f.integrate()))\n"
        "print(callable(rhox.App), sorted(rhox.__all__))\n"
    )
    run = subprocess.run([str(py), "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                         env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "OMP_NUM_THREADS": "1"})
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert lines[0].startswith(site), lines[0]          # rhox comes from the wheel ...
    assert lines[1].startswith(site) and lines[1].endswith("model"), lines[1]  # ... and so does its model
    assert lines[2].startswith("(8, 8, 8)")
    assert float(lines[2].split()[-1]) > 0
    assert lines[3].startswith("True")
    cli = subprocess.run([str(venv / "bin" / "rhox"), "--help"], capture_output=True, text=True, timeout=120,
                         cwd=tmp_path, env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    assert cli.returncode == 0 and "predict" in cli.stdout


def test_public_api_names_resolve():
    import rhox

    for name in rhox.__all__:
        assert getattr(rhox, name) is not None, name
    assert rhox.load_model.__module__ == "rhox.engine.model"
    assert issubclass(rhox.InputError, rhox.RhoxError) and issubclass(rhox.InputError, ValueError)


def test_old_top_level_names_warn_from_a_checkout():
    code = ("import warnings; warnings.simplefilter('error', DeprecationWarning)\n"
            "try:\n    import engine\nexcept DeprecationWarning as w:\n    print('warned:', w)\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert "warned:" in out.stdout and "rhox.engine" in out.stdout, out.stdout + out.stderr
