"""The ``rhox`` command: generate, info, train, train-energy, evaluate, predict, slice, build, learn, serve.

Every command turns bad input into one line ``error: ...`` on stderr and exit code 2, and
writes nothing in that case.
"""
from __future__ import annotations

import functools
import json
import os
import sys
from pathlib import Path
from typing import List, Optional, Tuple

import typer
from rich.console import Console
from rich.table import Table

from .train_config import TrainConfig

_TRAIN = TrainConfig.defaults()  # the train options' defaults: one source, without importing torch

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="rhox: Bayesian neural-network electron densities of alloys, with uncertainty.")
# Outside a terminal (pipes, logs, CI) rich would wrap at 80 columns and cut table cells.
console = Console(stderr=True, width=None if sys.stderr.isatty() else 160)
out = Console(width=None if sys.stdout.isatty() else 160)


def fail(message: str, code: int = 2) -> None:
    """Print one clear line and exit non-zero."""
    console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def user_errors(fn):
    """Turn rhox's own errors (and missing files) into one line and exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from .errors import RhoxError, one_line

        try:
            return fn(*args, **kwargs)
        except (RhoxError, FileNotFoundError) as err:
            fail(one_line(err))

    return wrapper


def _read_structures(files: List[str]):
    """``[(name, atoms), ...]`` of every image of every file; a file that is missing, not a regular
    file (a folder, a named pipe: reading one could wait forever) or unreadable raises InputError."""
    import stat

    from ase.io import read

    from .build import read_format
    from .errors import InputError

    out_list = []
    for f in files:
        p = Path(f)
        try:
            mode = p.stat().st_mode
        except FileNotFoundError:
            raise InputError(f"structure file {f} does not exist") from None
        except OSError as err:
            raise InputError(f"cannot open structure file {f}: {err.strerror or err}") from err
        if not stat.S_ISREG(mode):
            kind = ("a folder" if stat.S_ISDIR(mode) else "a named pipe" if stat.S_ISFIFO(mode)
                    else "a device or socket")
            raise InputError(f"structure file {f} is {kind}, not a regular file")
        try:
            images = read(str(p), index=":", format=read_format(p))  # LAMMPS data: ASE has no suffix
        except Exception as err:  # ASE raises many types (even a bare AssertionError) for malformed files
            detail = " ".join(str(err).split())
            raise InputError(f"cannot read structure file {f} as {p.suffix.lstrip('.') or 'a structure'}: "
                             f"{type(err).__name__}" + (f": {detail}" if detail else
                                                        " (the file is not valid in that format)")) from err
        if not images:
            raise InputError(f"structure file {f} holds no structure")
        for i, a in enumerate(images):
            out_list.append((p.name if len(images) == 1 else f"{p.name}@{i}", a))
    return out_list


@app.command()
@user_errors
def generate(
    args: List[str] = typer.Argument(None, metavar="SYSTEM | FILE...",
                                     help="Alloy system (SiGeSn, SiGe, CrFeCoNi, Al), or structure files with --structures."),
    structures: bool = typer.Option(False, "--structures", help="Treat the arguments as ASE-readable structure files."),
    compositions: str = typer.Option(
        "grid:4", help="grid:N | random:N | tess:L | compositions separated by ';', each written "
                       "Si0.5Ge0.3Sn0.2, {\"Si\": 0.5, \"Ge\": 0.3, \"Sn\": 0.2} or 0.5,0.3,0.2 (e.g. 'Si0.5Ge0.5;Si1')"),
    repeat: List[str] = typer.Option(
        ["1"], help="Supercell repeat of the cubic cell: N for NxNxN, or N1xN2xN3 for a non-cubic cell "
                    "(e.g. 2x1x1: 8 FCC atoms, 2x2x1: 16). Repeatable for several sizes: --repeat 1 --repeat 2x1x1."),
    samples: int = typer.Option(1, help="Random configurations per composition and temperature."),
    temperature: List[float] = typer.Option([300.0], help="Temperature in K (repeatable)."),
    vacancies: List[int] = typer.Option([0], help="Vacancies per cell (repeatable; 0 = none)."),
    antisites: int = typer.Option(0, help="Antisite defects per cell."),
    thermal: str = typer.Option("md", help="md (Langevin MD with CHGNet) or einstein (harmonic, fast)."),
    seed: int = typer.Option(0, help="Base seed; same seed, same structures."),
    out_path: Path = typer.Option(Path("data/dataset.db"), "--out", "-o", help="ASE database to fill."),
    workers: int = typer.Option(1, help="Parallel DFT calculations (Dask LocalCluster when > 1)."),
    scheduler: Optional[str] = typer.Option(None, help="Address of an existing Dask scheduler."),
    mpi_ranks: int = typer.Option(1, help="MPI ranks per calculation (needs mpiexec + mpi4py; else serial)."),
    ecut: Optional[float] = typer.Option(None, help="Plane-wave cut-off, eV (default per system)."),
    kpt_density: Optional[float] = typer.Option(None, help="k-points per Å⁻¹ (default per system)."),
    xc: Optional[str] = typer.Option(None, help="Exchange-correlation functional (default PBE)."),
    retry_failed: bool = typer.Option(False, help="Run again items recorded as failed."),
    dry_run: bool = typer.Option(False, help="Plan and list the items, run nothing."),
    cache: Optional[Path] = typer.Option(
        None, help="DFT cache (an ASE database shared by runs): a calculation found there is copied, not rerun; "
                   "new ones are added to it."),
):
    """Run GPAW DFT on alloy configurations (or your structures) into a dataset.

    Example: rhox generate SiGeSn --compositions grid:4 --repeat 1 --samples 2 --temperature 300 --out data/sigesn.db
    """
    import time
    from contextlib import nullcontext

    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                               TimeRemainingColumn)

    from .dft import settings_for, with_settings
    from .generate import check_scheduler, execute, plan_spec, plan_structures
    from .store import Dataset, check_dataset_file
    from .structures import get_system, parse_repeat

    if not args:
        fail("give an alloy system (e.g. SiGeSn) or --structures FILE...")
    if workers < 1:
        fail(f"--workers must be >= 1, got {workers}")
    if mpi_ranks < 1:
        fail(f"--mpi-ranks must be >= 1, got {mpi_ranks}")
    if out_path.exists() or out_path.is_symlink():
        check_dataset_file(out_path)  # a foreign or empty file is refused before any work
    if cache is not None and (cache.exists() or cache.is_symlink()):
        check_dataset_file(cache)
    changes = {k: v for k, v in dict(ecut=ecut, kpt_density=kpt_density, xc=xc).items() if v is not None}
    # Local workers share this machine's memory; a scheduler's workers are elsewhere, of unknown size.
    concurrent = 1 if scheduler else workers
    memory = None if not scheduler else float("inf")
    if structures:
        tasks = plan_structures(_read_structures(args), workers=concurrent, memory_bytes=memory, out=out_path,
                                overrides=changes)
        size = None
    else:
        if len(args) != 1:
            fail(f"one alloy system expected, got {' '.join(args)} (use --structures for files)")
        system = get_system(args[0])
        settings = with_settings(settings_for(system.name), **changes)
        repeats = [parse_repeat(r) for r in repeat]
        tasks, size = plan_spec(system.name, compositions, repeats, samples, temperature, vacancies, antisites,
                                thermal, seed, settings, workers=concurrent, memory_bytes=memory, out=out_path)
    if scheduler:
        check_scheduler(scheduler)  # seconds, not Dask's long retries, and before the dataset exists
    if size is not None:
        console.print(f"plan: {size.describe()}", highlight=False, soft_wrap=True)
    if dry_run:
        for t in tasks:
            out.print(f"{t.key()}  {t.system} {t.composition} repeat={'x'.join(map(str, t.repeat))} "
                      f"T={t.temperature:g} K sample={t.sample} vac={t.vacancies} anti={t.antisites} {t.source}")
        return
    ds = Dataset(out_path)  # refuses a corrupt file before any DFT runs
    cleared = ds.clear_stale(retry_failed=retry_failed)
    if cleared:
        console.print(f"resuming: cleared {cleared} unfinished item(s) left by an earlier run")
    results = []
    if console.is_terminal:
        progress = Progress(TextColumn("[bold]DFT"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                            TextColumn("ETA"), TimeRemainingColumn(), TextColumn("{task.description}"),
                            console=console, transient=False)
    else:
        progress = None  # logs and pipes get one plain line per finished item
    started = time.monotonic()
    with progress if progress is not None else nullcontext():
        bar = progress.add_task("", total=len(tasks)) if progress is not None else None

        def on_result(r):
            results.append(r)
            text = f"{r['composition']} T={r['temperature']:g}K: {r['status']}" + (" (cache)" if r.get("cached") else "")
            if progress is not None:
                progress.update(bar, advance=1, description=text)
            else:
                elapsed = time.monotonic() - started
                eta = elapsed / len(results) * (len(tasks) - len(results))
                console.print(f"DFT {len(results)}/{len(tasks)} {elapsed:.0f} s elapsed, ETA {eta:.0f} s: {text}",
                              highlight=False, soft_wrap=True)

        execute(tasks, str(out_path), workers=workers, scheduler=scheduler, mpi_ranks=mpi_ranks, on_result=on_result,
                cache=str(cache) if cache else None)
    _print_results(results)
    n_fail = sum(r["status"] == "failed" for r in results)
    if n_fail:
        console.print(f"[yellow]{n_fail} calculation(s) failed; reasons are stored (rhox info {out_path})[/]")


def _print_results(results: list[dict]) -> None:
    table = Table(title="rhox generate")
    for col in ("composition", "realised", "T (K)", "atoms", "grid", "E (eV/atom)", "∫ñ (e)", "time (s)", "status"):
        table.add_column(col)
    for r in results:
        table.add_row(
            r.get("source") if r.get("source") not in (None, "generated") else r["composition"],
            r.get("realised", ""), f"{r['temperature']:g}", str(r.get("natoms", "")), r.get("grid", ""),
            f"{r['energy_per_atom']:.4f}" if "energy_per_atom" in r else "",
            f"{r['integral']:.4f}" if "integral" in r else "",
            f"{r['wall_time']:.1f}" if "wall_time" in r else "",
            r["status"] if r["status"] != "failed" else f"failed: {r.get('reason', '')[:60]}",
        )
    out.print(table)


@app.command()
@user_errors
def info(dataset: Path = typer.Argument(..., metavar="DATASET | MODEL_DIR",
                                        help="ASE database written by rhox generate, or a model directory.")):
    """Summarise a dataset (samples, compositions, sizes, temperatures, failures, DFT time) or a
    model directory (training, lineage and the total DFT cost behind it)."""
    import numpy as np

    from .store import Dataset

    if dataset.is_dir():
        _model_info(dataset)
        return
    ds = Dataset(dataset, readonly=True)  # info never writes, not even to a foreign file
    rows = ds.summary()
    n_fail = ds.count("failed")
    n_run = ds.count("running")
    out.print(f"[bold]{dataset}[/]: {len(rows)} samples done, {n_fail} failed, {n_run} in progress")
    if rows:
        systems = sorted({str(r['system']) for r in rows})
        comps = sorted({r['composition'] for r in rows})
        out.print(f"systems: {', '.join(systems)}; {len(comps)} distinct realised compositions")
        out.print(f"atoms per cell: {sorted({r['natoms'] for r in rows})}; temperatures (K): "
                  f"{sorted({r['temperature'] for r in rows if r['temperature'] is not None})}")
        out.print(f"total DFT wall time: {np.nansum([r['wall_time'] or 0 for r in rows]):.1f} s")
        table = Table()
        for col in ("id", "system", "composition", "atoms", "T (K)", "vac", "anti", "E (eV/atom)", "∫ñ (e)", "DFT (s)"):
            table.add_column(col)
        for r in rows[:200]:
            table.add_row(str(r["id"]), str(r["system"]), r["composition"], str(r["natoms"]),
                          f"{r['temperature'] or 0:g}", str(r["vacancies"]), str(r["antisites"]),
                          f"{r['energy_per_atom']:.4f}", f"{r['integral']:.4f}", f"{r['wall_time'] or 0:.1f}")
        out.print(table)
        if len(rows) > 200:
            out.print(f"... and {len(rows) - 200} more")
    for f in ds.failures():
        out.print(f"[red]failed[/] {f.key_value_pairs.get('composition')} T={f.key_value_pairs.get('temperature')}: {f.reason}")


def _model_info(directory: Path) -> None:
    """Print a model directory's summary: what it is, what it was trained on, its lineage and DFT cost."""
    from .lineage import describe
    from .model_config import read_model_config

    config = read_model_config(directory)  # torch-free; refuses a folder that is not a model
    training = config.get("training") or {}
    net, desc = config["network"], config["descriptor"]
    out.print(f"[bold]{directory}[/]: rhox model of {config.get('system') or 'an alloy'} "
              f"({', '.join(config['species'])})", highlight=False)
    out.print(f"descriptor: {desc.get('kind')} (neighbours {desc.get('n_neighbors')}, cut-off {desc.get('cutoff')} Å); "
              f"network: {net.get('n_in')} -> {' -> '.join(map(str, net.get('hidden', [])))} "
              f"({'Bayesian' if net.get('bayesian', True) else 'deterministic'}); "
              f"baseline: {'yes' if config.get('baseline_network') else 'no'}", highlight=False)
    if training:
        val = training.get("best_val_l1")
        out.print(f"training: {training.get('n_configurations')} configurations, {training.get('train_points')} "
                  f"grid points; validation L1% {val:.2f}" if isinstance(val, (int, float)) else
                  f"training: {training.get('n_configurations')} configurations", highlight=False)
    if config.get("sigma_scale") is not None:
        out.print(f"σ scale (fitted on validation data): {config['sigma_scale']:.3f}", highlight=False)
    _energy_info(directory)
    comps = config.get("train_compositions") or []
    if comps:
        out.print(f"training compositions ({len(comps)}): {', '.join(comps)}", highlight=False, soft_wrap=True)
    for line in describe(config, directory):
        out.print(line, highlight=False, soft_wrap=True)


