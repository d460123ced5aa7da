"""The trust report: what a user needs to know before relying on one prediction.

:func:`trust_report` turns ``(model, atoms, fields)`` into a :class:`TrustReport`, the same
summary for the CLI (``rhox predict STRUCTURE --report``) and the explorer:

- **σ** (electrons/Å³): mean and maximum of σ_total and σ_epistemic over the cell, and the same
  relative to the local predicted density ρ̂ (σ/ρ̂, a fraction) where ρ̂ is above
  :data:`DENSITY_FLOOR` of its maximum (elsewhere the relative σ of an almost empty region
  means nothing).
- **Uncertain fraction**: the fraction of those points where σ_total > :data:`SIGMA_THRESHOLD`
  × ρ̂ (5 % of the local density).
- **Where the largest σ_total sits**: its position (Å) and the nearest atoms with distances.
- **Training domain**: species; composition (distance to the nearest training composition, see
  :mod:`rhox.engine.domain`); temperature when the structure says it (``atoms.info``);
  nearest-neighbour distances per species pair against the training range, with a
  :data:`NEIGHBOUR_TOLERANCE` margin; the atom-environment novelty against the training atoms'
  (:func:`novelty_check`; models trained before it was recorded say "not available"); the
  environment range (:func:`shell_check`): whether the atoms' neighbour shells hold more distinct
  atoms than any training atom's could (small periodic training cells repeat their atoms within
  the second shell). Beyond it the check says "not verified" (``inside=None``) and whether σ
  includes the size term calibrated for such environments, and by how much it raised σ here
  (benchmarks/README.md section 6b, "Large cells").
- **Recommendation**: ``trust`` when every domain check passes and the uncertain fraction is at
  most :data:`MAX_UNCERTAIN_FRACTION`; otherwise ``check with DFT``, with the reasons.

The training domain comes from the model's ``config.json`` (``domain``, written at training
time); for an older model without it, it is computed once from its training dataset, opened
read-only (:func:`model_domain`).
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from ase import Atoms

from . import domain as dom
from .domain import SHELL_NEIGHBOURS, shell_diversity, translation_classes  # noqa: F401 (the trust report's terms)
from .errors import InputError

DENSITY_FLOOR = 0.01          # fraction of max ρ̂: below it a point counts as empty space
SIGMA_THRESHOLD = 0.05        # σ_total above this fraction of ρ̂ marks a point as uncertain
MAX_UNCERTAIN_FRACTION = 0.05  # more uncertain points than this (fraction of the occupied cell): check with DFT
MAX_NOVEL_FRACTION = 0.05     # more points beyond the validation points' 99th novelty percentile: out of domain
NEIGHBOUR_TOLERANCE = 0.02    # fractional margin around the training nearest-neighbour range
TEMPERATURE_MARGIN = 50.0     # K around the training temperatures
N_NEAREST_ATOMS = 3
SHELL_CHECK = "environment range"

TRUST = "trust"
CHECK = "check with DFT"


@dataclass
class DomainCheck:
    """One training-domain check: ``inside`` is True, False, or None (not known / not available)."""

    name: str
    inside: bool | None
    detail: str
    values: dict = field(default_factory=dict)


@dataclass
class TrustReport:
    """The trust summary of one prediction (σ in electrons/Å³, relative σ as fractions, lengths in Å)."""

    structure: str
    n_atoms: int
    grid_shape: tuple[int, int, int]
    sigma: dict             # {"total"|"epistemic": {"mean", "max", "mean_relative", "max_relative"}};
                            # "epistemic" is {"absent": why} for a mean-only prediction (samples 0)
    uncertain_fraction: float
    threshold: str          # the rule behind uncertain_fraction, in words
    max_sigma: dict         # {"value", "position", "nearest_atoms": [{"index", "symbol", "distance"}]}
    domain: list[DomainCheck]
    recommendation: str     # TRUST or CHECK
    reasons: list[str]

    @property
    def inside_domain(self) -> bool:
        return all(c.inside is not False for c in self.domain)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["grid_shape"] = list(self.grid_shape)
        d["inside_domain"] = self.inside_domain
        return _finite_or_none(d)

    def lines(self) -> list[str]:
        """The report as plain lines (the CLI prints these; numbers as in the JSON, rounded)."""
        t, e = self.sigma["total"], self.sigma["epistemic"]
        m = self.max_sigma
        near = ", ".join(f"{a['symbol']}{a['index']} {a['distance']:.3f} Å" for a in m["nearest_atoms"])
        out = [f"trust report for {self.structure} ({self.n_atoms} atoms, grid {'x'.join(map(str, self.grid_shape))})",
               f"σ total: mean {t['mean']:.3e}, max {t['max']:.3e} e/Å³; relative to ρ: mean "
               f"{100 * t['mean_relative']:.2f} %, max {100 * t['max_relative']:.2f} %",
               (f"σ epistemic: absent ({e['absent']})" if "absent" in e else
                f"σ epistemic: mean {e['mean']:.3e}, max {e['max']:.3e} e/Å³; relative to ρ: mean "
                f"{100 * e['mean_relative']:.2f} %, max {100 * e['max_relative']:.2f} %"),
               f"uncertain fraction: {100 * self.uncertain_fraction:.2f} % of the cell ({self.threshold})",
               f"largest σ total {m['value']:.3e} e/Å³ at ({', '.join(f'{x:.3f}' for x in m['position'])}) Å, "
               f"nearest atoms: {near}"]
        for c in self.domain:
            mark = {True: "inside", False: "OUTSIDE", None: "n/a"}[c.inside]
            out.append(f"{c.name}: {mark}: {c.detail}")
        out.append(f"recommendation: {self.recommendation}" + (f" ({'; '.join(self.reasons)})" if self.reasons else ""))
        return out


def _finite_or_none(obj):
    """NaN and inf -> None, so that the JSON is standard (json.dumps would write NaN)."""
    if isinstance(obj, dict):
        return {k: _finite_or_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite_or_none(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def _sigma_stats(sigma: np.ndarray, rho: np.ndarray, mask: np.ndarray) -> dict:
    rel = sigma[mask] / rho[mask]
    return {"mean": float(sigma.mean()), "max": float(sigma.max()),
            "mean_relative": float(rel.mean()) if rel.size else math.nan,
            "max_relative": float(rel.max()) if rel.size else math.nan}


def _max_sigma(atoms: Atoms, sigma: np.ndarray) -> dict:
    from ase.geometry import get_distances

    idx = np.unravel_index(int(np.argmax(sigma)), sigma.shape)
    frac = np.array(idx, dtype=float) / np.array(sigma.shape)
    pos = frac @ atoms.cell.array
    _, d = get_distances(pos[None], atoms.positions, cell=atoms.cell, pbc=atoms.pbc)
    d = d[0]
    order = np.argsort(d)[:N_NEAREST_ATOMS]
    sym = atoms.get_chemical_symbols()
    return {"value": float(sigma[idx]), "position": [float(x) for x in pos], "grid_index": [int(i) for i in idx],
            "nearest_atoms": [{"index": int(i), "symbol": sym[i], "distance": float(d[i])} for i in order]}


def model_domain(model) -> dict:
    """The model's training domain (``config.json`` ``domain``), computed once from its training
    dataset (read-only) for a model trained before it was recorded; ``{}`` when neither exists."""
    if isinstance(model.meta.get("domain"), dict):
        return model.meta["domain"]
    from .lineage import training_dataset_path
    from .store import Dataset

    training = model.meta.get("training") or {}
    directory = getattr(model, "directory", None)
    for p in training_dataset_path(training.get("dataset"), directory):
        if not p.is_file():
            continue
        try:
            # The same structures (and atoms.info) training reads, so the domain comes out the same.
            structures = [s.atoms for s in Dataset(p, readonly=True).samples()]
        except Exception:  # unreadable candidate: try the next
            continue
        if structures:
            model.meta["domain"] = dom.training_domain(structures)  # cached in memory only, never written
            return model.meta["domain"]
    return {}


def species_check(model, atoms: Atoms) -> DomainCheck:
    foreign = sorted(set(atoms.get_chemical_symbols()) - set(model.species))
    if foreign:
        return DomainCheck("species", False, f"{', '.join(foreign)} never seen in training "
                                             f"(trained on {', '.join(model.species)})", {"foreign": foreign})
    return DomainCheck("species", True, f"all seen in training ({', '.join(model.species)})", {"foreign": []})


def composition_check(model, atoms: Atoms) -> DomainCheck:
    train = list(model.meta.get("train_compositions") or [])
    comp = dom.fractions(atoms)
    text = "".join(f"{s}{comp[s]:.3g}" for s in sorted(comp))
    if not train:
        return DomainCheck("composition", None, f"{text}: the model records no training compositions")
    nearest, dist = dom.nearest_composition(comp, train)
    tol = dom.composition_spacing(train)
    inside = dist <= tol + 1e-9
    return DomainCheck("composition", inside,
                       f"{text}: nearest training composition {nearest} at distance {dist:.3f} "
                       f"({'within' if inside else 'beyond'} the training spacing {tol:.3f})",
                       {"composition": comp, "nearest": nearest, "distance": dist, "tolerance": tol})


def temperature_check(atoms: Atoms, domain: dict) -> DomainCheck:
    t = atoms.info.get("temperature")
    temps = domain.get("temperatures") or []
    if t is None:
        return DomainCheck("temperature", None, "not known for this structure"
                           + (f" (training: {min(temps):g}-{max(temps):g} K)" if temps else ""))
    if not temps:
        return DomainCheck("temperature", None, f"{float(t):g} K; the model records no training temperatures")
    lo, hi = min(temps) - TEMPERATURE_MARGIN, max(temps) + TEMPERATURE_MARGIN
    inside = lo <= float(t) <= hi
    return DomainCheck("temperature", inside, f"{float(t):g} K, training {min(temps):g}-{max(temps):g} K "
                                              f"(± {TEMPERATURE_MARGIN:g} K)", {"temperature": float(t), "training": temps})


def neighbour_check(atoms: Atoms, domain: dict) -> DomainCheck:
    train = domain.get("neighbour_distances") or {}
    here = dom.neighbour_ranges([atoms])
    if not train:
        return DomainCheck("neighbour distances", None, "the model records no training neighbour distances",
                           {"structure": here})
    bad = []
    for pair, (lo, hi) in here.items():
        if pair not in train:
            bad.append(f"{pair} {lo:.3f}-{hi:.3f} Å, never nearest neighbours in training")
            continue
        tlo, thi = train[pair]
        if lo < tlo * (1 - NEIGHBOUR_TOLERANCE):
            bad.append(f"{pair} down to {lo:.3f} Å, below the training minimum {tlo:.3f} Å")
        if hi > thi * (1 + NEIGHBOUR_TOLERANCE):
            bad.append(f"{pair} up to {hi:.3f} Å, above the training maximum {thi:.3f} Å")
    values = {"structure": here, "training": {k: train[k] for k in sorted(train)}, "tolerance": NEIGHBOUR_TOLERANCE}
    if bad:
        return DomainCheck("neighbour distances", False, "; ".join(bad), values)
    return DomainCheck("neighbour distances", True, ", ".join(
        f"{p} {lo:.3f}-{hi:.3f} Å (training {train[p][0]:.3f}-{train[p][1]:.3f})" for p, (lo, hi) in here.items()), values)


def training_shell_bound(model) -> int | None:
    """The largest :func:`shell_diversity` of any atom of the model's training cells (``domain``
    ``shell_diversity_max``, recorded at training, merged with the parent's at fine-tuning; for a
    model trained before it was recorded, :func:`lineage_shell_bound`, once per model, in memory
    only); None when neither is available."""
    domain = model.meta.get("domain") if isinstance(model.meta.get("domain"), dict) else {}
    if domain.get("shell_diversity_max") is not None:
        return int(domain["shell_diversity_max"])
    if "_shell_bound" not in model.__dict__:
        model.__dict__["_shell_bound"] = lineage_shell_bound(model.meta, getattr(model, "directory", None))
    return model.__dict__["_shell_bound"]


def lineage_shell_bound(config: dict, directory=None) -> int | None:
    """The largest :func:`shell_diversity` over the training datasets of a model config and of its
    ancestors (its lineage; each found as :func:`rhox.engine.lineage.training_dataset_path` finds
    it, opened read-only), as training would have recorded it; None when none of them is found."""
    from .lineage import lineage_of, training_dataset_path, _walk_datasets
    from .store import Dataset

    names = [(config.get("training") or {}).get("dataset")]
    names += [d.get("path") for d in _walk_datasets(lineage_of(config, directory))]
    bounds, seen = [], set()
    for name in names:
        for p in training_dataset_path(name, directory):
            if not p.is_file():
                continue
            if p.resolve() in seen:
                break
            try:
                b = dom.shell_diversity_max(s.atoms for s in Dataset(p, readonly=True).samples())
            except Exception:  # unreadable candidate: try the next
                continue
            seen.add(p.resolve())
            if b is not None:
                bounds.append(b)
            break
    return max(bounds) if bounds else None


def _size_term_effect(nov, size, atoms: Atoms, fields) -> dict | None:
    """How much the size term raised σ on this prediction: the mean σ epistemic and σ total with it
    (as ``fields`` hold them) over the same without it (the term taken out again, (c_size·ρ̂)² on the
    points nearest atoms beyond the bound), and the fraction of grid points it touches. None for a
    prediction that carries no epistemic σ or no calibration (the term was not applied)."""
    if fields is None or getattr(fields, "sigma_epistemic", None) is None or not getattr(fields, "calibrated", False):
        return None
    from .grid import grid_points, iter_blocks

    rho = np.asarray(fields.mean)
    se, st = np.asarray(fields.sigma_epistemic), np.asarray(fields.sigma_total)
    sums = np.zeros(4)  # Σσ_epi, Σσ_epi without, Σσ_total, Σσ_total without
    touched = 0
    for tile in iter_blocks(rho.shape, (48, 48, 48)):  # memory of a block, not of the grid
        sub = rho[tile].shape
        beyond = size.beyond(grid_points(atoms.cell.array, rho.shape, tile))
        beyond = np.broadcast_to(np.asarray(beyond).reshape(-1), (rho[tile].size,)).reshape(sub)
        extra = nov.add_size_term(np.zeros(sub), rho[tile], beyond)
        e, t = se[tile].astype(np.float64), st[tile].astype(np.float64)
        sums += [e.sum(), np.sqrt(np.maximum(e ** 2 - extra, 0.0)).sum(),
                 t.sum(), np.sqrt(np.maximum(t ** 2 - extra, 0.0)).sum()]
        touched += int(np.count_nonzero(beyond))
    return {"grid_fraction": touched / rho.size,
            "sigma_epistemic_ratio": float(sums[0] / sums[1]) if sums[1] > 0 else math.inf,
            "sigma_total_ratio": float(sums[2] / sums[3]) if sums[3] > 0 else math.inf}


def shell_check(model, atoms: Atoms, fields=None) -> DomainCheck:
    """Whether the structure's atoms see more distinct atoms among their :data:`SHELL_NEIGHBOURS`
    nearest neighbours than any training atom did (:func:`shell_diversity`), and what σ does there.

    Small periodic training cells repeat their atoms within the second shell, so a larger cell
    with its own disorder shows neighbour-shell combinations the network never met (a repeat of a
    training-size cell does not). The error there was measured 1.33x that of training-size cells
    while the network's own σ hardly rose (benchmarks/README.md section 6b). Within the bound:
    ``inside=True``. Beyond it, ``inside=None`` (not verified: informs, never flags by itself):

    - where the model carries a calibrated size term (:mod:`rhox.engine.atom_novelty`), the σ of
      ``fields`` includes it, and the detail says so and by how much it raised the mean σ here.
      Why not ``inside=False``: the term was calibrated on large cells (held-out 64-atom cells
      then reach coverage within 2.2 points of nominal), so σ now says how far to trust such a
      prediction, and the σ-based part of the report (the uncertain fraction) turns the
      recommendation when that σ is large. Flagging would send every large structure, the very
      case the term exists for (a million-atom cell cannot be checked with DFT), to "check with
      DFT" whatever its σ. Why not ``True``: two calibration cells of one kind (64-atom SiGeSn)
      fix the term; larger or differently ordered environments are not measured;
    - without a size term, σ was not calibrated on such environments and may be too small: said so.
    """
    from .novelty import model_novelty

    bound = training_shell_bound(model)
    div = shell_diversity(atoms)
    values = {"n_neighbours": SHELL_NEIGHBOURS, "max": int(div.max()), "training_max": bound}
    if bound is None:
        return DomainCheck(SHELL_CHECK, None, "the model's training cells are not available to compare with", values)
    beyond = div > bound
    frac = float(beyond.mean())
    values["fraction_beyond"] = frac
    if not beyond.any():
        return DomainCheck(SHELL_CHECK, True, f"at most {values['max']} distinct atoms among each atom's "
                           f"{SHELL_NEIGHBOURS} nearest neighbours (training cells: up to {bound})", values)
    head = (f"not verified: {100 * frac:.0f} % of the atoms see up to {values['max']} distinct atoms among their "
            f"{SHELL_NEIGHBOURS} nearest neighbours, more than any training atom ({bound}): the training cells "
            f"were too small to hold such neighbour shells; ")
    nov = model_novelty(model)
    c = float(getattr(nov, "size_coefficient", 0.0) or 0.0) if getattr(nov, "kind", None) == "atom" else 0.0
    if c <= 0:
        return DomainCheck(SHELL_CHECK, None, head + "σ was not calibrated on them and may be too small there "
                           "(check a few such structures with DFT)", values)
    from .atom_novelty import SizeTerm

    values["size_coefficient"] = c
    effect = _size_term_effect(nov, SizeTerm(atoms, bound, div), atoms, fields)
    if effect is None:
        return DomainCheck(SHELL_CHECK, None, head + f"a calibrated prediction with epistemic σ adds the size term "
                           f"(c = {c:.3g}) there; this one does not include it", values)
    values.update({"size_term_" + k: v for k, v in effect.items()})
    return DomainCheck(SHELL_CHECK, None, head + (
        f"σ includes the size term for them (σ_epi² + ({c:.3g}·ρ)², calibrated on large cells), here on "
        f"{100 * effect['grid_fraction']:.0f} % of the grid: mean σ epistemic x{effect['sigma_epistemic_ratio']:.2f}, "
        f"σ total x{effect['sigma_total_ratio']:.2f}"), values)


NOVELTY_CHECK = "environment novelty"
NOVELTY_UNAVAILABLE = ("not available for this model: it carries no atom-environment novelty data "
                       "(novelty.safetensors, recorded by training; retrain the model to get it)")


def novelty_check(model, atoms: Atoms, fields, novelty: np.ndarray | None = None) -> DomainCheck:
    """How unfamiliar the structure's atom environments are to the model.

    Uses the novelty the model was trained with (:func:`rhox.engine.novelty.model_novelty`: the
    atom-environment novelty of :mod:`rhox.engine.atom_novelty`, or for models of rhox 0.2 the
    descriptor-space one); ``novelty``: the field already computed on the prediction's grid (the
    explorer's), else it is computed here. Over the occupied points (ρ̂ above :data:`DENSITY_FLOOR`
    of its maximum), the fraction whose novelty exceeds the model's bound ``q99`` (the 99th
    percentile over the training atoms, or the validation points) must be at most
    :data:`MAX_NOVEL_FRACTION`. A model without novelty data gets ``inside=None`` and says so
    (:data:`NOVELTY_UNAVAILABLE`).
    """
    from .novelty import model_novelty, novelty_field

    nov = model_novelty(model)
    if nov is None:
        return DomainCheck(NOVELTY_CHECK, None, NOVELTY_UNAVAILABLE)
    atom = getattr(nov, "kind", None) == "atom"
    rho = np.asarray(fields.mean, dtype=np.float64)
    field_ = novelty_field(model, atoms, rho.shape, nov) if novelty is None else np.asarray(novelty)
    mask = rho > DENSITY_FLOOR * rho.max()
    vals = field_[mask] if mask.any() else field_.ravel()
    at = _grid_position(atoms, field_.shape, int(np.argmax(field_)))
    values = {"kind": "atom environment" if atom else "descriptor", "mean": float(vals.mean()),
              "max": float(field_.max()), "position_of_max": at, "q99": nov.q99, "max_fraction": MAX_NOVEL_FRACTION}
    if atom:
        per_atom = nov.atom_novelty(atoms)
        worst = np.argsort(per_atom)[::-1][:N_NEAREST_ATOMS]
        sym = atoms.get_chemical_symbols()
        values["atoms"] = [{"index": int(i), "symbol": sym[i], "novelty": float(per_atom[i])} for i in worst]
        values["atoms_above"] = int(np.sum(per_atom > nov.q99))
    kind = "atom-environment" if atom else "descriptor"
    text = f"{kind} novelty mean {values['mean']:.2f}, max {values['max']:.2f} (training-like ≈ 1)"
    if atom:
        text += ("; most unfamiliar atoms " + ", ".join(f"{a['symbol']}{a['index']} {a['novelty']:.2f}"
                                                         for a in values["atoms"]))
    if nov.q99 is None:
        return DomainCheck(NOVELTY_CHECK, None, text + "; the model records no bound", values)
    frac = float(np.mean(vals > nov.q99))
    values["fraction_above"] = frac
    inside = frac <= MAX_NOVEL_FRACTION
    ref = ("the training atoms' bound (99th percentile, at least 2)" if atom
           else "the 99th percentile of validation points")
    return DomainCheck(NOVELTY_CHECK, inside,
                       f"{text}; {100 * frac:.1f} % of the cell above {nov.q99:.2f}, {ref} "
                       f"({'within' if inside else 'more than'} {100 * MAX_NOVEL_FRACTION:g} %)",
                       values)


def _grid_position(atoms: Atoms, shape, flat: int) -> list[float]:
    idx = np.unravel_index(flat, shape)
    return [float(x) for x in (np.array(idx, dtype=float) / np.array(shape)) @ atoms.cell.array]


def trust_report(model, atoms: Atoms, fields, name: str = "structure", novelty: np.ndarray | None = None) -> TrustReport:
    """The :class:`TrustReport` of a prediction ``fields`` (:class:`~rhox.engine.predict.DensityFields`)
    made by ``model`` for ``atoms``; ``name`` labels the structure. ``novelty``: the novelty field
    on the same grid when already computed (see :func:`novelty_check`)."""
    rho = np.asarray(fields.mean, dtype=np.float64)
    st = np.asarray(fields.sigma_total, dtype=np.float64)
    # A mean-only prediction (samples 0) has no epistemic σ: absent, never reported as zero.
    absent = getattr(fields, "sigma_epistemic", None) is None
    if absent:
        from .predict import EPISTEMIC_ABSENT  # lazily: this module stays torch-free
    se = st if absent else np.asarray(fields.sigma_epistemic, dtype=np.float64)
    if rho.shape != st.shape or rho.shape != se.shape or rho.ndim != 3 or rho.size == 0:
        raise InputError(f"the fields of {name} do not share one 3-D grid (mean {rho.shape}, "
                         f"σ total {st.shape}, σ epistemic {se.shape})")
    if len(atoms) == 0:
        raise InputError(f"{name} holds no atoms")
    mask = rho > DENSITY_FLOOR * rho.max()
    sigma = {"total": _sigma_stats(st, rho, mask),
             "epistemic": {"absent": EPISTEMIC_ABSENT} if absent else _sigma_stats(se, rho, mask)}
    uncertain = float(np.mean(st[mask] > SIGMA_THRESHOLD * rho[mask])) if mask.any() else 1.0
    threshold = (f"σ total > {100 * SIGMA_THRESHOLD:g} % of ρ, over the points where ρ > "
                 f"{100 * DENSITY_FLOOR:g} % of its maximum")
    domain = model_domain(model)
    checks = [species_check(model, atoms), composition_check(model, atoms), temperature_check(atoms, domain),
              neighbour_check(atoms, domain), novelty_check(model, atoms, fields, novelty),
              shell_check(model, atoms, fields)]
    reasons = [f"{c.name} outside the training domain: {c.detail}" for c in checks if c.inside is False]
    if uncertain > MAX_UNCERTAIN_FRACTION:
        reasons.append(f"{100 * uncertain:.1f} % of the cell is uncertain ({threshold}), more than "
                       f"{100 * MAX_UNCERTAIN_FRACTION:g} %")
    return TrustReport(structure=name, n_atoms=len(atoms), grid_shape=tuple(int(n) for n in rho.shape),
                       sigma=sigma, uncertain_fraction=uncertain, threshold=threshold,
                       max_sigma=_max_sigma(atoms, st), domain=checks,
                       recommendation=CHECK if reasons else TRUST, reasons=reasons)


def write_report(report: TrustReport, path: str | os.PathLike) -> Path:
    """Write ``report`` as JSON to ``path`` atomically (tmp + rename); returns the path."""
    path = Path(path)
    if path.is_dir():
        raise InputError(f"report file {path} is an existing folder")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(report.to_dict(), indent=1, allow_nan=False))
    os.replace(tmp, path)
    return path
