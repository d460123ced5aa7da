"""Planning and running DFT work items into a dataset, serially or as Dask tasks.

A :class:`Task` describes one DFT calculation completely (system, composition, repeat,
temperature, sample index, defects, DFT settings, or a user's structure), so any worker can
run it from scratch; its :meth:`Task.key` is the row's ``task`` key in the dataset, which is
how a resumed run or another worker knows the item is done. :func:`plan` validates every item
before anything is written, so bad input costs nothing.
"""
from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
from ase import Atoms

from . import keys
from .composition import CompositionError, format_composition, parse_composition, round_composition
from .dft import DFTError, DFTSettings, run_dft, run_dft_mpi, settings_for
from .store import Dataset
from .structures import add_antisites, add_vacancies, get_system, infer_system, random_alloy, require_periodic
from .thermal import check_temperature, thermalize


@dataclass(frozen=True, eq=False)
class Task:
    """One DFT calculation. Either a generated alloy configuration or a user structure (``atoms``)."""

    system: str
    composition: str
    repeat: tuple[int, int, int] = (1, 1, 1)
    temperature: float = 0.0
    sample: int = 0
    seed: int = 0
    thermal: str = "einstein"
    vacancies: int = 0
    antisites: int = 0
    settings: dict = field(default_factory=dict)
    source: str = "generated"
    atoms: Atoms | None = None

    def key(self) -> str:
        """Deterministic id: the same parameters give the same key in any process.

        16 hex digits of a SHA-1, prefixed with ``t`` when they alone would read as a number
        (ase.db refuses such strings as values).
        """
        d = {k: v for k, v in asdict(self).items() if k != "atoms"}
        if self.atoms is not None:
            d["structure"] = [self.atoms.numbers.tolist(), np.round(self.atoms.positions, 6).tolist(),
                              np.round(self.atoms.cell.array, 6).tolist()]
        key = hashlib.sha1(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]
        try:
            float(key)
        except ValueError:
            return key
        return "t" + key

    def structure(self) -> Atoms:
        """The (unthermalized) structure of this item, built deterministically from the seed."""
        if self.atoms is not None:
            atoms = self.atoms.copy()
            atoms.info = dict(self.atoms.info, system=self.system, seed=self.seed)
            return atoms
        atoms = random_alloy(self.system, self.composition, self.repeat, seed=self.seed)
        if self.vacancies:
            atoms = add_vacancies(atoms, self.vacancies, seed=self.seed + 1)
        if self.antisites:
            atoms = add_antisites(atoms, self.antisites, get_system(self.system).elements, seed=self.seed + 2)
        return atoms

    def key_value_pairs(self) -> dict:
        return {
            keys.SYSTEM: self.system, keys.COMPOSITION: self.composition,
            keys.REPEAT: "x".join(map(str, self.repeat)), keys.TEMPERATURE: float(self.temperature),
            keys.SAMPLE: self.sample, keys.SEED: self.seed, keys.THERMAL: self.thermal,
            keys.VACANCIES: self.vacancies, keys.ANTISITES: self.antisites, keys.SOURCE: self.source,
        }


def _seed(base: int, *parts) -> int:
    h = hashlib.sha1(json.dumps([base, *parts], default=str).encode()).hexdigest()
    return int(h[:8], 16)


def plan(
    system_name: str,
    compositions: Sequence,
    repeats: Sequence = (1,),
    samples: int = 1,
    temperatures: Sequence[float] = (300.0,),
    vacancies: Sequence[int] = (0,),
    antisites: int = 0,
    thermal: str = "md",
    seed: int = 0,
    settings: DFTSettings | None = None,
) -> list[Task]:
    """All work items of a generation run, each checked (composition, repeat, temperature, defects)."""
    system = get_system(system_name)
    settings = settings or settings_for(system.name)
    if samples < 1:
        raise CompositionError(f"--samples must be >= 1, got {samples}")
    if thermal not in ("md", "einstein"):
        raise CompositionError(f"unknown thermalization method {thermal!r}; use 'md' or 'einstein'")
    temps = [check_temperature(t) for t in temperatures]
    tasks = []
    for comp in compositions:
        c = format_composition(round_composition(parse_composition(comp, system.elements), 6), digits=6)
        for rep in repeats:
            rep3 = (rep,) * 3 if np.isscalar(rep) else tuple(rep)
            for t in temps:
                for nvac in vacancies:
                    for k in range(samples):
                        task = Task(system.name, c, tuple(int(r) for r in rep3), t, k,
                                    _seed(seed, c, rep3, t, nvac, antisites, k), thermal, int(nvac),
                                    int(antisites), settings.to_dict())
                        task.structure()  # raises now on a repeat too small, too many vacancies...
                        tasks.append(task)
    return tasks