def _energy_info(directory: Path) -> None:
    """The ``rhox info MODEL_DIR`` line on the energy model (read as JSON, torch-free)."""
    from . import keys

    path = directory / keys.MODEL_ENERGY
    if not path.is_file():
        out.print("energy model: none (rhox train-energy fits one)")
        return
    try:
        e = json.loads(path.read_text())
        out.print(f"energy model: {e['features']} features, fitted on {e['n_configurations']} configurations; "
                  f"leave-one-out MAE {e['loo_mae_meV_atom']:.1f} meV/atom, noise σ {e['noise_sigma_meV_atom']:.1f} "
                  f"meV/atom", highlight=False, soft_wrap=True)
    except (OSError, ValueError, KeyError, TypeError) as err:
        out.print(f"energy model: {path} is unreadable ({type(err).__name__})", highlight=False)


@app.command()
@user_errors
def train(
    dataset: Path = typer.Argument(..., help="ASE database of DFT samples (rhox generate)."),
    out_dir: Path = typer.Option(Path("runs/model"), "--out", "-o", help="Model directory to write."),
    epochs: int = typer.Option(_TRAIN.max_epochs, help="Maximum epochs (early stopping usually ends sooner)."),
    batch_size: int = typer.Option(_TRAIN.batch_size, help="Grid points per mini-batch."),
    lr: float = typer.Option(_TRAIN.learning_rate, help="Adam learning rate."),
    hidden: str = typer.Option(",".join(map(str, _TRAIN.hidden)), help="Hidden layer widths."),
    patience: int = typer.Option(_TRAIN.patience, help="Epochs without validation improvement before stopping."),
    val_fraction: float = typer.Option(_TRAIN.val_fraction, help="Fraction of configurations held out for validation."),
    descriptor: str = typer.Option(_TRAIN.descriptor["kind"], help="frame (body-attached frame) or atom (atom-centred)."),
    neighbors: Optional[int] = typer.Option(None, help="K (frame) or M per species (atom); default per kind."),
    cutoff: Optional[float] = typer.Option(None, help="Neighbour search radius / feature length scale, Å "
                                                      "(default: the descriptor's, 6 Å)."),
    seed: int = typer.Option(_TRAIN.seed, help="Seed: same seed, same model (on one machine)."),
    device: str = typer.Option(_TRAIN.device, help="auto | cpu | cuda"),
    parent: Optional[Path] = typer.Option(None, help="Start from this model (fine-tuning)."),
    freeze_layers: int = typer.Option(_TRAIN.freeze_layers, help="With --parent: number of first layers kept fixed."),
    baseline: bool = typer.Option(_TRAIN.baseline, help="Also train the deterministic baseline of the same shape."),
    members: int = typer.Option(_TRAIN.members, help="BNNs in the ensemble (epistemic σ over all of them)."),
    init_sigma: float = typer.Option(_TRAIN.init_sigma, help="Initial posterior σ of the Bayesian weights."),
    kl_per: str = typer.Option(_TRAIN.kl_per, help="KL term scaled per grid point or per configuration: point | configuration."),
    beta_nll: float = typer.Option(_TRAIN.beta_nll, "--beta-nll", help="β-NLL exponent in [0, 1]: each point's NLL "
                                   "weighted by σ^(2β), so that uncertain points (the density peaks) pull the mean; "
                                   "0: the plain Gaussian NLL."),
    resume: bool = typer.Option(False, "--resume", help="Continue from the last checkpoint of this run."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing model directory (its reports too)."),
    calibration: Optional[Path] = typer.Option(None, help="DFT cells unlike the training ones (strained, with vacancies; "
                                               "larger cells; not a test set) to fit the σ inflation for unfamiliar "
                                               "atom environments, and the size term for atoms whose neighbour shells "
                                               "are more varied than any training cell's."),
):
    """Train the Bayesian density model (and its deterministic baseline) on a dataset."""
    from rich.live import Live

    from .errors import InputError

    try:
        widths = tuple(int(h) for h in hidden.split(","))
    except ValueError:
        raise InputError(f"hidden layer widths must be comma-separated whole numbers, got {hidden!r}") from None
    desc = {"kind": descriptor}
    if cutoff is not None:
        desc["cutoff"] = cutoff
    if neighbors is not None:
        desc["n_neighbors"] = neighbors
    # Every setting is checked here, before the dataset is read or anything is written.
    cfg = TrainConfig(hidden=widths, max_epochs=epochs, batch_size=batch_size, learning_rate=lr, patience=patience,
                      val_fraction=val_fraction, seed=seed, device=device, descriptor=desc,
                      baseline=baseline, freeze_layers=freeze_layers, members=members, init_sigma=init_sigma,
                      kl_per=kl_per, beta_nll=beta_nll)
    if not dataset.is_file():
        raise InputError(f"dataset {dataset} does not exist")
    if calibration is not None and not calibration.is_file():
        raise InputError(f"calibration dataset {calibration} does not exist")
    table = Table(title="training")
    for col in ("net", "epoch", "loss", "NLL", "val L1%", "best", "lr", "s", "ETA ≤"):
        table.add_column(col, justify="right")
    epoch_seconds: dict[str, list[float]] = {}

    def on_epoch(r):
        # ETA of this network at the mean epoch time so far: an upper bound, since early stopping
        # (patience) usually ends training before max_epochs.
        took = epoch_seconds.setdefault(r["network"], [])
        took.append(r["seconds"])
        eta = (r["max_epochs"] - r["epoch"]) * sum(took) / len(took)
        cells = (r["network"], f"{r['epoch']}/{r['max_epochs']}", f"{r['loss']:.4f}", f"{r['nll']:.4f}",
                 f"{r['val_l1']:.3f}", f"{r['best_val_l1']:.3f}", f"{r['lr']:.1e}", f"{r['seconds']:.1f}",
                 f"{eta:.1f} s")
        table.add_row(*cells)
        if not console.is_terminal:  # logs and pipes get one line per epoch instead of a live table
            console.print("epoch " + "  ".join(cells), highlight=False)

    from contextlib import nullcontext

    from .training import fit  # torch: imported once the cheap checks have passed

    live = Live(table, console=console, refresh_per_second=4) if console.is_terminal else nullcontext()
    with live:
        model = fit(dataset, out_dir, cfg, parent=parent, resume=resume, overwrite=overwrite, on_epoch=on_epoch,
                    on_status=lambda m: console.print(m, highlight=False), calibration=calibration)
    from .lineage import COST_COUNTED, human_cpu_time

    out.print(f"model written to {out_dir} (validation L1% {model.meta['training']['best_val_l1']:.2f}, "
              f"σ scale {model.meta['sigma_scale']:.2f})")
    out.print(f"total DFT cost behind this model: {human_cpu_time(model.meta['lineage']['dft_cpu_seconds_total'])} "
              f"[{COST_COUNTED}]", highlight=False, soft_wrap=True)


@app.command()
@user_errors
def evaluate(
    dataset: Path = typer.Argument(..., help="ASE database of DFT samples the model has not seen."),
    model_dir: Optional[Path] = typer.Option(None, "--model", "-m", help="Model directory, or a bundled model by name: SiGeSn (the default), Al, SiGe."),
    json_path: Optional[Path] = typer.Option(None, "--json", help="Write the JSON summary here."),
    plots: Optional[Path] = typer.Option(None, help="Folder for the PNG plots (default: beside --json, or ./)."),
    samples: int = typer.Option(20, help="Weight samples S for the epistemic uncertainty."),
    superposition: bool = typer.Option(True, help="Compare with the superposition of atomic densities (GPAW)."),
):
    """Measure a model on a dataset: L1%, NRMSE%, dN, calibration, against the baselines."""
    from .errors import InputError
    from .progress import progress_reporter

    # Refuse unusable outputs and options before any work, so that nothing stray is left behind.
    if json_path is not None and json_path.is_dir():
        raise InputError(f"summary file {json_path} is an existing folder; give a file name")
    if plots is not None and plots.exists() and not plots.is_dir():
        raise InputError(f"plot folder {plots} is an existing file; give a folder")
    if samples < 1:
        raise InputError(f"the number of weight samples must be at least 1, got {samples}")
    if not dataset.is_file():
        raise InputError(f"dataset {dataset} does not exist")
    from .evaluation import evaluate as run_eval  # torch: imported once the cheap checks have passed
    from .evaluation import plot_report
    from .model import load_model

    model = load_model(model_dir)
    with progress_reporter(console, "evaluating", "configurations") as progress:
        report = run_eval(model, dataset, n_samples=samples, superposition=superposition, progress=progress)
    table = Table(title=f"{dataset}: {report['aggregate']['n_configurations']} configurations")
    for col in ("#", "composition", "T (K)", "L1%", "NRMSE%", "dN", "cal1", "cal2", "cal3", "mean σ"):
        table.add_column(col, justify="right")
    for r in report["configurations"]:
        table.add_row(str(r["row_id"]), r["composition"], f"{r['temperature'] or 0:g}", f"{r['L1%']:.2f}",
                      f"{r['NRMSE%']:.2f}", f"{r['dN']:.1e}", f"{r['cal1']:.1f}", f"{r['cal2']:.1f}",
                      f"{r['cal3']:.1f}", f"{r['mean_sigma']:.1e}")
    out.print(table)
    a = report["aggregate"]
    summary = Table(title="aggregate")
    for col in ("model", "L1%", "NRMSE%", "dN", "cal1 (68.3)", "cal2 (95.4)", "cal3 (99.7)"):
        summary.add_column(col, justify="right")
    summary.add_row("BNN", f"{a['L1%']:.3f}", f"{a['NRMSE%']:.3f}", f"{a['dN']:.2e}", f"{a['cal1']:.1f}",
                    f"{a['cal2']:.1f}", f"{a['cal3']:.1f}")
    summary.add_row("BNN raw σ", "", "", "", f"{a['raw_cal1']:.1f}", f"{a['raw_cal2']:.1f}", f"{a['raw_cal3']:.1f}")
    for name, b in report["baselines"].items():
        summary.add_row(name, f"{b['L1%']:.3f}", f"{b['NRMSE%']:.3f}", f"{b['dN']:.2e}", "", "", "")
    out.print(summary)
    out.print(f"rank correlation (mean σ vs L1% per configuration): {a['rank_corr_sigma_L1']:.2f}")
    _print_energy_report(report.get("energy"))
    if "L1%_unseen_compositions" in a:
        out.print(f"L1% on the {a['n_unseen_compositions']} configurations whose composition is not in the "
                  f"training set: {a['L1%_unseen_compositions']:.3f}")
    plot_dir = plots or (json_path.parent if json_path else Path("."))
    for p in plot_report(report, plot_dir):
        out.print(f"plot: {p}")
    if json_path:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        slim = {k: v for k, v in report.items() if k != "pooled"}
        tmp = json_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(slim, indent=1))
        os.replace(tmp, json_path)
        out.print(f"summary: {json_path}")


