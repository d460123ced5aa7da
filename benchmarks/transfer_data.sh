#!/usr/bin/env bash
# DFT datasets of the transfer-learning and uncertainty study (issue 12), made with rhox's own
# pipeline (`rhox generate`: random alloy -> CHGNet MD snapshot -> GPAW -> ASE database).
#
#   benchmarks/transfer_data.sh [STAGE|DATASET...]   (nothing: every dataset, in the order below)
#   make data-transfer [STAGES="..."]                 (the same, with the project's venv)
#
# Stages group datasets: sige-small sige-large al-small al-mid al-large; a dataset name (e.g.
# sige_large_test) runs that file alone. Every command is resumable: run it again and it goes on
# where it stopped (finished and failed items are skipped; add --retry-failed by hand to rerun
# failures). Seeds are fixed and distinct per file, so a rerun makes the same structures; with
# `random:N` compositions, a larger N keeps the first N and adds new ones (to grow a test set).
# Training and test cells are in separate files. RHOX names the command (default `rhox`);
# WORKERS the parallel DFT calculations (default 1). benchmarks/data/README.md says what each file
# holds and what it cost.
set -euo pipefail
cd "$(dirname "$0")/.."
RHOX=${RHOX:-rhox}
WORKERS=${WORKERS:-1}
D=benchmarks/data
# One thread per process: GPAW runs serial anyway, and CHGNet's MD (torch) slowed down 5-10x on a
# shared 2-core machine when its threads competed with other work.
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}

# CPU time of each run (MD + DFT + start-up, all processes) goes to stderr after it, for the README.
TIMEFORMAT="rhox generate: %U s user + %S s system CPU, %R s wall"
gen() { time $RHOX generate "$@" --workers "$WORKERS"; }

# --- SiGe, diamond; 8-atom cells (repeat 1) at 2x2x2 k-points, 64-atom cells (repeat 2) at Γ ---
sige_small_train() {
  # Compositions Si1, Si.75Ge.25, ..., Ge1 (grid:4), 2 CHGNet MD snapshots at 300 K and at 900 K.
  gen SiGe --compositions grid:4 --repeat 1 --samples 2 --temperature 300 --temperature 900 \
    --thermal md --seed 101 --out $D/sige_small_train.db
}
sige_small_0K_train() {
  # The same compositions on the perfect lattice (0 K: no thermal displacement), for the
  # thermalization-effect comparison: 4 random arrangements per mixed composition as in the
  # thermalized set; the pure ends have a single 0 K structure, so one cell each.
  gen SiGe --compositions 'Si1;Ge1' --repeat 1 --samples 1 --temperature 0 \
    --seed 102 --out $D/sige_small_0K_train.db
  gen SiGe --compositions 'Si0.75Ge0.25;Si0.5Ge0.5;Si0.25Ge0.75' --repeat 1 --samples 4 \
    --temperature 0 --seed 102 --out $D/sige_small_0K_train.db
}
sige_small_test() {
  # Held-out small thermalized cells, at a temperature between the two and at the four
  # compositions an 8-atom cell can hold that are not in training (x = 1/8, 3/8, 5/8, 7/8;
  # random compositions would mostly be refused: 8 sites cannot hold Si0.95Ge0.05).
  gen SiGe --compositions 'Si0.875Ge0.125;Si0.625Ge0.375;Si0.375Ge0.625;Si0.125Ge0.875' \
    --repeat 1 --samples 1 --temperature 600 --thermal md --seed 103 --out $D/sige_small_test.db
}
sige_large_finetune() {
  gen SiGe --compositions random:4 --repeat 2 --samples 1 --temperature 600 \
    --thermal md --seed 201 --out $D/sige_large_finetune.db
}
sige_large_test() {
  gen SiGe --compositions random:4 --repeat 2 --samples 1 --temperature 600 \
    --thermal md --seed 202 --out $D/sige_large_test.db
}
sige_large_vacancy_test() {
  # 63 atoms: one vacancy in a 64-site cell.
  gen SiGe --compositions random:2 --repeat 2 --samples 1 --temperature 600 --vacancies 1 \
    --thermal md --seed 203 --out $D/sige_large_vacancy_test.db
}

# --- Al, FCC; 4-atom cells (repeat 1), 32 (repeat 2), 108 (repeat 3, Γ) ---
al_small_train() {
  # 4 CHGNet MD snapshots at each of 300, 600, 900 K.
  gen Al --compositions Al1 --repeat 1 --samples 4 --temperature 300 --temperature 600 \
    --temperature 900 --thermal md --seed 301 --out $D/al_small_train.db
}
al_small_vacancy_train() {
  # 3 atoms: one vacancy in the 4-site cell, 2 snapshots at each temperature.
  gen Al --compositions Al1 --repeat 1 --samples 2 --temperature 300 --temperature 600 \
    --temperature 900 --vacancies 1 --thermal md --seed 302 --out $D/al_small_vacancy_train.db
}
al_mid_finetune() {
  gen Al --compositions Al1 --repeat 2 --samples 3 --temperature 600 \
    --thermal md --seed 401 --out $D/al_mid_finetune.db
}
al_mid_test() {
  gen Al --compositions Al1 --repeat 2 --samples 2 --temperature 600 \
    --thermal md --seed 402 --out $D/al_mid_test.db
}
al_mid_vacancy_test() {
  gen Al --compositions Al1 --repeat 2 --samples 2 --temperature 600 --vacancies 1 \
    --thermal md --seed 403 --out $D/al_mid_vacancy_test.db
}
al_large_test() {
  gen Al --compositions Al1 --repeat 3 --samples 2 --temperature 600 \
    --thermal md --seed 501 --out $D/al_large_test.db
}

declare -A STAGE=(
  [sige-small]="sige_small_train sige_small_0K_train sige_small_test"
  [sige-large]="sige_large_finetune sige_large_test sige_large_vacancy_test"
  [al-small]="al_small_train al_small_vacancy_train"
  [al-mid]="al_mid_finetune al_mid_test al_mid_vacancy_test"
  [al-large]="al_large_test"
)
ORDER="sige-small sige-large al-small al-mid al-large"
ALL=$(for s in $ORDER; do echo "${STAGE[$s]}"; done)

args=("$@")
[ ${#args[@]} -eq 0 ] && args=($ORDER)
for a in "${args[@]}"; do
  if [ -n "${STAGE[$a]:-}" ]; then
    for d in ${STAGE[$a]}; do "$d"; done
  elif printf '%s\n' $ALL | grep -qx -- "$a"; then
    "$a"
  else
    echo "error: unknown stage or dataset '$a' (stages: $ORDER; datasets: $(echo $ALL))" >&2
    exit 2
  fi
done
