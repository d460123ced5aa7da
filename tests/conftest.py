"""Shared tiny fixtures: structures and DFT settings that run in about a second."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
OUTPUT = ROOT / "tests" / "_output"


@pytest.fixture(scope="session")
def output_dir() -> Path:
    """Where tests leave artefacts worth looking at (screenshots, plots)."""
    OUTPUT.mkdir(parents=True, exist_ok=True)
    return OUTPUT


@pytest.fixture
def tiny_settings():
    """Si2-scale GPAW settings: LDA, 200 eV, Γ-centred 2x2x2 (about 1 s here)."""
    from engine.dft import DFTSettings

    return DFTSettings(ecut=200.0, xc="LDA", kpts=(2, 2, 2), smearing=0.1)


@pytest.fixture
def si2():
    from ase.build import bulk

    atoms = bulk("Si", "diamond", a=5.43)
    atoms.info["system"] = "SiGeSn"
    return atoms


def rhox_cmd() -> list[str]:
    return [sys.executable, "-m", "engine.cli"]


def subprocess_env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("OMP_NUM_THREADS", "1")
    return env
