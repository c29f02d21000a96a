#!/usr/bin/env bash
# Install dr_exp into .venv and run a real demo sweep end to end on the embedded
# default: a SQLite queue in .dr_exp/jobs.db, drained by local worker processes.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/venv.sh
install_dr_exp examples

python examples/train.py -m optim.lr=0.01,0.1 seed=0,1,2 hydra/launcher=dr_exp
echo
dr_exp status
echo
dr_exp list --status all
