#!/usr/bin/env bash
# The SSL² strategy table of issue 13, in order; every step resumes where it stopped, so rerunning
# this script after an interruption continues the work. From the repository root:
#   bash training/mslesion/run_ssl.sh [ARM ...]      (default: ssl0 ssl1 ssl2)
set -euo pipefail
export NIPYPE_NO_ET=1 PYTHONPATH=.
py=${PYTHON:-.venv/bin/python}
cv="$py -m training.mslesion.crossval"
$cv training/mslesion/configs/cv2.json --prepare
arms=("$@")
[ ${#arms[@]} -gt 0 ] || arms=(ssl0 ssl1 ssl2)
for arm in "${arms[@]}"; do
  for fold in A B C D; do
    $cv "training/mslesion/configs/$arm.json" --train "$fold"
  done
  $cv "training/mslesion/configs/$arm.json" --evaluate
done
