"""SiGeSn DFT cells for calibrating the σ inflation, and defective cells for the default model's training.

Two small datasets, neither of them a reported test set (issue 12, items 1 and 7):

- ``benchmarks/data/sigesn_calib.db`` (the *calibration set* of the atom-environment novelty's σ
  inflation, :mod:`rhox.engine.novelty`): two 8-atom 600 K cells strained isotropically by +4 % and
  -4 % (lattice), and two 8-atom cells with one vacancy (7 atoms, 600 K), at compositions and seeds
  used by no test set (``sigesn_ood_*`` use seeds 30-50, the test set seed 2);
- the vacancy cells added to the default model's training set are made by ``make assets``
  (``--vacancies 1``, seed 3, into ``assets/sigesn_train_defects.db``).

DFT: GPAW with rhox's default SiGeSn settings. Resumable: run it again and only missing
calculations run.

    python benchmarks/calib_data.py
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
DATA = HERE / "data"
CALIB = DATA / "sigesn_calib.db"
STRAINS = (0.04, -0.04)
SEED = 60


def rhox(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "rhox.engine.cli", *args], check=True)


def strained_cells(path: Path) -> Path:
    """Write 600 K 8-atom SiGeSn snapshots, one strained by each of STRAINS, to an extxyz file."""
    from ase.io import write

    from rhox.engine.structures import get_system, random_alloy
    from rhox.engine.thermal import thermalize

    system = get_system("SiGeSn")
    comps = [(3, 4, 1), (2, 3, 3)]  # Si, Ge, Sn counts of 8: not the vacancy cells' compositions
    images = []
    for k, (strain, counts) in enumerate(zip(STRAINS, comps)):
        comp = dict(zip(system.elements, [c / 8 for c in counts]))
        atoms = thermalize(random_alloy(system, comp, repeat=1, seed=SEED + k), 600.0, "md", seed=SEED + k)[0]
        atoms.set_cell(atoms.cell * (1 + strain), scale_atoms=True)
        atoms.info["strain"] = strain
        images.append(atoms)
    write(path, images, format="extxyz")
    return path


def main() -> None:
    DATA.mkdir(exist_ok=True)
    xyz = DATA / "sigesn_calib_strain.extxyz"
    if not xyz.exists():
        tmp = xyz.with_name(xyz.stem + ".tmp.extxyz")
        strained_cells(tmp)
        tmp.replace(xyz)
    rhox("generate", "SiGeSn", "--compositions", "Si0.625Ge0.125Sn0.25;Si0.125Ge0.625Sn0.25", "--repeat", "1",
         "--vacancies", "1", "--temperature", "600", "--thermal", "md", "--seed", str(SEED + 5), "--out", str(CALIB))
    rhox("generate", "--structures", str(xyz), "--out", str(CALIB))


if __name__ == "__main__":
    main()
