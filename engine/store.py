"""The dataset: an ASE database (SQLite) of DFT density samples.

One row per work item, identified by its ``task`` key (a hash of the item's parameters).
A worker first *reserves* the item with ``ase.db``'s ``reserve`` (an empty row), then replaces
that row in one SQLite transaction by the finished sample (structure, energy and forces in the
row, the density and provenance in its data) or by a failure record with its reason. So a
killed run leaves every finished sample readable and no half-written one; re-running skips
what is done; many processes can fill one database at once.

``ase db data.db`` lists it; ``ase db data.db status=done composition=Si0.5Ge0.5`` selects.
"""
from __future__ import annotations

import os
import socket
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator

from . import keys
from .errors import DatasetError  # noqa: F401  (re-exported)
from .dft import DensitySample

STALE_AFTER_S = 300.0  # a reservation without status this old is from a dead worker


@dataclass(frozen=True)
class Failure:
    task: str
    reason: str
    key_value_pairs: dict


def _check_readable(path: Path) -> None:
    with open(path, "rb") as fh:
        head = fh.read(16)
    if head and not head.startswith(b"SQLite format 3"):
        raise DatasetError(f"{path} is not an ASE database (not an SQLite file)")


class Dataset:
    """A density dataset in an ASE SQLite database at ``path``.

    ``Dataset(path)`` creates the file on first write; ``Dataset(path, must_exist=True)``
    refuses a missing file. A file that is not an ASE SQLite database is refused with
    :class:`DatasetError`, and never written to.
    """

    def __init__(self, path: str | os.PathLike, must_exist: bool = False):
        import ase.db

        self.path = Path(path)
        if self.path.is_dir():
            raise DatasetError(f"{self.path} is a directory, not a dataset file")
        if self.path.exists():
            _check_readable(self.path)
        elif must_exist:
            raise DatasetError(f"dataset {self.path} does not exist")
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self.db = ase.db.connect(str(self.path), type="db", append=True)
        if self.path.exists():
            try:
                self.db.count()
            except (sqlite3.DatabaseError, KeyError, ValueError) as err:
                raise DatasetError(f"{self.path} is not a readable ASE database: {err}") from err

    # --- work items ------------------------------------------------------------------------
    def reserve(self, task: str) -> int | None:
        """Reserve work item ``task``; its row id, or None when it exists (done, failed or taken).

        ASE's ``reserve`` checks then writes in two steps, so two processes can both win a
        race; the lowest row id keeps the item and the other gives it back.
        """
        rid = self.db.reserve(**{keys.TASK: task})
        if rid is None:
            return None
        ids = sorted(row.id for row in self.db.select(**{keys.TASK: task}))
        if ids[0] != rid:
            del self.db[rid]
            return None
        self.db.update(rid, **{keys.STATUS: keys.STATUS_RUNNING, keys.PID: os.getpid(),
                               keys.HOST: socket.gethostname()})
        return rid

    def write_sample(self, rid: int, sample: DensitySample, key_value_pairs: dict | None = None) -> None:
        """Replace reservation ``rid`` by a finished sample, atomically."""
        atoms = sample.atoms.copy()
        atoms.calc = SinglePointCalculator(atoms, energy=sample.energy, forces=sample.forces)
        row = self.db.get(id=rid)
        kvp = {keys.TASK: row.get(keys.TASK), keys.STATUS: keys.STATUS_DONE,
               keys.INTEGRAL: float(sample.integral),
               keys.WALL_TIME: float(sample.provenance.get("wall_time_s", 0.0))}
        kvp.update(_clean_kvp(key_value_pairs or {}))
        data = {keys.DENSITY: np.asarray(sample.density),
                keys.PROVENANCE: dict(sample.provenance, info=_jsonable(sample.atoms.info),
                                      magmom=sample.magmom, field=sample.field_name)}
        # update() with atoms rewrites the row (same id) in a single transaction.
        self.db.update(rid, atoms=atoms, data=data, delete_keys=[keys.PID, keys.HOST], **kvp)

    def write_failure(self, rid: int, reason: str, atoms: Atoms | None = None,
                      key_value_pairs: dict | None = None) -> None:
        """Record that work item ``rid`` failed, with its reason (kept, never silently dropped)."""
        kvp = {keys.STATUS: keys.STATUS_FAILED, keys.REASON: reason.replace("\n", " ")[:500]}
        kvp.update(_clean_kvp(key_value_pairs or {}))
        if atoms is not None:
            atoms = atoms.copy()
            atoms.calc = None
        self.db.update(rid, atoms=atoms, delete_keys=[keys.PID, keys.HOST], **kvp)

    def release(self, rid: int) -> None:
        """Give back a reservation (e.g. on Ctrl-C) so that a later run does the item."""
        del self.db[rid]

    def clear_stale(self, all_hosts: bool = False, retry_failed: bool = False) -> int:
        """Delete reservations left by dead workers (and failures, if asked); how many.

        A reservation is stale when its process is gone on this host, when it has no status
        for longer than 5 minutes, or (``all_hosts``) whenever it is still 'running'.
        """
        host = socket.gethostname()
        stale = []
        for row in self.db.select():
            status = row.get(keys.STATUS)
            if status == keys.STATUS_RUNNING:
                if all_hosts or (row.get(keys.HOST) == host and not _pid_alive(row.get(keys.PID))):
                    stale.append(row.id)
            elif status is None and row.get(keys.TASK) is not None:
                if all_hosts or time.time() - _ase_time(row.ctime) > STALE_AFTER_S:
                    stale.append(row.id)
            elif status == keys.STATUS_FAILED and retry_failed:
                stale.append(row.id)
        if stale:
            self.db.delete(stale)
        return len(stale)

    # --- reading ---------------------------------------------------------------------------
    def task_status(self) -> dict[str, str]:
        """``{task: status}`` for every row."""
        return {row.get(keys.TASK): row.get(keys.STATUS) for row in self.db.select(include_data=False)}

    def count(self, status: str | None = keys.STATUS_DONE) -> int:
        return self.db.count(**({keys.STATUS: status} if status else {}))

    def rows(self, **selection):
        """Rows of finished samples (with data), as ``ase.db`` rows."""
        return self.db.select(**{keys.STATUS: keys.STATUS_DONE}, **selection)

    def samples(self, **selection) -> Iterator[DensitySample]:
        """Finished samples as :class:`DensitySample` objects."""
        for row in self.rows(**selection):
            yield row_to_sample(row)

    def failures(self) -> list[Failure]:
        return [Failure(row.get(keys.TASK), row.get(keys.REASON, ""), dict(row.key_value_pairs))
                for row in self.db.select(**{keys.STATUS: keys.STATUS_FAILED})]

    def summary(self) -> list[dict]:
        """One dict per finished sample: id, system, composition, natoms, grid, temperature, energy/atom, ∫ñ."""
        out = []
        for row in self.db.select(**{keys.STATUS: keys.STATUS_DONE}, include_data=False):
            out.append({
                "id": row.id, "system": row.get(keys.SYSTEM), "composition": row.get(keys.REALISED) or row.formula,
                "formula": row.formula, "natoms": row.natoms, "repeat": row.get(keys.REPEAT),
                "temperature": row.get(keys.TEMPERATURE), "vacancies": row.get(keys.VACANCIES, 0),
                "antisites": row.get(keys.ANTISITES, 0), "energy_per_atom": row.get("energy", np.nan) / max(row.natoms, 1),
                "integral": row.get(keys.INTEGRAL), "wall_time": row.get(keys.WALL_TIME),
            })
        return out


