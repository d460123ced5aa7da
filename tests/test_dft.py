"""A real GPAW calculation on a tiny cell: the stored field is the one GPAW integrates."""
import numpy as np
import pytest

from rhox.engine.dft import DFTError, DFTSettings, kpoint_mesh, run_dft, settings_for
from rhox.engine.store import Dataset

pytestmark = pytest.mark.dft


def test_si2_density_integrates_like_gpaw(si2, tiny_settings, tmp_path):
    s = run_dft(si2, tiny_settings)
    # Grid matches the cell: a full periodic grid of GPAW's coarse shape.
    assert s.density.ndim == 3 and min(s.grid_shape) >= 8
    assert np.allclose(s.atoms.cell.array, si2.cell.array)
    # Our grid sum (e/Å³ · dV) equals GPAW's own integral of the smooth pseudo-density.
    assert s.integrate() == pytest.approx(s.integral, rel=1e-6)
    # Smooth pseudo-density includes the pseudo-core: more than 8 valence electrons, never negative.
    assert s.integral > 8.0 and s.density.min() > -1e-8
    assert s.provenance["valence_electrons"] == 8.0
    assert np.isfinite(s.energy) and s.forces.shape == (2, 3)
    assert s.provenance["gpaw_version"] and s.provenance["kpts"] == [2, 2, 2]
    # Round trip through the dataset keeps the field bit for bit.
    ds = Dataset(tmp_path / "d.db")
    rid = ds.reserve("t1")
    ds.write_sample(rid, s, {"system": "SiGeSn"})
    back = next(ds.samples())
    assert np.array_equal(back.density, s.density)
    assert back.integrate() == pytest.approx(s.integral, rel=1e-6)
    assert back.energy == pytest.approx(s.energy)


def test_unconverged_calculation_raises_with_reason(si2, tiny_settings):
    from dataclasses import replace

    with pytest.raises(DFTError, match="onverge"):
        run_dft(si2, replace(tiny_settings, max_iterations=2))


def test_default_settings_and_kpoints():
    from rhox.engine.structures import random_alloy

    small = random_alloy("SiGeSn", "Si0.5Ge0.5", 1, seed=0)
    big = random_alloy("SiGeSn", "Si0.5Ge0.5", 2, seed=0)
    st = settings_for("SiGeSn")
    assert kpoint_mesh(small, st) == (2, 2, 2)
    assert kpoint_mesh(big, st) == (1, 1, 1)
    assert settings_for("CrFeCoNi").spin_polarized
    assert DFTSettings.from_dict(st.to_dict()) == st


def test_mpi_run_matches_serial(si2, tiny_settings):
    from rhox.engine.dft import mpi_available, run_dft_mpi

    if not mpi_available():
        pytest.skip("no mpiexec + mpi4py here (pip install rhox[mpi]); serial fallback tested below")
    serial = run_dft(si2, tiny_settings)
    par = run_dft_mpi(si2, tiny_settings, ranks=2)
    assert par.provenance["mpi_ranks"] == 2
    assert par.energy == pytest.approx(serial.energy, abs=1e-6)
    np.testing.assert_allclose(par.density, serial.density, atol=1e-10)
    assert par.integrate() == pytest.approx(par.integral, rel=1e-6)


def test_mpi_falls_back_to_serial_with_one_rank(si2, tiny_settings):
    from rhox.engine.dft import run_dft_mpi

    s = run_dft_mpi(si2, tiny_settings, ranks=1)
    assert s.provenance["mpi_ranks"] == 1
