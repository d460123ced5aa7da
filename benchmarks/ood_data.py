"""Out-of-distribution SiGeSn test cells for the uncertainty study (issue 12, item 1).

The bundled model learned 8-atom SiGeSn cells at 300/900 K with Vegard lattice constants. These
cells are what it has not seen, each kind in its own dataset under ``benchmarks/data/``:

- ``sigesn_ood_strain.db``: 8-atom cells, 600 K MD snapshots, then strained isotropically by
  +6 % and -6 % (lattice), and -10 % (the trust report's "foreign environment" case);
- ``sigesn_ood_vacancy.db``: 8-atom cells with one vacancy (7 atoms), 600 K;
- ``sigesn_ood_large.db``: 64-atom cells (2x2x2), 600 K, Γ point.

DFT: GPAW with rhox's default SiGeSn settings (PW 300 eV, PBE, k-point density 1.5/Å⁻¹,
Fermi-Dirac 0.1 eV). Resumable: run it again and only missing calculations run.

    python benchmarks/ood_data.py            # all three (about 20 min serial here)
"""
from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
DATA = HERE / "data"
STRAINS = (0.06, -0.06, -0.10)


def rhox(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "rhox.engine.cli", *args], check=True)


def strained_cells(path: Path, n_per_strain: int = 2, seed: int = 30) -> Path:
    """Write 600 K SiGeSn snapshots strained by each of STRAINS to an extxyz file."""
    from ase.io import write

    import numpy as np

    from rhox.engine.structures import get_system, random_alloy
    from rhox.engine.thermal import thermalize

    system = get_system("SiGeSn")
    images = []
    # Compositions an 8-site cell realises exactly, every species present.
    counts = [(a, b, 8 - a - b) for a in range(1, 7) for b in range(1, 8 - a)]
    rng = np.random.default_rng(seed)
    picks = rng.choice(len(counts), size=n_per_strain * len(STRAINS), replace=False)
    for k, i in enumerate(picks):
        strain = STRAINS[k % len(STRAINS)]
        comp = dict(zip(system.elements, np.array(counts[i]) / 8))
        atoms = thermalize(random_alloy(system, comp, repeat=1, seed=seed + k), 600.0, "md", seed=seed + k)[0]
        atoms.set_cell(atoms.cell * (1 + strain), scale_atoms=True)
        atoms.info["strain"] = strain
        images.append(atoms)
    write(path, images, format="extxyz")
    return path


def main() -> None:
    DATA.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        xyz = HERE / "data" / "sigesn_ood_strain.extxyz"
        if not xyz.exists():
            strained_cells(Path(tmp) / "s.extxyz")
            Path(tmp, "s.extxyz").replace(xyz)
        rhox("generate", "--structures", str(xyz), "--out", str(DATA / "sigesn_ood_strain.db"))
    rhox("generate", "SiGeSn", "--compositions",
         "Si0.5Ge0.25Sn0.25;Si0.25Ge0.5Sn0.25;Si0.25Ge0.25Sn0.5;Si0.375Ge0.375Sn0.25", "--repeat", "1", "--vacancies", "1",
         "--temperature", "600", "--thermal", "md", "--seed", "40", "--out", str(DATA / "sigesn_ood_vacancy.db"))
    rhox("generate", "SiGeSn", "--compositions", "random:2", "--repeat", "2", "--temperature", "600",
         "--thermal", "md", "--seed", "50", "--out", str(DATA / "sigesn_ood_large.db"))


if __name__ == "__main__":
    main()
