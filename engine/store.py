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


# Tables every ASE SQLite database has (ase.db.sqlite's schema, versions 5 and later).
ASE_TABLES = frozenset({"systems", "species", "keys", "text_key_values", "number_key_values", "information"})


def _readonly_uri(path: Path) -> str:
    # mode=ro: SQLite itself refuses every write, and creates no journal file beside it.
    return path.resolve().as_uri() + "?mode=ro"


def check_dataset_file(path: str | os.PathLike) -> None:
    """Refuse (:class:`DatasetError`) an existing file that is not an ASE SQLite database.

    Reads the file (read-only) and never writes it: a 0-byte file, a file that is not SQLite,
    and an SQLite file of another program (its tables are not ASE's) are all refused, so that
    rhox never turns them into a dataset by adding its tables.
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path} is not a regular file, so not a dataset")
    with open(path, "rb") as fh:
        head = fh.read(16)
    if not head:
        raise DatasetError(f"{path} is an empty file (0 bytes), not an rhox dataset; "
                           "remove it or choose another file name")
    if not head.startswith(b"SQLite format 3"):
        raise DatasetError(f"{path} is not an ASE database (not an SQLite file)")
    try:
        con = sqlite3.connect(_readonly_uri(path), uri=True, timeout=20)
        try:
            tables = {name for (name,) in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        finally:
            con.close()
    except sqlite3.DatabaseError as err:
        raise DatasetError(f"{path} is not a readable ASE database: {err}") from err
    missing = ASE_TABLES - tables
    if missing:
        found = ", ".join(sorted(tables)) or "none"
        raise DatasetError(f"{path} is an SQLite file of another program, not an ASE database "
                           f"(its tables: {found}); rhox leaves it untouched")


def _create_empty(path: Path) -> None:
    """Create an empty ASE database at ``path`` atomically, unless a file is already there.

    The schema is written to a temporary file beside it and linked into place (a hard link
    fails if the name exists), so that no other process ever sees a half-made file.
    """
    import ase.db.sqlite

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{socket.gethostname()}.tmp")
    try:
        db = ase.db.sqlite.SQLite3Database(str(tmp))
        db.count()  # the first query creates ASE's tables and indexes
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass  # another worker made it first: use theirs
        except OSError:  # no hard links on this file system: a plain rename, if still free
            if not path.exists():
                os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _readonly_db(path: Path):
    """An ``ase.db`` SQLite database on ``path`` whose connections cannot write."""
    import ase.db.sqlite

    class ReadOnlySQLite(ase.db.sqlite.SQLite3Database):
        def _connect(self):
            return sqlite3.connect(_readonly_uri(Path(self.filename)), uri=True, timeout=20)

    return ReadOnlySQLite(str(path), create_indices=False, use_lock_file=False)


class Dataset:
    """A density dataset in an ASE SQLite database at ``path``.

    ``Dataset(path)`` creates the file if it does not exist (atomically: other processes
    never see a half-made one); ``Dataset(path, must_exist=True)`` refuses a missing file;
    ``Dataset(path, readonly=True)`` (or :func:`open_readonly`) opens an existing dataset so
    that nothing, not even SQLite's journal, is ever written. An existing file that is not an
    ASE SQLite database (empty, not SQLite, or another program's SQLite file) is refused with
    :class:`DatasetError` and never written to.
    """

    def __init__(self, path: str | os.PathLike, must_exist: bool = False, readonly: bool = False):
        import ase.db

        self.path = Path(path)
        self.readonly = readonly
        if self.path.is_dir():
            raise DatasetError(f"{self.path} is a directory, not a dataset file")
        if self.path.exists():
            check_dataset_file(self.path)
        elif must_exist or readonly:
            raise DatasetError(f"dataset {self.path} does not exist")
        else:
            _create_empty(self.path)
            check_dataset_file(self.path)
        self.db = _readonly_db(self.path) if readonly else ase.db.connect(str(self.path), type="db", append=True)
        try:
            self.db.count()
        except (sqlite3.DatabaseError, KeyError, ValueError, OSError) as err:
            raise DatasetError(f"{self.path} is not a readable ASE database: {err}") from err

    def _writable(self) -> None:
        if self.readonly:
            raise DatasetError(f"dataset {self.path} was opened read-only")

    # --- work items ------------------------------------------------------------------------
    def reserve(self, task: str) -> int | None:
        """Reserve work item ``task``; its row id, or None when it exists (done, failed or taken).

        ASE's ``reserve`` checks then writes in two steps, so two processes can both win a
        race; the lowest row id keeps the item and the other gives it back.
        """
        self._writable()
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
        self._writable()
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

    def find_done(self, task: str):
        """The finished row (with data) of work item ``task``, or None."""
        for row in self.db.select(**{keys.TASK: task, keys.STATUS: keys.STATUS_DONE}):
            return row
        return None

    def write_copy(self, rid: int, row, key_value_pairs: dict | None = None) -> None:
        """Replace reservation ``rid`` by a copy of finished ``row`` of another dataset, atomically.

        Structure, energy, forces, density and provenance are copied unchanged (the row's
        ``wall_time`` stays the cost of the original calculation); ``key_value_pairs`` are added.
        """
        self._writable()
        atoms = row.toatoms()  # carries the row's energy and forces as a SinglePointCalculator
        kvp = dict(row.key_value_pairs)
        kvp.update(_clean_kvp(key_value_pairs or {}))
        self.db.update(rid, atoms=atoms, data=dict(row.data), delete_keys=[keys.PID, keys.HOST], **kvp)

    def write_failure(self, rid: int, reason: str, atoms: Atoms | None = None,
                      key_value_pairs: dict | None = None) -> None:
        """Record that work item ``rid`` failed, with its reason (kept, never silently dropped)."""
        self._writable()
        kvp = {keys.STATUS: keys.STATUS_FAILED, keys.REASON: reason.replace("\n", " ")[:500]}
        kvp.update(_clean_kvp(key_value_pairs or {}))
        if atoms is not None:
            atoms = atoms.copy()
            atoms.calc = None
        self.db.update(rid, atoms=atoms, delete_keys=[keys.PID, keys.HOST], **kvp)

    def release(self, rid: int) -> None:
        """Give back a reservation (e.g. on Ctrl-C) so that a later run does the item."""
        self._writable()
        del self.db[rid]

    def clear_stale(self, all_hosts: bool = False, retry_failed: bool = False) -> int:
        """Delete reservations left by dead workers (and failures, if asked); how many.

        A reservation is stale when its process is gone on this host, when it has no status
        for longer than 5 minutes, or (``all_hosts``) whenever it is still 'running'.
        """
        self._writable()
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


def open_readonly(path: str | os.PathLike) -> Dataset:
    """An existing dataset opened read-only (``info``, training and evaluation read this way)."""
    return Dataset(path, readonly=True)


def row_to_sample(row) -> DensitySample:
    """An ``ase.db`` row of a finished sample -> :class:`DensitySample`."""
    atoms = row.toatoms()
    prov = dict(row.data.get(keys.PROVENANCE, {}))
    info = prov.pop("info", {}) or {}
    atoms.info.update(info)
    atoms.info[keys.INFO_ROW_ID] = row.id
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
