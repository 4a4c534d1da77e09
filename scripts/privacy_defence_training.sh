#!/bin/bash
# Accuracy, bytes per round and local-DP epsilon of the defences compared in
# docs/privacy.md ("Defences compared"): the digits CNN, 3 clients,
# 5 rounds, threshold mode with the paper's mask (top 10 % plus the first and last
# layers), with Laplace noise b on the plaintext part (clip C = 0.01), fully encrypted,
# and plaintext FedAvg.  Usage: scripts/privacy_defence_training.sh [OUT] [RUN...]
# (default OUT docs/privacy/defences, every run); one line per run goes to
# OUT/train-runtimes.txt.
set -u
cd "$(dirname "$0")/.."
OUT=${1:-docs/privacy/defences}
shift || true
PY=${PYTHON:-python}
mkdir -p "$OUT"
declare -A RUNS=(
  [plaintext]="--mode plaintext"
  [selective]="--fraction 0.1"
  [dp-1e-5]="--fraction 0.1 --dp-scale 1e-5 --dp-clip 0.01"
  [dp-1e-4]="--fraction 0.1 --dp-scale 1e-4 --dp-clip 0.01"
  [dp-1e-3]="--fraction 0.1 --dp-scale 1e-3 --dp-clip 0.01"
  [dp-1e-2]="--fraction 0.1 --dp-scale 1e-2 --dp-clip 0.01"
  [dp-1e-1]="--fraction 0.1 --dp-scale 1e-1 --dp-clip 0.01"
  [dp-1]="--fraction 0.1 --dp-scale 1 --dp-clip 0.01"
  [full]="--fraction 1.0"
)
NAMES=${*:-plaintext selective dp-1e-5 dp-1e-4 dp-1e-3 dp-1e-2 dp-1e-1 dp-1 full}
for name in $NAMES; do
  start=$(date +%s)
  # shellcheck disable=SC2086  # the options are meant to split
  OMP_NUM_THREADS=1 $PY -m threshold_fl.app.cli train --model cnn --rounds 5 \
    --json "$OUT/train-$name.json" ${RUNS[$name]} > "$OUT/train-$name.log" 2>&1
  echo "$name rc=$? $(( $(date +%s) - start )) s" >> "$OUT/train-runtimes.txt"
done
