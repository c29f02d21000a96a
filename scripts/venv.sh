# Sourced by demo.sh and test.sh: make .venv in the checkout if needed and install dr_exp
# into it, editable, with the extras named in $1; then put .venv/bin first on PATH.
install_dr_exp() {
    local python="${PYTHON:-python3}"
    [ -x .venv/bin/python ] || "$python" -m venv .venv
    .venv/bin/python -m pip install -q --upgrade pip
    .venv/bin/python -m pip install -q -e ".[$1]"
    # Byte-compile now: under PYTHONDONTWRITEBYTECODE (common in containers) an editable
    # install would otherwise recompile every module at every CLI, worker and job start.
    .venv/bin/python -m compileall -q dr_exp hydra_plugins >/dev/null
    export PATH="$PWD/.venv/bin:$PATH"
}
