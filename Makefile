# Two entry points do all set-up, idempotently: `make demo` and `make test`.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
APT_PKGS := pkg-config libopencv-dev libturbojpeg0-dev
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
NATIVE_SRC := setup.py CMakeLists.txt $(wildcard csrc/*.cpp csrc/*.hpp)
CMAKE_BUILD := build/cmake
DEMO_OUT ?= demo_out

.PHONY: demo test setup apt pytest ctest bench clean

demo: setup
	$(VENV)/bin/scan-fast demo --out $(DEMO_OUT)

test: setup ctest pytest

setup: $(VENV)/.installed

# FFCV compiles against OpenCV and libjpeg-turbo found through pkg-config.
apt:
	@dpkg -s $(APT_PKGS) >/dev/null 2>&1 || { \
	  $(SUDO) apt-get update && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y $(APT_PKGS); }

$(PY):
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip setuptools wheel

$(VENV)/.deps: requirements.txt | $(PY) apt
	$(PY) -m pip install -r requirements.txt
	touch $@

# Editable install; re-run whenever the C++ engine or the build files change.
$(VENV)/.installed: $(VENV)/.deps $(NATIVE_SRC)
	$(PY) -m pip install --no-build-isolation --no-deps -e .
	touch $@

ctest: setup
	$(VENV)/bin/cmake -S . -B $(CMAKE_BUILD) -DCMAKE_BUILD_TYPE=Release \
	  -DPYTHON_EXECUTABLE=$(abspath $(PY)) -DPython_EXECUTABLE=$(abspath $(PY)) \
	  -Dpybind11_DIR=$$($(PY) -m pybind11 --cmakedir) -DSCAN_FAST_VERSION=ctest >/dev/null
	$(VENV)/bin/cmake --build $(CMAKE_BUILD) --target test_sample_set -j2
	cd $(CMAKE_BUILD) && ../../$(VENV)/bin/ctest --output-on-failure

# Multi-process trainer runs (marked slow: minutes on 2 cores) run with the benchmarks instead.
pytest: setup
	$(PY) -m pytest -q -ra -m "not slow"

bench: setup
	$(PY) bench/bench_mutation.py
	$(PY) bench/bench_loss.py --sizes 1024 4096 16384 --dims 512
	$(PY) bench/bench_loss.py --loss siglip --sizes 1024 4096 16384 --dims 512
	$(PY) bench/bench_loader.py
	$(PY) bench/bench_open.py
	$(PY) bench/kernels_ptxas_report.py --check
	$(PY) bench/bench_scale.py
	$(PY) bench/bench_train_step.py
	$(PY) bench/bench_convert.py
	$(PY) -m pytest -q -ra -m slow

clean:
	rm -rf build $(CMAKE_BUILD) scan_fast/_C*.so *.egg-info