def _print_energy_report(e: Optional[dict]) -> None:
    """The energy lines of ``rhox evaluate`` (meV/atom, calibration over configurations)."""
    if e is None:
        out.print("energy: no energy model in this model directory (rhox train-energy fits one)")
        return
    out.print(f"energy ({e['n_configurations']} configurations): MAE {e['mae_meV_atom']:.1f} meV/atom, "
              f"RMSE {e['rmse_meV_atom']:.1f}, max {e['max_meV_atom']:.1f}, mean σ {e['mean_sigma_meV_atom']:.1f}; "
              f"within 1/2/3σ: {e['cal1']:.0f}/{e['cal2']:.0f}/{e['cal3']:.0f} % (nominal 68.3/95.4/99.7)",
              highlight=False, soft_wrap=True)


@app.command("train-energy")
@user_errors
def train_energy(
    model_dir: Path = typer.Argument(..., metavar="MODEL_DIR", help="Model directory to add the energy model to."),
    dataset: Path = typer.Argument(..., metavar="DATA", help="ASE database of DFT samples with energies "
                                                              "(e.g. the model's training data)."),
    features: str = typer.Option("descriptor", help="descriptor (composition + grid mean/σ of the descriptor) or "
                                                    "composition (fractions and their products only)."),
):
    """Fit the energy model (E/atom with σ) on DATA and add it to MODEL_DIR (energy.json, energy.safetensors).

    The density weights are not touched: no retraining. `rhox train` fits it by itself.

    Example: rhox train-energy assets/model assets/sigesn_train.db
    """
    from . import keys
    from .energy import FEATURE_KINDS
    from .energy import train_energy as run
    from .errors import InputError
    from .model_config import read_model_config
    from .progress import progress_reporter
    from .store import check_dataset_file

    if features not in FEATURE_KINDS:
        raise InputError(f"unknown energy features {features!r}: use {' or '.join(FEATURE_KINDS)}")
    if not model_dir.is_dir():
        raise InputError(f"model directory {model_dir} does not exist")
    read_model_config(model_dir)  # refuses a folder that is not a model before any work
    if not dataset.is_file():
        raise InputError(f"dataset {dataset} does not exist")
    check_dataset_file(dataset)
    with progress_reporter(console, "energy features", "configurations") as progress:
        energy = run(model_dir, dataset, kind=features, progress=progress)
    m = energy.meta
    out.print(f"energy model ({energy.kind} features) fitted on {m['n_configurations']} configurations: "
              f"leave-one-out MAE {m['loo_mae_meV_atom']:.1f} meV/atom (RMSE {m['loo_rmse_meV_atom']:.1f}), "
              f"noise σ {m['noise_sigma_meV_atom']:.1f} meV/atom", highlight=False, soft_wrap=True)
    out.print(f"wrote {model_dir / keys.MODEL_ENERGY} and {model_dir / keys.MODEL_ENERGY_ARRAYS}")


