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
    from rhox.engine.dft import DFTSettings

    return DFTSettings(ecut=200.0, xc="LDA", kpts=(2, 2, 2), smearing=0.1)


@pytest.fixture
def si2():
    from ase.build import bulk

    atoms = bulk("Si", "diamond", a=5.43)
    atoms.info["system"] = "SiGeSn"
    return atoms


def rhox_cmd() -> list[str]:
    return [sys.executable, "-m", "rhox.engine.cli"]


def subprocess_env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def tree_digest(root: Path) -> dict[str, str]:
    """Relative path -> sha256 of every file below ``root`` (to show that nothing was written)."""
    import hashlib

    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(Path(root).rglob("*")) if p.is_file()}


def assert_refused(args: list[str], cwd: Path, *words: str, timeout: float = 120) -> str:
    """Run ``rhox ARGS`` in ``cwd`` as a user would; assert it refuses cleanly and return the line.

    Refusing cleanly means: exit code 2, one line on stderr starting ``error:`` that contains each
    of ``words`` (case-insensitive), no traceback, and no file below ``cwd`` created or changed.
    """
    import subprocess

    before = tree_digest(cwd)
    proc = subprocess.run(rhox_cmd() + [str(a) for a in args], cwd=cwd, env=subprocess_env(),
                          capture_output=True, text=True, timeout=timeout)
    err = proc.stderr.strip()
    assert proc.returncode == 2, f"exit {proc.returncode} for {args}: {err}\n{proc.stdout}"
    assert "Traceback" not in err + proc.stdout, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), f"not one error line for {args}: {err!r}"
    for w in words:
        assert w.lower() in lines[0].lower(), f"{w!r} not in {lines[0]!r}"
    assert tree_digest(cwd) == before, f"{args} changed files below {cwd}"
    return lines[0]


def two_atom_dft(path: Path, cells, system: str, ecut: float = 200.0, rattle: float = 0.05) -> Path:
    """A real GPAW dataset at ``path`` of two-atom diamond cells ``[(symbols, a in Å), ...]``, rattled
    (seed = index), LDA at ``ecut`` eV on a 2x2x2 k-mesh: about a second per cell."""
    from ase.build import bulk

    from rhox.engine.dft import DFTSettings
    from rhox.engine.generate import plan_structures, run_task

    settings = DFTSettings(ecut=ecut, xc="LDA", kpts=(2, 2, 2), smearing=0.1)
    structures = []
    for k, (symbols, a) in enumerate(cells):
        at = bulk("Si", "diamond", a=a)
        at.set_chemical_symbols(symbols)
        at.rattle(rattle, seed=k)
        structures.append((f"{''.join(symbols)}_{k}", at))
    for task in plan_structures(structures, settings, system_name=system):
        assert run_task(task, str(path))["status"] == "done"
    return path


def foreign_sqlite(path: Path) -> Path:
    """An SQLite file of another program at ``path``: one unrelated table with a row."""
    import sqlite3

    con = sqlite3.connect(path)
    con.execute("CREATE TABLE inventory (item TEXT, qty INTEGER)")
    con.execute("INSERT INTO inventory VALUES ('bolts', 12)")
    con.commit()
    con.close()
    return path


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory):
    """A real GPAW dataset of 6 two-atom SiGe cells (LDA, 200 eV, ~1 s each), rattled."""
    path = tmp_path_factory.mktemp("data") / "tiny.db"
    return two_atom_dft(path, [(["Si", "Si"], 5.43), (["Ge", "Ge"], 5.66), (["Si", "Ge"], 5.54),
                               (["Si", "Ge"], 5.50), (["Si", "Si"], 5.40), (["Ge", "Ge"], 5.70)], "SiGe")


@pytest.fixture(scope="session")
def tiny_model(tiny_dataset, tmp_path_factory):
    """A small BNN (and baseline) trained on :func:`tiny_dataset` in a few seconds."""
    from rhox.engine.training import TrainConfig, fit

    out = tmp_path_factory.mktemp("models") / "tiny"
    cfg = TrainConfig(hidden=(32, 32), max_epochs=12, batch_size=512, learning_rate=3e-3, seed=0,
                      val_fraction=0.34, patience=20, device="cpu", baseline=True)
    model = fit(tiny_dataset, out, cfg)
    return out, model


# --- explorer fixtures -------------------------------------------------------------------------

def _copy_rows(src: Path, dst: Path, min_rows: int = 4) -> None:
    """Copy finished rows of a dataset into a new one until every species appears (>= min_rows)."""
    import ase.db

    from rhox.engine import keys

    source = ase.db.connect(str(src))
    target = ase.db.connect(str(dst), type="db", append=True)
    seen: set[str] = set()
    rows = list(source.select(**{keys.STATUS: keys.STATUS_DONE}))
    # Mixed compositions first, so that few rows cover all species.
    rows.sort(key=lambda r: -len(set(r.symbols)))
    taken = 0
    for row in rows:
        new = set(row.symbols) - seen
        if taken >= min_rows and not new:
            continue
        target.write(row.toatoms(), key_value_pairs=row.key_value_pairs, data=row.data)
        seen |= set(row.symbols)
        taken += 1
        if taken >= min_rows and seen >= {"Si", "Ge", "Sn"}:
            break


@pytest.fixture(scope="session")
def explorer_data(tmp_path_factory) -> Path:
    """A small SiGeSn dataset for the explorer tests (all three species present).

    A few rows of ``$RHOX_DATA`` or the bundled ``assets/sigesn_train.db``; without either,
    four two-atom cells computed with GPAW (LDA, 200 eV; about 10 s).
    """
    path = tmp_path_factory.mktemp("explorer_data") / "explorer.db"
    src = Path(os.environ.get("RHOX_DATA") or ROOT / "assets" / "sigesn_train.db")
    if src.is_file():
        try:
            _copy_rows(src, path)
            return path
        except Exception:  # unreadable source: fall back to computing a few cells
            path.unlink(missing_ok=True)
    return two_atom_dft(path, [(["Si", "Ge"], 5.54), (["Ge", "Sn"], 6.07), (["Si", "Sn"], 5.96),
                               (["Si", "Si"], 5.43)], "SiGeSn")


@pytest.fixture(scope="session")
def explorer_model(explorer_data, tmp_path_factory) -> Path:
    """A small SiGeSn model for the explorer tests (seconds to train; always fits this engine).

    ``$RHOX_MODEL`` is used instead when set.
    """
    env = os.environ.get("RHOX_MODEL")
    if env:
        return Path(env)
    from rhox.engine.training import TrainConfig, fit

    out = tmp_path_factory.mktemp("explorer_models") / "tiny"
    fit(explorer_data, out, TrainConfig(hidden=(32, 32), max_epochs=2, batch_size=2048, baseline=False,
                                        val_fraction=0.25, device="cpu", seed=0))
    return out