def plan_structures(atoms_list: Iterable[tuple[str, Atoms]], settings: DFTSettings | None = None,
                    system_name: str | None = None) -> list[Task]:
    """Work items for user-supplied structures ``(name, atoms)``; the system is inferred from species."""
    tasks = []
    for name, atoms in atoms_list:
        require_periodic(atoms, name)
        system = get_system(system_name) if system_name else infer_system(atoms.get_chemical_symbols())
        unknown = set(atoms.get_chemical_symbols()) - set(system.elements)
        if unknown:
            raise CompositionError(f"{name}: species {', '.join(sorted(unknown))} not in system {system.name}")
        st = settings or settings_for(system.name)
        comp = {el: atoms.get_chemical_symbols().count(el) / len(atoms) for el in system.elements}
        a = atoms.copy()
        if system.spin_polarized and not a.get_initial_magnetic_moments().any():
            a.set_initial_magnetic_moments([system.magmoms.get(s, 0.0) for s in a.get_chemical_symbols()])
        a.info.update(system=system.name, composition=format_composition(comp),
                      realised_composition=format_composition(comp))
        tasks.append(Task(system.name, format_composition(comp, 6), (1, 1, 1), 0.0, 0, 0, "none",
                          settings=st.to_dict(), source=name, atoms=a))
    return tasks


def run_task(task: Task, db_path: str, mpi_ranks: int = 1, txt: str | None = None) -> dict:
    """Run one work item into the dataset at ``db_path``; returns a summary dict.

    Skips the item when another run has it (done, failed or in progress). Exceptions from the
    DFT code are recorded as a failed row with their reason.
    """
    ds = Dataset(db_path)
    rid = ds.reserve(task.key())
    result = {"task": task.key(), "composition": task.composition, "temperature": task.temperature,
              "sample": task.sample, "source": task.source}
    if rid is None:
        return dict(result, status="skipped")
    t0 = time.perf_counter()
    atoms = None
    try:
        atoms = task.structure()
        if task.atoms is None:
            atoms = thermalize(atoms, task.temperature, method=task.thermal, n=1, seed=task.seed + 3)[0]
        settings = DFTSettings.from_dict(task.settings)
        sample = run_dft_mpi(atoms, settings, mpi_ranks, txt) if mpi_ranks > 1 else run_dft(atoms, settings, txt)
    except KeyboardInterrupt:
        ds.release(rid)
        raise
    except (DFTError, CompositionError, RuntimeError, ValueError) as err:
        ds.write_failure(rid, str(err), atoms, task.key_value_pairs())
        return dict(result, status="failed", reason=str(err), wall_time=time.perf_counter() - t0)
    kvp = task.key_value_pairs()
    kvp[keys.REALISED] = atoms.info.get("realised_composition", task.composition)
    ds.write_sample(rid, sample, kvp)
    return dict(result, status="done", natoms=len(sample.atoms), grid="x".join(map(str, sample.grid_shape)),
                energy_per_atom=sample.energy / len(sample.atoms), integral=sample.integral,
                realised=kvp[keys.REALISED], wall_time=time.perf_counter() - t0,
                dft_time=sample.provenance["wall_time_s"])


def execute(
    tasks: Sequence[Task],
    db_path: str,
    workers: int = 1,
    scheduler: str | None = None,
    mpi_ranks: int = 1,
    on_result: Callable[[dict], None] | None = None,
) -> list[dict]:
    """Run ``tasks`` not yet in the dataset, in this process (``workers=1``) or as Dask tasks.

    With ``scheduler`` an existing Dask scheduler address is used; otherwise ``workers > 1``
    starts a LocalCluster of that many single-threaded worker processes (GPAW is fastest
    with one thread per process). ``on_result`` is called with each item's summary as it ends.
    """
    ds = Dataset(db_path)
    done = ds.task_status()
    todo = [t for t in tasks if t.key() not in done]
    results = [{"task": t.key(), "composition": t.composition, "temperature": t.temperature,
                "sample": t.sample, "source": t.source, "status": "exists:" + str(done[t.key()])}
               for t in tasks if t.key() in done]
    for r in results:
        if on_result:
            on_result(r)
    if not todo:
        return results
    if workers <= 1 and scheduler is None:
        for t in todo:
            r = run_task(t, db_path, mpi_ranks)
            results.append(r)
            if on_result:
                on_result(r)
        return results
    from dask.distributed import Client, LocalCluster, as_completed

    cluster = None
    if scheduler:
        client = Client(scheduler)
    else:
        cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                               dashboard_address=None, host="127.0.0.1")
        client = Client(cluster)
    try:
        futures = {client.submit(run_task, t, db_path, mpi_ranks, key=f"dft-{t.key()}", pure=False): t for t in todo}
        for fut in as_completed(futures):
            try:
                r = fut.result()
            except Exception as err:  # a worker crash must not end the whole run
                t = futures[fut]
                r = {"task": t.key(), "composition": t.composition, "temperature": t.temperature, "sample": t.sample,
                     "source": t.source, "status": "failed", "reason": f"{type(err).__name__}: {err}"}
            results.append(r)
            if on_result:
                on_result(r)
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
    return results