@app.command()
@user_errors
def predict(
    structure: Path = typer.Argument(..., help="Any ASE-readable structure file."),
    model_dir: Optional[Path] = typer.Option(None, "--model", "-m", help="Model directory, or a bundled model by name: SiGeSn (the default), Al, SiGe."),
    out_dir: Path = typer.Option(Path("prediction"), "-o", "--out", help="Output folder."),
    spacing: Optional[float] = typer.Option(None, help="Grid spacing in Å (default: the training grids')."),
    samples: int = typer.Option(20, help="Weight samples S for the epistemic uncertainty; 0: mean and "
                                         "aleatoric σ only (posterior-mean weights, one pass; no epistemic σ)."),
    fast: bool = typer.Option(False, "--fast", help="Same as --samples 0: mean and aleatoric σ only."),
    device: str = typer.Option("auto", help="auto | cpu | cuda | cuda:N (descriptors and network; the "
                                            "neighbour search stays on the CPU)."),
    threads: Optional[int] = typer.Option(None, help="CPU threads (default: the cores not busy with other work)."),
    allow_foreign: bool = typer.Option(False, help="Predict even for species the model never saw (warns)."),
    index: int = typer.Option(-1, help="Which image of a multi-image file."),
    formats: Optional[List[str]] = typer.Option(
        None, "--format", help="Output format (repeatable): cube, chgcar, xsf (one file per field: density, "
                               "σ total, σ epistemic) or vtk (all fields in one file). Default: cube and vtk."),
    report: bool = typer.Option(False, "--report", help="Also print and write (STEM_report.json) the trust "
                                                        "report: σ summary, training domain, recommendation."),
    resume: bool = typer.Option(False, "--resume", help="With --out RESULT.zarr: continue an interrupted run."),
    no_blend: bool = typer.Option(False, "--no-blend", help="Skip frame blending (continuity across neighbour-"
                                  "distance ties): about 1.7x faster with S=20, 2.5x with samples 0 (measured), "
                                  "but the field jumps by up to a few % (7.5 % measured) where two neighbour "
                                  "distances cross; away from ties the numbers are the same. See "
                                  "benchmarks/README.md sections 5b and 9."),
    workers: Optional[int] = typer.Option(None, "--workers", help="With --out RESULT.zarr: compute the blocks on N "
                                          "single-threaded worker processes of this machine (see --pool)."),
    pool: str = typer.Option("processes", "--pool", help="With --workers: 'processes' (plain worker processes, the "
                             "fastest measured here: Dask cost about 25 % more CPU per block) or 'dask' (a Dask "
                             "LocalCluster, with its dashboard)."),
    scheduler: Optional[str] = typer.Option(None, "--scheduler", help="With --out RESULT.zarr: compute the blocks on "
                                            "the workers of this Dask scheduler (tcp://HOST:PORT); they must reach "
                                            "the store under the same path (a shared file system)."),
):
    """Predict density and uncertainty; write cube files (mean, σ total, σ epistemic) and a VTK file.

    With --out RESULT.zarr the fields stream block by block into a chunked zarr store instead (any
    size: memory stays bounded), and a killed run continues with --resume. --workers N (local worker
    processes, or a Dask LocalCluster with --pool dask) or --scheduler ADDRESS (Dask workers anywhere)
    spread the blocks, each worker writing its own chunks.
    """
    import time

    from .errors import InputError
    from .io import get_format, write
    from .progress import progress_reporter
    from .structures import close_pair_message, require_periodic

    # Everything that can be refused is checked before the model runs, and nothing is written until the end.
    # The torch-backed modules are imported after the cheap checks: a refusal should not cost seconds.
    fmts = list({fmt.name: fmt for fmt in map(get_format, formats or ["cube", "vtk"])}.values())
    if (workers is not None or scheduler is not None) and out_dir.suffix != ".zarr":
        raise InputError("--workers and --scheduler spread a streamed prediction: give --out RESULT.zarr")
    if workers is not None or scheduler is not None:
        from .stream import check_workers

        check_workers(workers, scheduler)  # a bad count or an unreachable scheduler: refused before any work
    if pool not in ("processes", "dask"):
        raise InputError(f"unknown worker pool {pool!r}: choose 'processes' or 'dask'")
    if fast and samples not in (0, 20):  # 20 is the default: --fast alone means samples 0
        raise InputError(f"fast is the mean-only prediction (samples 0); it contradicts {samples} weight samples")
    if fast:
        samples = 0
    if samples < 0:
        raise InputError(f"the number of weight samples must be a whole number >= 0 (0: mean only), got {samples}")
    if threads is not None and (int(threads) != threads or threads < 1):
        raise InputError(f"the number of threads must be a whole number >= 1, got {threads}")
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"output folder {out_dir} is an existing file, not a folder")
    images = _read_structures([str(structure)])
    if not -len(images) <= index < len(images):
        raise InputError(f"structure file {structure} holds {len(images)} image(s); image index {index} does not exist")
    atoms = images[index][1]
    require_periodic(atoms, str(structure))
    too_close = close_pair_message(atoms, str(structure))
    if too_close:  # a user may predict a strange structure on purpose, but must know it is one
        console.print(f"[yellow]warning:[/] {too_close}: no training environment looks like this, so the "
                      "prediction there is an extrapolation", highlight=False, soft_wrap=True)
    report_path = out_dir / f"{structure.stem}_report.json"
    if report and out_dir.suffix == ".zarr":
        raise InputError("the trust report is made for folder outputs, not yet for a streamed .zarr store")
    if report and report_path.is_dir():
        raise InputError(f"report file {report_path} is an existing folder")
    import torch

    from .model import load_model
    from .predict import EPISTEMIC_ABSENT, choose_threads, plan_grid
    from .predict import predict as run_predict
    from .training import resolve_device

    n_threads, why = choose_threads(threads)
    model = load_model(model_dir, resolve_device(device))
    torch.set_num_threads(n_threads)
    # On stdout, with the results: stderr carries only a refusal's one line.
    out.print(f"{model.device.type}, {n_threads} thread(s) ({why})", highlight=False)
    if samples == 0:
        out.print(EPISTEMIC_ABSENT, highlight=False)
    if out_dir.suffix == ".zarr":
        _predict_zarr(model, atoms, out_dir, spacing, samples, allow_foreign, resume, formats, workers, scheduler, pool,
                      blend=not no_blend)
        return
    if resume:
        raise InputError("--resume continues a streamed prediction: give --out RESULT.zarr")
    plan_grid(model, atoms, spacing=spacing, n_samples=samples)
    t0 = time.perf_counter()
    with progress_reporter(console, "predicting") as progress:
        fields = run_predict(model, atoms, spacing=spacing, n_samples=samples, allow_foreign=allow_foreign,
                             progress=progress, blend=not no_blend)
    dt = time.perf_counter() - t0
    stem = structure.stem
    singles = {"density": fields.mean, "sigma_total": fields.sigma_total, "sigma_epistemic": fields.sigma_epistemic}
    singles = {k: v for k, v in singles.items() if v is not None}  # mean-only: no epistemic σ file
    written = []
    for fmt in fmts:
        if fmt.multi_field:
            written.append(write(out_dir / f"{stem}_fields{fmt.extension}", atoms, fields.as_dict(), format=fmt.name))
        else:
            written += [write(out_dir / f"{stem}_{name}{fmt.extension}", atoms, arr, format=fmt.name)
                        for name, arr in singles.items()]
    out.print(f"{len(atoms)} atoms, grid {'x'.join(map(str, fields.shape))}, S={samples or '0 (mean only)'}: {dt:.2f} s; "
              f"∫ρ = {fields.integrate():.3f} e, mean σ = {fields.sigma_total.mean():.2e} e/Å³")
    _print_energy(model, atoms)
    if report:
        from .trust import trust_report, write_report

        summary = trust_report(model, atoms, fields, name=images[index][0])
        for line in summary.lines():
            out.print(line, highlight=False, soft_wrap=True)
        written.append(write_report(summary, report_path))
    for p in written:
        out.print(f"wrote {p}")


