# napari-dpn: two commands do all the set-up on a fresh machine.
#   make demo   create .venv, install, segment the bundled sample fundus photograph
#   make test   create .venv, install the test tools (and Xvfb when run as root), lint (ruff), type-check (mypy), run the tests
#   make quick  the tests without the slow ones (pytest -m "not slow"): the edit-test loop

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
# torch first: this pin takes the CPU wheel where one lies on disk; elsewhere pip picks the build for the machine.
TORCH  ?= torch==2.13.0
APT_PACKAGES := xvfb libxcb-icccm4 libxcb-keysyms1 libxcb-image0 libxcb-render-util0 libxcb-xinerama0 \
                libxkbcommon-x11-0 libxcb-randr0 libxcb-shape0 libxcb-cursor0 libgl1 libegl1 libdbus-1-3 libfontconfig1

.PHONY: venv demo test quick lint typecheck xvfb clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q "$(TORCH)"
	$(PIP) install -q -e ".[napari,qt,test]"
	touch $@

venv: $(VENV)/.installed

demo: venv
	$(VENV)/bin/napari-dpn demo --out demo-output

xvfb:
	@if [ "$$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then \
		dpkg -s $(APT_PACKAGES) >/dev/null 2>&1 || { apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(APT_PACKAGES) >/dev/null; }; \
	elif command -v Xvfb >/dev/null 2>&1; then :; \
	else \
		echo "make test needs Xvfb for the napari tests: run 'sudo apt-get install -y $(APT_PACKAGES)' (or make test as root)"; exit 1; \
	fi

lint: venv
	$(PY) -m ruff check src tests scripts
	$(PY) -m ruff format --check src tests scripts

typecheck: venv
	$(PY) -m mypy

test: venv xvfb lint typecheck
	$(PY) -m pytest -q

quick: venv xvfb
	$(PY) -m pytest -q -m "not slow"

clean:
	rm -rf $(VENV) demo-output .pytest_cache
