"""Named keys of the dataset and model files, in one place (as SchNetPack does).

Key-value pairs are searchable in ``ase db data.db KEY=VALUE``; data entries hold arrays.
"""

# --- key-value pairs of a dataset row -----------------------------------------------------
TASK = "task"                  # deterministic id of the work item (hash of its parameters)
STATUS = "status"              # "running" | "done" | "failed"
REASON = "reason"              # why a calculation failed
SYSTEM = "system"              # alloy system name, e.g. "SiGeSn"
COMPOSITION = "composition"    # requested composition, e.g. "Si0.5Ge0.25Sn0.25"
REALISED = "realised"          # realised composition after rounding to whole atoms
REPEAT = "repeat"              # supercell repeat as "2x2x2"
TEMPERATURE = "temperature"    # K
THERMAL = "thermal"            # thermalization method: "md" | "einstein" | "none"
SAMPLE = "sample"              # index of the random configuration at this composition/temperature
SEED = "seed"                  # seed of the structure and thermal sampler
VACANCIES = "vacancies"
ANTISITES = "antisites"
SOURCE = "source"              # "generated" or the user's structure file name
INTEGRAL = "integral"          # ∫ñ dV of the stored field (electrons), as GPAW integrates it
WALL_TIME = "wall_time"        # DFT wall time, s
PID = "pid"
HOST = "host"
CACHED = "cached"              # 1 when the sample was copied from a DFT cache instead of computed

STATUS_RUNNING = "running"
STATUS_DONE = "done"
STATUS_FAILED = "failed"

# --- atoms.info keys of a structure (set by structures, thermal, generate and store) ------------
INFO_SYSTEM = "system"                      # alloy system name
INFO_COMPOSITION = "composition"            # requested composition, text
INFO_REALISED = "realised_composition"      # composition after rounding to whole atoms, text
INFO_REPEAT = "repeat"                      # supercell repeat, [r1, r2, r3]
INFO_SEED = "seed"                          # seed of the random structure
INFO_LATTICE_CONSTANT = "lattice_constant"  # conventional cubic lattice constant, Å
INFO_VACANCIES = "vacancies"                # number of vacancies made
INFO_VACANCY_SITES = "vacancy_sites"        # indices of the removed sites
INFO_ANTISITES = "antisites"                # number of antisite defects made
INFO_TEMPERATURE = "temperature"            # K of a thermal snapshot
INFO_THERMAL = "thermal"                    # sampler of a snapshot: "md" | "einstein" | "none"
INFO_SNAPSHOT = "snapshot"                  # index of the snapshot
INFO_ROW_ID = "row_id"                      # dataset row a sample was read from
INFO_SOURCE = "source"                      # file name a user structure came from

# --- data entries of a dataset row ---------------------------------------------------------
DENSITY = "density"            # float64 (nx,ny,nz) or (2,nx,ny,nz), electrons/Å³
PROVENANCE = "provenance"      # dict: code, version, settings, k-points, iterations, ...

# --- which field the density is -----------------------------------------------------------
FIELD_PSEUDO = "pseudo_density_no_compensation"

# --- model directory -----------------------------------------------------------------------
MODEL_CONFIG = "config.json"
MODEL_WEIGHTS = "weights.safetensors"
MODEL_ENERGY = "energy.json"      # the energy model (engine/energy.py), optional: settings and record
MODEL_ENERGY_ARRAYS = "energy.safetensors"  # its arrays: posterior mean/covariance, standardisation
CHECKPOINT = "checkpoint.safetensors"
CHECKPOINT_STATE = "checkpoint.json"

# --- environment variables -------------------------------------------------------------------
ENV_MODEL = "RHOX_MODEL"       # model directory used by default (rhox serve --model sets it)
ENV_DATA = "RHOX_DATA"         # dataset used by default in the explorer (rhox serve --data)
ENV_WORKDIR = "RHOX_WORKDIR"   # where explorer sessions keep their files (default: temp dir)
ENV_RESULT = "RHOX_RESULT"     # prediction store (zarr) the explorer opens at start (rhox serve --result)

# --- streamed prediction store (zarr) ---------------------------------------------------------
STREAM_PROGRESS = "rhox_progress.json"  # record of the blocks done, replaced atomically after each
STREAM_FORMAT = "rhox_stream_format"    # group attribute: layout version of the store

# The fields of a prediction (e/Å³), in the order files and stores list them.
FIELD_NAMES = ("mean", "sigma_total", "sigma_epistemic", "sigma_aleatoric")