@app.command()
@user_errors
def learn(
    system: Optional[str] = typer.Argument(None, help="Alloy system (SiGeSn, SiGe, CrFeCoNi); not needed with --resume."),
    out_dir: Path = typer.Option(..., "--out", "-o", help="Run folder: data.db, log.jsonl, a model per round."),
    strategy: Optional[str] = typer.Option(None, help="active (epistemic σ) | tessellation | random (default active)."),
    rounds: Optional[int] = typer.Option(None, help="Rounds, round 0 (vertices + centroid) included (default 5)."),
    batch: Optional[int] = typer.Option(None, help="Compositions picked per round after round 0 (default 3)."),
    step: Optional[float] = typer.Option(None, help="Spacing of the candidate composition grid, 1/N (default 0.125)."),
    repeat: Optional[str] = typer.Option(None, help="Supercell of every configuration: N or N1xN2xN3 (e.g. 2x1x1) (default 1)."),
    samples: Optional[int] = typer.Option(None, help="Random configurations per composition and temperature (default 1)."),
    temperature: Optional[List[float]] = typer.Option(None, help="Temperature in K (repeatable) (default 300)."),
    thermal: Optional[str] = typer.Option(None, help="md (CHGNet Langevin MD) or einstein (fast) (default md)."),
    test: Optional[Path] = typer.Option(None, help="Fixed test dataset of the same system (never trained on)."),
    target_l1: Optional[float] = typer.Option(None, help="Stop when the test L1% (see --target-on) reaches this."),
    target_on: Optional[str] = typer.Option(None, help="mean | worst: which test L1% --target-l1 applies to (default mean)."),
    seed: Optional[int] = typer.Option(None, help="Seed of picks and training, and of structures unless --dft-seed (default 0)."),
    dft_seed: Optional[int] = typer.Option(None, help="Seed of the DFT structures alone, so runs of several --seed values "
                                                      "share structures and a --cache (default: --seed)."),
    cache: Optional[Path] = typer.Option(None, help="DFT cache shared by runs and strategies (an ASE database)."),
    add: Optional[List[str]] = typer.Option(None, help="Composition to run in the next round, on or off the grid "
                                                        "(repeatable; e.g. Si0.3Ge0.7)."),
    score_configs: Optional[int] = typer.Option(None, help="Random configurations scored per candidate (default 2)."),
    score_samples: Optional[int] = typer.Option(None, help="Weight samples S per scored configuration (default 10)."),
    aggregate: Optional[str] = typer.Option(None, help="How a candidate's epistemic σ over its grid points is summarised: "
                                                       "mean | quantile | quantile:Q (default quantile:0.9)."),
    weighting: Optional[str] = typer.Option(None, help="none: rank candidates by σ alone; density: by their expected "
                                                       "error reduction over the candidate pool (default none)."),
    epochs: Optional[int] = typer.Option(None, help="Maximum training epochs per round (default 40)."),
    train_steps: Optional[str] = typer.Option(None, help="Training per round in optimiser steps: N (about N steps; round 0, "
                                                         "from scratch, 8N), or 'converge' (early stopping on the run's "
                                                         "validation cells after --patience-steps without improvement, "
                                                         "capped at --max-steps; round 0, from scratch, trains 8x the cap without early "
                                                         "stopping). "
                                                         "Default: --epochs with the training's patience."),
    retrain: Optional[str] = typer.Option(None, help="How each round trains: scratch (a new model on all data so far, "
                                                     "with round 0's budget, which must reach convergence: see --train-steps) or finetune (the "
                                                     "previous round's model fine-tuned, as rhox train --parent). Default scratch: on the CrFeCoNi study's "
                                                     "cells fine-tuned rounds stayed at test L1% ~8 % where the same "
                                                     "cells trained from scratch reach ~1.4 % (benchmarks/README.md 8b). "
                                                     "Fixed for a run; runs made before this option resume as finetune."),
    patience_steps: Optional[int] = typer.Option(None, help="With --train-steps converge: steps without validation "
                                                            "improvement before a round stops (default 400)."),
    max_steps: Optional[int] = typer.Option(None, help="With --train-steps converge: cap on a round's steps (default 4000)."),
    hidden: Optional[str] = typer.Option(None, help="Hidden layer widths (default 64,64,32)."),
    ecut: Optional[float] = typer.Option(None, help="Plane-wave cut-off, eV (default per system)."),
    kpt_density: Optional[float] = typer.Option(None, help="k-points per Å⁻¹ (default per system)."),
    xc: Optional[str] = typer.Option(None, help="Exchange-correlation functional (default PBE)."),
    workers: int = typer.Option(1, help="Parallel DFT calculations (Dask LocalCluster when > 1)."),
    scheduler: Optional[str] = typer.Option(None, help="Address of an existing Dask scheduler."),
    mpi_ranks: int = typer.Option(1, help="MPI ranks per calculation."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out (finished rounds are kept)."),
):
    """Active learning over the composition simplex (or the tessellation / random baseline).

    Each round runs DFT at the picked compositions into OUT/data.db, trains a model on all the
    data so far (from scratch, or fine-tuning the previous round's with --retrain finetune),
    evaluates it on --test and appends a record to OUT/log.jsonl.

    Example: rhox learn SiGeSn --out runs/al --strategy active --rounds 6 --batch 2 --repeat 1 --test data/test.db
    """
    from .generate import check_scheduler
    from .learn import prepare_run, run_learning

    if workers < 1:
        fail(f"--workers must be >= 1, got {workers}")
    if mpi_ranks < 1:
        fail(f"--mpi-ranks must be >= 1, got {mpi_ranks}")
    train = {}
    if epochs is not None:
        train["max_epochs"] = epochs
    if hidden is not None:
        try:
            train["hidden"] = [int(h) for h in hidden.split(",")]
        except ValueError:
            fail(f"hidden layer widths must be comma-separated integers, got {hidden!r}")
    dft = {k: v for k, v in dict(ecut=ecut, kpt_density=kpt_density, xc=xc).items() if v is not None}
    from .learn import check_train_steps, parse_aggregate

    acquisition = {k: v for k, v in dict(n_configs=score_configs, n_samples=score_samples, weighting=weighting).items()
                   if v is not None}
    if aggregate is not None:
        acquisition.update(parse_aggregate(aggregate))
    given = dict(system=system, strategy=strategy, rounds=rounds, batch=batch, step=step, repeat=repeat,
                 samples=samples, temperatures=tuple(temperature) if temperature else None, thermal=thermal,
                 test=str(test) if test else None, target_l1=target_l1, target_metric=target_on, seed=seed,
                 cache=str(cache) if cache else None, dft=dft or None, train=train or None,
                 acquisition=acquisition or None, dft_seed=dft_seed, train_steps=check_train_steps(train_steps),
                 patience_steps=patience_steps, max_steps=max_steps, retrain=retrain)
    settings = prepare_run(out_dir, given, resume=resume)
    if add:
        from .composition import parse_composition
        from .structures import check_buildable

        for c in add:  # checked before anything is written
            check_buildable(settings.system, parse_composition(c, _elements(settings.system)), settings.repeat)
    if scheduler:
        check_scheduler(scheduler)

    from contextlib import nullcontext

    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                               TimeRemainingColumn)

    # On a terminal a bar with ETA per round's DFT; logs and pipes get one plain line per item.
    progress = (Progress(TextColumn("[bold]{task.fields[label]}"), BarColumn(), MofNCompleteColumn(),
                         TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                         TextColumn("{task.description}"), console=console)
                if console.is_terminal else None)
    bars: dict = {}

    def on_plan(r, n):
        if progress is not None:
            bars["dft"] = progress.add_task("", total=n, label=f"round {r} DFT")

    def on_result(r):
        text = f"{r['composition']} T={r['temperature']:g}K: {r['status']}" + (" (cache)" if r.get("cached") else "")
        if progress is not None and "dft" in bars:
            progress.update(bars["dft"], advance=1, description=text)
        else:
            console.print("DFT " + text, highlight=False, soft_wrap=True)

    def on_epoch(r):
        if r["epoch"] % 5 == 0 or r["epoch"] == r["max_epochs"]:
            console.print(f"  epoch {r['epoch']}/{r['max_epochs']} val L1% {r['val_l1']:.3f} (best {r['best_val_l1']:.3f})",
                          highlight=False)

    with progress if progress is not None else nullcontext():
        records = run_learning(out_dir, settings, workers=workers, scheduler=scheduler, mpi_ranks=mpi_ranks,
                               on_status=lambda m: console.print(m, highlight=False, soft_wrap=True),
                               on_result=on_result, on_epoch=on_epoch, on_plan=on_plan, add=add or ())
    table = Table(title=f"rhox learn {settings.system} ({settings.strategy})")
    for col in ("round", "picked", "DFT", "DFT (s)", "test L1% mean", "worst", "cal1"):
        table.add_column(col, justify="right")
    for rec in records:
        t = rec.get("test") or {}
        table.add_row(str(rec["round"]), " ".join(p["composition"] for p in rec["picked"]), str(rec["n_dft"]),
                      f"{rec['dft_seconds']:.0f}", f"{t['L1%_mean']:.3f}" if t else "", f"{t['L1%_worst']:.3f}" if t else "",
                      f"{t['cal1']:.1f}" if t else "")
    out.print(table)
    out.print(f"log: {out_dir / 'log.jsonl'}")


