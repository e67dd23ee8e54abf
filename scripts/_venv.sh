# Shared by scripts/test and scripts/demo: pick the Python to use, installing the project first.
#
# Uses the active virtual environment, or creates .venv in the repository; installs the project
# with the extras given ("dev" when none is named; "" for the runtime alone), skipped when
# setup.cfg has not changed since the last install with those extras. Sets $py.
venv_python() {
    local extras=${1-dev}
    if [ -n "${VIRTUAL_ENV:-}" ]; then
        py=python
    else
        [ -x .venv/bin/python ] || python3 -m venv .venv
        py=.venv/bin/python
    fi
    local stamp want
    stamp="$("$py" -c 'import sys; print(sys.prefix)')/.taskfleet-install-stamp-${extras:-runtime}"
    want="$(cat setup.cfg pyproject.toml | sha256sum | cut -d' ' -f1)"
    if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
        "$py" -m pip install --quiet --disable-pip-version-check -e ".${extras:+[$extras]}"
        echo "$want" > "$stamp"
    fi
}
