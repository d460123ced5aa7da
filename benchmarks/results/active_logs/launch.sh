#!/bin/bash
# How the study was launched here (detached, low priority, one thread for DFT): see benchmarks/active_study.py.
cd "$(dirname "$0")/../../.."
while [ -n "$WAIT_PID" ] && kill -0 "$WAIT_PID" 2>/dev/null; do sleep 10; done
export OMP_NUM_THREADS=1
exec nice -n 15 "${PYTHON:-python}" benchmarks/active_study.py run
