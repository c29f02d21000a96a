#!/usr/bin/env bash
# Install dr_exp with its test extras into .venv, start the project's own
# single-node SLURM test cluster (as root; DR_EXP_TEST_SLURM=0 skips it), lint,
# and run the whole test suite. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/venv.sh
install_dr_exp test

if [ "${DR_EXP_TEST_SLURM:-1}" != 0 ] && [ "$(id -u)" = 0 ]; then
    bash tests/slurm/slurm-up.sh
else
    echo "test.sh: not starting SLURM (needs root); the SLURM tests will skip" >&2
fi

# The dashboard and report tests drive Debian's headless Chromium (never a downloaded one);
# the clock-skew test runs a worker under faketime.
if [ "$(id -u)" = 0 ] && ! { command -v chromium && command -v chromedriver && command -v faketime; } >/dev/null; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver faketime >/dev/null
fi

ruff check .
ruff format --check .
python -m pytest "$@"
