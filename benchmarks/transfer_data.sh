#!/usr/bin/env bash
# DFT datasets of the transfer-learning and uncertainty study (issue 12), made with rhox's own
# pipeline (`rhox generate`: random alloy -> thermalization -> GPAW -> ASE database).
#
#   benchmarks/transfer_data.sh [STAGE...]     (no stage: all of them, in order)
#   make data-transfer                         (the same, with the project's venv)
#
# Stages (most valuable first): sige-small sige-large al-small al-mid al-large.
# Every command is resumable: run it again and it continues where it stopped (finished and
# failed items are skipped; `--retry-failed` reruns failures). Seeds are fixed and distinct per
# file, so a rerun makes the same structures. Training and test cells go in separate files.
# RHOX names the command (default `rhox`); WORKERS the parallel DFT calculations (default 1).
# See benchmarks/data/README.md for what each file holds and what it cost.
set -euo pipefail
cd "$(dirname "$0")/.."
RHOX=${RHOX:-rhox}
WORKERS=${WORKERS:-1}
D=benchmarks/data

gen() { $RHOX generate "$@" --workers "$WORKERS"; }

sige_small() {
  # 8-atom diamond cells (repeat 1), compositions Si1, Si.75Ge.25, ..., Ge1; CHGNet MD snapshots.
  gen SiGe --compositions grid:4 --repeat 1 --samples 2 --temperature 300 --temperature 900 \
    --thermal md --seed 101 --out $D/sige_small_train.db
  # The same compositions on the perfect lattice (0 K: no thermal displacement), for the
  # thermalization-effect comparison: 4 random arrangements per mixed composition as in the
  # thermalized set; the pure ends have a single 0 K structure, so one cell each.
  gen SiGe --compositions 'Si1;Ge1' --repeat 1 --samples 1 --temperature 0 \
    --seed 102 --out $D/sige_small_0K_train.db
  gen SiGe --compositions 'Si0.75Ge0.25;Si0.5Ge0.5;Si0.25Ge0.75' --repeat 1 --samples 4 \
    --temperature 0 --seed 102 --out $D/sige_small_0K_train.db
  # Held-out small thermalized cells at random compositions, at a temperature between the two.
  gen SiGe --compositions random:6 --repeat 1 --samples 1 --temperature 600 \
    --thermal md --seed 103 --out $D/sige_small_test.db
}

sige_large() {
  # 64-atom cells (repeat 2, Γ point), random compositions, 600 K MD.
  gen SiGe --compositions random:4 --repeat 2 --samples 1 --temperature 600 \
    --thermal md --seed 201 --out $D/sige_large_finetune.db
  gen SiGe --compositions random:6 --repeat 2 --samples 1 --temperature 600 \
    --thermal md --seed 202 --out $D/sige_large_test.db
  # 63 atoms: one vacancy in a 64-site cell.
  gen SiGe --compositions random:3 --repeat 2 --samples 1 --temperature 600 --vacancies 1 \
    --thermal md --seed 203 --out $D/sige_large_vacancy_test.db
}

al_small() {
  # 4-atom FCC cells (repeat 1): 4 snapshots at each of 300, 600, 900 K; and 3-atom cells with
  # one vacancy at the same temperatures.
  gen Al --compositions Al1 --repeat 1 --samples 4 --temperature 300 --temperature 600 \
    --temperature 900 --thermal md --seed 301 --out $D/al_small_train.db
  gen Al --compositions Al1 --repeat 1 --samples 2 --temperature 300 --temperature 600 \
    --temperature 900 --vacancies 1 --thermal md --seed 302 --out $D/al_small_vacancy_train.db
}

al_mid() {
  # 32-atom cells (repeat 2) at 600 K: a few for fine-tuning, a few held out, two with a vacancy.
  gen Al --compositions Al1 --repeat 2 --samples 3 --temperature 600 \
    --thermal md --seed 401 --out $D/al_mid_finetune.db
  gen Al --compositions Al1 --repeat 2 --samples 2 --temperature 600 \
    --thermal md --seed 402 --out $D/al_mid_test.db
  gen Al --compositions Al1 --repeat 2 --samples 2 --temperature 600 --vacancies 1 \
    --thermal md --seed 403 --out $D/al_mid_vacancy_test.db
}

al_large() {
  # 108-atom cells (repeat 3, Γ point) at 600 K, held out.
  gen Al --compositions Al1 --repeat 3 --samples 2 --temperature 600 \
    --thermal md --seed 501 --out $D/al_large_test.db
}

stages=("$@")
[ ${#stages[@]} -eq 0 ] && stages=(sige-small sige-large al-small al-mid al-large)
for s in "${stages[@]}"; do
  case $s in
    sige-small) sige_small ;; sige-large) sige_large ;; al-small) al_small ;;
    al-mid) al_mid ;; al-large) al_large ;;
    *) echo "error: unknown stage '$s' (sige-small sige-large al-small al-mid al-large)" >&2; exit 2 ;;
  esac
done