def row_to_sample(row) -> DensitySample:
    """An ``ase.db`` row of a finished sample -> :class:`DensitySample`."""
    atoms = row.toatoms()
    prov = dict(row.data.get(keys.PROVENANCE, {}))
    info = prov.pop("info", {}) or {}
    atoms.info.update(info)
    atoms.info["row_id"] = row.id
    atoms.calc = None
    return DensitySample(
        atoms=atoms,
        density=np.asarray(row.data[keys.DENSITY]),
        energy=float(row.get("energy", np.nan)),
        forces=np.asarray(row.get("forces", np.zeros((row.natoms, 3)))),
        integral=float(row.get(keys.INTEGRAL, np.nan)),
        field_name=prov.get("field", keys.FIELD_PSEUDO),
        magmom=float(prov.get("magmom", 0.0)),
        provenance=prov,
    )


def _pid_alive(pid) -> bool:
    if not pid:
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _ase_time(ctime: float) -> float:
    # ase.db stores ctime in years since 2000-01-01.
    from ase.db.core import T2000, YEAR

    return ctime * YEAR + T2000


def _clean_kvp(kvp: dict) -> dict:
    out = {}
    for k, v in kvp.items():
        if v is None:
            continue
        if isinstance(v, (np.integer,)):
            v = int(v)
        elif isinstance(v, (np.floating,)):
            v = float(v)
        elif isinstance(v, (list, tuple)):
            v = "x".join(str(x) for x in v)
        out[k] = v
    return out


def _jsonable(d: dict) -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, (str, int, float, bool)) or v is None:
            out[k] = v
        elif isinstance(v, (np.integer, np.floating)):
            out[k] = v.item()
        elif isinstance(v, (list, tuple, np.ndarray)):
            out[k] = list(np.asarray(v).tolist())
        else:
            out[k] = str(v)
    return out
