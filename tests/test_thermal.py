import numpy as np
import pytest

from rhox.engine.errors import InputError
from rhox.engine.structures import random_alloy
from rhox.engine.thermal import (einstein_rms_displacement, einstein_snapshots, md_snapshots,
                                 mean_square_displacement, thermalize)


def test_einstein_amplitude_grows_with_temperature_and_lighter_atoms():
    a = random_alloy("SiGeSn", "Si0.5Ge0.25Sn0.25", 2, seed=0)
    msd = [mean_square_displacement(einstein_snapshots(a, t, n=4, seed=1), a) for t in (100, 300, 900)]
    assert msd[0] < msd[1] < msd[2]
    # Classical: <u²> ∝ T.
    assert msd[2] / msd[1] == pytest.approx(3, rel=0.25)
    # Si at 300 K: a few hundredths of an Å² (Debye-Waller factors of Si are ~0.005 Å² per direction).
    assert 0.03 < einstein_rms_displacement("Si", 300) < 0.12
    snaps = einstein_snapshots(a, 300, n=2, seed=4)
    assert not np.allclose(snaps[0].positions, snaps[1].positions)
    assert np.allclose(einstein_snapshots(a, 300, n=1, seed=4)[0].positions, snaps[0].positions)


def test_negative_temperature_refused():
    a = random_alloy("SiGe", "Si0.5Ge0.5", 1, seed=0)
    with pytest.raises(InputError, match="temperature must be >= 0"):
        einstein_snapshots(a, -5)
    with pytest.raises(InputError, match="temperature must be >= 0"):
        einstein_snapshots(a, float("nan"))
    with pytest.raises(InputError, match="unknown thermalization method 'hot'"):
        thermalize(a, 300, method="hot")


@pytest.mark.slow
def test_chgnet_md_thermalizes():
    a = random_alloy("SiGeSn", "Si0.5Ge0.25Sn0.25", 1, seed=0)
    snaps = md_snapshots(a, 600, n=2, seed=0, equilibration_steps=20, interval=10)
    assert len(snaps) == 2 and snaps[0].info["thermal"] == "md"
    msd = mean_square_displacement(snaps, a)
    assert 1e-3 < msd < 0.5
    assert not np.allclose(snaps[0].positions, snaps[1].positions)
