"""Planning and running DFT work items into a dataset, serially or as Dask tasks.

A :class:`Task` describes one DFT calculation completely (system, composition, repeat,
temperature, sample index, defects, DFT settings, or a user's structure), so any worker can
run it from scratch; its :meth:`Task.key` is the row's ``task`` key in the dataset, which is
how a resumed run or another worker knows the item is done. :func:`plan` validates every item
before anything is written, so bad input costs nothing, and :func:`check_fits` refuses a plan
whose size (number of calculations, memory per calculation, disk for the densities) cannot fit,
from estimates made before anything is built (:func:`rhox.engine.dft.estimate_cost`).
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from ase import Atoms

from . import keys
from .composition import (composition_count, composition_list, format_composition,
                          parse_composition, round_composition)
from .dft import (DFTCost, DFTError, DFTSettings, check_settings, estimate_atoms_cost, estimate_cost, human_bytes,
                  human_seconds, machine_memory, run_dft, run_dft_mpi, settings_for, valence_electrons,
                  with_settings)
from .errors import InputError
from .store import Dataset
from .structures import (add_antisites, add_vacancies, check_buildable, get_system, infer_system, random_alloy,
                         require_distances, require_periodic, site_count, vegard_lattice_constant)
from .thermal import check_temperature, thermalize

MAX_TASKS = 100_000  # work items one plan may hold (each is a row, and the plan is kept in memory)


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
            atoms.info = dict(self.atoms.info, **{keys.INFO_SYSTEM: self.system, keys.INFO_SEED: self.seed})
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


@dataclass(frozen=True)
class PlanSize:
    """Estimated size of a plan: ``tasks`` calculations, the largest of ``largest`` (its
    :class:`~rhox.engine.dft.DFTCost`), ``seconds`` of DFT in all on one core, ``disk_bytes``
    of stored densities."""

    tasks: int
    largest: DFTCost
    seconds: float
    disk_bytes: float

    def describe(self) -> str:
        return (f"{self.tasks} calculation(s), the largest {self.largest.atoms} atoms; estimated "
                f"~{human_bytes(self.largest.memory_bytes)} of memory per calculation, "
                f"~{human_seconds(self.seconds)} of DFT on one core, ~{human_bytes(self.disk_bytes)} of densities "
                f"(rough: scaled from measured runs)")


def _check_plan_options(samples: int, thermal: str, vacancies: Sequence[int], antisites: int) -> None:
    if int(samples) != samples or samples < 1:
        raise InputError(f"number of random configurations per composition must be >= 1, got {samples}")
    if thermal not in ("md", "einstein"):
        raise InputError(f"unknown thermalization method {thermal!r}; use 'md' or 'einstein'")
    for n in list(vacancies) + [antisites]:
        if int(n) != n or n < 0:
            raise InputError(f"numbers of vacancies and antisites must be >= 0, got {n}")


def _repeat3(rep) -> tuple[int, int, int]:
    r = (rep,) * 3 if np.isscalar(rep) else tuple(rep)
    if len(r) != 3 or any(int(x) != x or x < 1 for x in r):
        raise InputError(f"supercell repeat must be a positive integer or three of them, got {rep!r}")
    return tuple(int(x) for x in r)  # type: ignore[return-value]


def _alloy_cost(system, rep3, settings: DFTSettings, compositions: Sequence[dict] | None) -> DFTCost:
    """Cost of one cell of ``rep3``: for the given compositions the most expensive one, otherwise
    (a grid or random draw not yet made) the worst element for electrons and for volume."""
    natoms = site_count(system, rep3)
    if compositions:
        worst = max(compositions, key=lambda c: (sum(x * valence_electrons(e) for e, x in c.items()),
                                                 vegard_lattice_constant(system, c)))
        electrons = natoms * sum(x * valence_electrons(e) for e, x in worst.items())
        a = vegard_lattice_constant(system, worst)
    else:
        electrons = natoms * max(valence_electrons(e) for e in system.elements)
        a = max(system.lattice_constants[e] for e in system.elements)
    return estimate_cost(natoms, electrons, [a * r for r in rep3], settings)


def check_fits(size: PlanSize, workers: int = 1, memory_bytes: float | None = None,
               out: str | os.PathLike | None = None, advice: str = "") -> None:
    """Refuse (:class:`InputError`) a plan that cannot fit: more than :data:`MAX_TASKS` items,
    ``workers`` calculations at once needing more than ``memory_bytes`` (default: this
    machine's memory), or densities larger than the free disk space where ``out`` goes."""
    _check_count(size.tasks, advice)
    memory = machine_memory() if memory_bytes is None else memory_bytes
    need = size.largest.memory_bytes * max(1, workers)
    if need > memory:
        per = f" ({workers} at once)" if workers > 1 else ""
        raise InputError(f"a calculation of {size.largest.atoms:,} atoms needs ~{human_bytes(size.largest.memory_bytes)} "
                         f"of memory{per}, more than this machine's {human_bytes(memory)}{advice}")
    if out is not None:
        folder = Path(out).resolve().parent
        while not folder.exists():
            folder = folder.parent
        free = shutil.disk_usage(folder).free
        if size.disk_bytes > free:
            raise InputError(f"the densities would take ~{human_bytes(size.disk_bytes)}, more than the "
                             f"{human_bytes(free)} free in {folder}{advice}")


def _check_count(n_tasks: int, advice: str = "") -> None:
    if n_tasks > MAX_TASKS:
        raise InputError(f"the plan has {n_tasks:,} calculations, more than the {MAX_TASKS:,} one run "
                         f"can hold{advice}")


def _largest_repeat(system, settings: DFTSettings, compositions, memory: float, workers: int) -> str:
    best = None
    for r in range(1, 65):
        cost = _alloy_cost(system, (r, r, r), settings, compositions)
        if cost.memory_bytes * max(1, workers) > memory:
            break
        best = (r, cost)
    if best is None:
        return "; no supercell of this system fits"
    r, cost = best
    return f"; the largest repeat that fits is {r} ({cost.atoms} atoms, ~{human_bytes(cost.memory_bytes)})"


def _largest_spec(spec: str, n_species: int, per_composition: int) -> str:
    kind = spec.strip().partition(":")[0].strip().lower()
    room = MAX_TASKS // max(per_composition, 1)
    if kind == "grid":
        n = 1
        while math.comb(n + 1 + n_species - 1, n_species - 1) <= room:
            n += 1
        return f"; grid:{n} gives {math.comb(n + n_species - 1, n_species - 1):,} compositions" if room >= n_species else ""
    if kind == "random" and room:
        return f"; random:{room} would fit"
    if kind == "tess":
        lvl = 0
        while composition_count(f"tess:{lvl + 1}", n_species) <= room:
            lvl += 1
        return f"; tess:{lvl} gives {composition_count(f'tess:{lvl}', n_species):,} compositions"
    return ""


def plan_spec(
    system_name: str,
    spec: str,
    repeats: Sequence = (1,),
    samples: int = 1,
    temperatures: Sequence[float] = (300.0,),
    vacancies: Sequence[int] = (0,),
    antisites: int = 0,
    thermal: str = "md",
    seed: int = 0,
    settings: DFTSettings | None = None,
    workers: int = 1,
    memory_bytes: float | None = None,
    out: str | os.PathLike | None = None,
) -> tuple[list[Task], PlanSize]:
    """:func:`plan` from a composition spec (``grid:N``, ``random:N``, ``tess:L`` or a list).

    The number of compositions is counted (combinatorially, nothing is built) and the plan's
    size checked by :func:`check_fits` before any composition or task is made, so that e.g.
    ``grid:100000`` (5·10⁹ points) or a million-atom supercell is refused at once with what would fit.
    """
    system = get_system(system_name)
    settings = check_settings(settings or settings_for(system.name))
    _check_plan_options(samples, thermal, vacancies, antisites)
    reps = [_repeat3(r) for r in repeats]
    temps = [check_temperature(t) for t in temperatures]
    n_comp = composition_count(spec, system.n_species)
    per_comp = len(reps) * len(temps) * len(vacancies) * samples
    _check_count(n_comp * per_comp, _largest_spec(spec, system.n_species, per_comp))  # before any is made
    explicit = None
    if spec.strip().partition(":")[0].strip().lower() not in ("grid", "random", "tess"):
        explicit = composition_list(spec, system.elements, seed=seed)  # a short list, typed by hand
    costs = [_alloy_cost(system, r, settings, explicit) for r in reps]
    n_per_rep = n_comp * len(temps) * len(vacancies) * samples
    size = PlanSize(n_comp * per_comp, max(costs, key=lambda c: c.memory_bytes),
                    sum(c.seconds for c in costs) * n_per_rep, sum(c.density_bytes for c in costs) * n_per_rep)
    memory = machine_memory() if memory_bytes is None else memory_bytes
    check_fits(size, workers, memory, out, _largest_repeat(system, settings, explicit, memory, workers))
    comps = explicit if explicit is not None else composition_list(spec, system.elements, seed=seed)
    tasks = plan(system.name, comps, reps, samples, temps, vacancies, antisites, thermal, seed, settings)
    return tasks, size


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
    """All work items of a generation run, each checked (composition, repeat, temperature, defects,
    DFT settings) without building any structure. Use :func:`plan_spec` to check the size first."""
    system = get_system(system_name)
    settings = check_settings(settings or settings_for(system.name))
    _check_plan_options(samples, thermal, vacancies, antisites)
    temps = [check_temperature(t) for t in temperatures]
    reps = [_repeat3(r) for r in repeats]
    tasks = []
    for comp in compositions:
        c = format_composition(round_composition(parse_composition(comp, system.elements), 6), digits=6)
        for rep3 in reps:
            for nvac in vacancies:
                check_buildable(system, c, rep3, int(nvac), int(antisites))  # too small, too many defects...
                for t in temps:
                    for k in range(samples):
                        tasks.append(Task(system.name, c, rep3, t, k,
                                          _seed(seed, c, rep3, t, nvac, antisites, k), thermal, int(nvac),
                                          int(antisites), settings.to_dict()))
    return tasks


def plan_structures(atoms_list: Iterable[tuple[str, Atoms]], settings: DFTSettings | None = None,
                    system_name: str | None = None, workers: int = 1, memory_bytes: float | None = None,
                    out: str | os.PathLike | None = None, overrides: dict | None = None) -> list[Task]:
    """Work items for user-supplied structures ``(name, atoms)``; the system is inferred from species.

    ``settings`` (default: the system's) with ``overrides`` (e.g. ``{"ecut": 400}``) applied.
    Each structure must be periodic in 3D, have no two atoms closer than
    :func:`~rhox.engine.structures.check_distances` allows, and fit in memory (:func:`check_fits`).
    """
    checked: set = set()
    tasks = []
    costs = []
    for name, atoms in atoms_list:
        require_periodic(atoms, name)
        require_distances(atoms, name)
        system = get_system(system_name) if system_name else infer_system(atoms.get_chemical_symbols())
        unknown = set(atoms.get_chemical_symbols()) - set(system.elements)
        if unknown:
            raise InputError(f"{name}: species {', '.join(sorted(unknown))} not in system {system.name}")
        st = with_settings(settings or settings_for(system.name), **(overrides or {}))
        if st not in checked:
            checked.add(check_settings(st))
        costs.append(estimate_atoms_cost(atoms, st))
        comp = {el: atoms.get_chemical_symbols().count(el) / len(atoms) for el in system.elements}
        a = atoms.copy()
        if system.spin_polarized and not a.get_initial_magnetic_moments().any():
            a.set_initial_magnetic_moments([system.magmoms.get(s, 0.0) for s in a.get_chemical_symbols()])
        a.info.update({keys.INFO_SYSTEM: system.name, keys.INFO_COMPOSITION: format_composition(comp),
                       keys.INFO_REALISED: format_composition(comp)})
        tasks.append(Task(system.name, format_composition(comp, 6), (1, 1, 1), 0.0, 0, 0, "none",
                          settings=st.to_dict(), source=name, atoms=a))
    if costs:
        size = PlanSize(len(costs), max(costs, key=lambda c: c.memory_bytes), sum(c.seconds for c in costs),
                        sum(c.density_bytes for c in costs))
        check_fits(size, workers, memory_bytes, out, "; use a smaller cell")
    return tasks


def check_scheduler(address: str, timeout: float = 5.0) -> None:
    """Refuse (:class:`InputError`) a Dask scheduler address that does not answer within ``timeout`` s.

    A plain TCP connection, made before any dataset is created, so that a typo costs seconds
    instead of Dask's long retries and leaves nothing behind.
    """
    import socket
    from urllib.parse import urlsplit

    parts = urlsplit(address if "://" in address else f"tcp://{address}")
    try:
        host, port = parts.hostname, parts.port
    except ValueError as err:
        raise InputError(f"Dask scheduler address {address!r} is not valid: {err}") from err
    if parts.scheme not in ("tcp", "tls") or not host or port is None:
        raise InputError(f"Dask scheduler address {address!r} must look like tcp://HOST:PORT")
    try:
        with socket.create_connection((host, port), timeout=timeout):
            pass
    except OSError as err:
        reason = getattr(err, "strerror", None) or type(err).__name__
        raise InputError(f"Dask scheduler at {address} is not reachable ({reason})") from err


def run_task(task: Task, db_path: str, mpi_ranks: int = 1, txt: str | None = None,
             cache: str | None = None) -> dict:
    """Run one work item into the dataset at ``db_path``; returns a summary dict.

    Skips the item when another run has it (done, failed or in progress). Exceptions from the
    DFT code are recorded as a failed row with their reason.

    ``cache`` is the path of a DFT cache: a dataset shared by runs and strategies, keyed by the
    same task key (a hash of system, composition, repeat, seed, temperature, thermal method,
    defects and DFT settings). A finished sample found there is copied instead of running GPAW
    (the row gets ``cached=1`` and the summary ``cached: True``); a sample computed here is
    copied into it for the next run. Failures are not cached: a later run tries again.
    """
    ds = Dataset(db_path)
    rid = ds.reserve(task.key())
    result = {"task": task.key(), "composition": task.composition, "temperature": task.temperature,
              "sample": task.sample, "source": task.source}
    if rid is None:
        return dict(result, status="skipped")
    t0 = time.perf_counter()
    store = _cache(cache, db_path)
    if store is not None:
        row = store.find_done(task.key())
        if row is not None:
            ds.write_copy(rid, row, {keys.CACHED: 1})
            return dict(result, status="done", cached=True, natoms=row.natoms, realised=row.get(keys.REALISED, ""),
                        grid="x".join(map(str, np.shape(row.data[keys.DENSITY])[-3:])),
                        energy_per_atom=row.get("energy", np.nan) / max(row.natoms, 1),
                        integral=row.get(keys.INTEGRAL), wall_time=time.perf_counter() - t0,
                        dft_time=row.get(keys.WALL_TIME, 0.0))
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
    except (DFTError, InputError, RuntimeError, ValueError) as err:
        ds.write_failure(rid, str(err), atoms, task.key_value_pairs())
        return dict(result, status="failed", reason=str(err), wall_time=time.perf_counter() - t0)
    kvp = task.key_value_pairs()
    kvp[keys.REALISED] = atoms.info.get(keys.INFO_REALISED, task.composition)
    ds.write_sample(rid, sample, kvp)
    if store is not None:
        crid = store.reserve(task.key())
        if crid is not None:  # None: another run holds it already
            store.write_copy(crid, ds.db.get(id=rid))
    return dict(result, status="done", cached=False, natoms=len(sample.atoms),
                grid="x".join(map(str, sample.grid_shape)),
                energy_per_atom=sample.energy / len(sample.atoms), integral=sample.integral,
                realised=kvp[keys.REALISED], wall_time=time.perf_counter() - t0,
                dft_time=sample.provenance["wall_time_s"])


def _cache(cache: str | os.PathLike | None, db_path: str | os.PathLike) -> Dataset | None:
    """The DFT cache dataset (created if missing), or None without one or when it is the dataset itself."""
    if not cache:
        return None
    if Path(cache).resolve() == Path(db_path).resolve():
        return None
    return Dataset(cache)


def execute(
    tasks: Sequence[Task],
    db_path: str,
    workers: int = 1,
    scheduler: str | None = None,
    mpi_ranks: int = 1,
    on_result: Callable[[dict], None] | None = None,
    cache: str | None = None,
) -> list[dict]:
    """Run ``tasks`` not yet in the dataset, in this process (``workers=1``) or as Dask tasks.

    With ``scheduler`` an existing Dask scheduler address is used; otherwise ``workers > 1``
    starts a LocalCluster of that many single-threaded worker processes (GPAW is fastest
    with one thread per process). ``on_result`` is called with each item's summary as it ends.
    ``cache``: a DFT cache dataset shared by runs (see :func:`run_task`).
    """
    if scheduler:
        check_scheduler(scheduler)
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
            r = run_task(t, db_path, mpi_ranks, cache=cache)
            results.append(r)
            if on_result:
                on_result(r)
        return results
    from dask.distributed import Client, LocalCluster, as_completed

    cluster = None
    if scheduler:
        client = Client(scheduler, timeout="20s")
    else:
        cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                               dashboard_address=None, host="127.0.0.1")
        client = Client(cluster)
    try:
        futures = {client.submit(run_task, t, db_path, mpi_ranks, None, cache, key=f"dft-{t.key()}", pure=False): t for t in todo}
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
