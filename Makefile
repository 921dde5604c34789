# Set-up and main entry points. Everything installs into ./.venv from the project's own files.
# TORCH_SPEC pins the CPU build of torch available on this machine; see README for CUDA installs.
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
EXTRAS ?= cpu,dev,nuscenes,viz,ros
PY := $(VENV)/bin/python
STAMP := $(VENV)/.segood-installed

.PHONY: install sysdeps demo test clean-demo

install: sysdeps $(STAMP)

# System packages (open3d's libusb / Vulkan / EGL, a C++ compiler): installed when root or
# password-less sudo allows, else the exact apt-get command is printed and make stops.
sysdeps:
	@tools/sysdeps.sh $(PYTHON)

$(STAMP): pyproject.toml setup.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -e ".[$(EXTRAS)]"
	$(PY) -m pip install --quiet --no-deps nuscenes-devkit==1.2.0
	touch $(STAMP)

demo: sysdeps $(STAMP)
	$(VENV)/bin/segood demo --out runs/demo

test: sysdeps $(STAMP)
	$(PY) -m pytest -q

clean-demo:
	rm -rf runs/demo
