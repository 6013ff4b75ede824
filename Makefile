# Quick start: `make demo` and `make test`. Both set everything up first.
# The virtual environment is built from Debian's python3, not a pyenv build
# under /root, so that other users (per-user mount tests) can run it too.
PYTHON_BASE ?= /usr/bin/python3
VENV := .venv
PY := $(VENV)/bin/python
# systemd only for systemd-analyze (tests check the unit files), strace for benchmarks,
# dpkg-dev for tools/build-passthrough.sh (apt-get source, dpkg-source); postgresql for
# the tests' throwaway PostgreSQL cluster (tests/pg.py).
SYSTEM_PACKAGES := fuse3 libfuse3-dev pkg-config gcc python3 python3-venv python3-dev rsync attr \
	systemd strace dpkg-dev postgresql

.PHONY: all setup system venv test lint typecheck pytest stress demo bench install clean

all: test

setup: system venv

system:
	@missing=$$(for p in $(SYSTEM_PACKAGES); do \
		dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing system packages:" $$missing; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml tools/build-passthrough.sh patches/pyfuse3-passthrough.patch
	test -x $(PY) || $(PYTHON_BASE) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	tools/build-passthrough.sh $(VENV)  # patched pyfuse3 + libfuse 3.17: docs/passthrough.md
	$(PY) -m pip install -q -e '.[test,postgres]'
	touch $@

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	bash -n mount/install.sh mount/uninstall.sh mount/layout.sh tools/build-passthrough.sh

typecheck: setup
	$(VENV)/bin/mypy

# One line per test file as it runs (3-4 minutes in all), then the ten slowest tests.
pytest: setup
	$(PY) -m pytest --durations=10 --durations-min=1

test: lint typecheck pytest

# The long fault campaigns: thousands of kill -9 trials, more concurrent writers.
# make test runs the same tests with bounded sizes.
STRESS_TRIALS ?= 2000
stress: setup
	BUTLER_KILL_TRIALS=$(STRESS_TRIALS) BUTLER_STRESS=1 $(PY) -m pytest -q -s \
		tests/butler/test_kill.py tests/butler/test_concurrency.py tests/butler/test_faults.py

demo: setup
	$(PY) -m butlerfs.demo demo-work

bench: setup
	$(PY) bench/library.py
	$(PY) bench/mount.py

# System-wide install for admins (mount helper, systemd unit): see docs/admin-guide.md.
PREFIX ?= /opt/butlerfs
install: system
	mount/install.sh --prefix $(PREFIX)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache demo-work