def _elements(system: str):
    from .structures import get_system

    return get_system(system).elements


@app.command()
@user_errors
def build(
    system: str = typer.Argument(..., metavar="SYSTEM", help="Alloy system (SiGeSn, SiGe, CrFeCoNi, Al)."),
    composition: str = typer.Option(..., help="Composition, e.g. Si0.5Ge0.3Sn0.2 or 0.5,0.3,0.2."),
    repeat: Tuple[int, int, int] = typer.Option(..., metavar="NX NY NZ",
                                               help="Repeats of the conventional cubic cell along a, b, c."),
    vacancies: int = typer.Option(0, help="Atoms removed at random."),
    temperature: float = typer.Option(0.0, help="Temperature in K of the thermal displacements (0: none)."),
    thermal: str = typer.Option("einstein", help="Thermal sampler: einstein (harmonic; fast at any size)."),
    seed: int = typer.Option(0, help="Seed; same seed, same structure."),
    out_path: Path = typer.Option(..., "--out", "-o", help="File to write: .xyz/.extxyz or LAMMPS data (.lmp, .data)."),
    fmt: Optional[str] = typer.Option(None, "--format", help="extxyz or lammps-data (default: from the suffix)."),
):
    """Build a random alloy supercell of any size and write it (a million atoms: built in about a
    second, written by ASE in 15-25 s).

    Example: rhox build SiGeSn --composition Si0.4Ge0.3Sn0.3 --repeat 50 50 50 --temperature 300 -o big.lmp
    """
    import time

    from .build import build_alloy, check_memory, composition_counts, format_for, write_structure
    from .structures import check_buildable, get_system

    file_format = format_for(out_path, fmt)
    n_atoms = check_buildable(get_system(system), composition, repeat, vacancies)
    check_memory(n_atoms, file_format)
    if out_path.is_dir():
        fail(f"output {out_path} is a folder; give a file name")
    if not out_path.parent.is_dir():
        fail(f"output folder {out_path.parent} does not exist")
    t0 = time.perf_counter()
    atoms = build_alloy(system, composition, repeat, vacancies=vacancies, temperature=temperature,
                        thermal=thermal, seed=seed)
    t1 = time.perf_counter()
    write_structure(out_path, atoms, file_format)
    t2 = time.perf_counter()
    counts = ", ".join(f"{el} {n:,}" for el, n in composition_counts(atoms).items())
    out.print(f"{len(atoms):,} atoms ({counts}), cell {' x '.join(f'{x:.2f}' for x in atoms.cell.lengths())} Å: "
              f"built in {t1 - t0:.2f} s, written in {t2 - t1:.2f} s to {out_path} ({file_format})",
              highlight=False, soft_wrap=True)


def _print_energy(model, atoms) -> None:
    """``energy: E ± σ eV/atom`` of a prediction, or why there is none."""
    from .energy import predict_energy
    from .errors import InputError

    if model.energy is None:
        out.print("energy: no energy model in this model directory (rhox train-energy fits one)")
        return
    try:
        e, s = predict_energy(atoms, model)
    except InputError as err:  # e.g. an element the energy model never saw (allowed for the density)
        out.print(f"energy: not predicted ({err})", highlight=False, soft_wrap=True)
        return
    out.print(f"energy: {e:.4f} ± {s:.4f} eV/atom (DFT total energy per atom, σ predictive)", highlight=False)


def _predict_zarr(model, atoms, store: Path, spacing, samples, allow_foreign, resume, formats, workers=None,
                  scheduler=None, pool: str = "processes", blend: bool = True) -> None:
    """``rhox predict ... --out RESULT.zarr``: the streamed prediction, with progress and ETA."""
    import time

    from .errors import InputError
    from .progress import progress_reporter
    from .stream import predict_to_zarr

    if formats:
        raise InputError("--format applies to folder outputs; a .zarr store holds all four fields")
    t0 = time.perf_counter()
    with progress_reporter(console, "predicting") as progress:
        summary = predict_to_zarr(model, atoms, store, spacing=spacing, n_samples=samples, resume=resume,
                                  allow_foreign=allow_foreign, progress=progress, workers=workers,
                                  scheduler=scheduler, blend=blend, local=pool)
    dt = time.perf_counter() - t0
    again = f" ({summary.blocks_resumed} found done)" if summary.blocks_resumed else ""
    kind = "Dask workers" if pool == "dask" else "worker processes"
    on = (f" on {workers} {kind}" if workers is not None else
          f" on the Dask scheduler {scheduler}" if scheduler is not None else "")
    out.print(f"{len(atoms)} atoms, grid {'x'.join(map(str, summary.shape))}, S={samples or '0 (mean only)'}: "
              f"{summary.n_blocks} blocks{again}{on} in {dt:.2f} s; ∫ρ = {summary.integral:.3f} e, "
              f"mean σ = {summary.mean_sigma:.2e} e/Å³")
    _print_energy(model, atoms)
    out.print(f"wrote {store}")


@app.command(name="slice")
@user_errors
def slice_(
    store: Path = typer.Argument(..., metavar="RESULT.zarr", help="A store written by rhox predict --out RESULT.zarr."),
    plane: Optional[str] = typer.Option(None, help="A lattice plane: z=0.5 (fractional) or x=12.3A (Å along a); "
                                                   "the nearest grid plane is taken."),
    box: Optional[str] = typer.Option(None, help="A sub-box X0:X1,Y0:Y1,Z0:Z1 in fractional coordinates (0 to 1)."),
    field: str = typer.Option("mean", help="mean | sigma_total | sigma_epistemic | sigma_aleatoric"),
    out_path: Path = typer.Option(..., "--out", "-o", help="File to write: a plane as .png, .cube or .vti; "
                                                            "a box as .cube, .xsf or .vti."),
    fmt: Optional[str] = typer.Option(None, "--format", help="png, cube, xsf or vtk (default: from the suffix)."),
):
    """Export a plane (PNG image with colour bar, cube, VTK) or a sub-box (cube, xsf, VTK, with its
    own origin and the atoms inside it) of a streamed prediction, reading only the chunks it needs.

    Example: rhox slice big.zarr --plane z=0.5 --field sigma_total -o plane.png
    """
    from .errors import InputError
    from .slicing import box_region, check_field, export_region, open_store, output_format, plane_region

    if (plane is None) == (box is None):
        raise InputError("give one region: --plane AXIS=POSITION or --box X0:X1,Y0:Y1,Z0:Z1")
    info = open_store(store)
    check_field(info, field)
    output_format(out_path, fmt, plane is not None)
    region = plane_region(info, plane) if plane is not None else box_region(info, box)
    written, values = export_region(info, field, region, out_path, fmt)
    out.print(f"{field} on the {region.label}: {values.size} points, from {values.min():.4g} to {values.max():.4g} "
              f"electrons/Å³", highlight=False, soft_wrap=True)
    out.print(f"wrote {written}")


@app.command()
def serve(
    host: str = typer.Option("127.0.0.1", help="Address to bind (127.0.0.1: this machine only)."),
    port: int = typer.Option(5006, help="Port."),
    show: bool = typer.Option(False, help="Open a browser tab."),
    model: Optional[Path] = typer.Option(None, help="Model directory (default: the bundled one)."),
    data: Optional[Path] = typer.Option(None, help="Dataset (default: the bundled one)."),
    result: Optional[Path] = typer.Option(None, help="A prediction store (RESULT.zarr) to open: overview and "
                                                     "full-resolution box."),
):
    """Start the explorer with `panel serve`, bound to 127.0.0.1 unless told otherwise."""
    import importlib.util

    # Locate (not import) the explorer's script: panel serve runs it once per browser session.
    app_file = Path(importlib.util.find_spec("rhox.explorer.app").origin)
    env = dict(os.environ)
    if model:
        env["RHOX_MODEL"] = str(model.resolve())
    if data:
        env["RHOX_DATA"] = str(data.resolve())
    if result:
        from .errors import RhoxError, one_line
        from .keys import ENV_RESULT
        from .slicing import open_store

        try:
            open_store(result)  # not a store: one line now, not a message in every session
        except RhoxError as err:
            fail(one_line(err))
        env[ENV_RESULT] = str(result.resolve())
    cmd = [sys.executable, "-m", "panel", "serve", str(app_file), "--address", host, "--port", str(port),
           "--allow-websocket-origin", f"{host}:{port}", "--num-procs", "1"]
    if host == "127.0.0.1":
        cmd += ["--allow-websocket-origin", f"localhost:{port}"]
    if show:
        cmd.append("--show")
    console.print(f"rhox explorer on http://{host}:{port}/app")
    # Replace this process by the server (no wrapper left behind): a signal to `rhox serve`,
    # e.g. from a test or a process manager, then reaches panel itself.
    os.execve(sys.executable, cmd, env)


def main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    app()
