#!/usr/bin/env bash
# System packages segood needs beyond pip (run by `make install`, hence by `make demo` / `make test`):
#   libusb-1.0-0                                  open3d-cpu links libusb-1.0.so.0
#   libvulkan1 mesa-vulkan-drivers libegl1 libgl1 open3d's headless renderer (no display, no GPU)
#   xvfb libxtst6                                 the viewer-window tests: a virtual X display, keys through XTest
#   g++                                           the Feature Mixing C++ extension (built on first use)
#   python3-venv                                  `python3 -m venv` with Debian's own python3
# Idempotent and fast when nothing is missing (one dpkg query). Installs what is missing when it
# can (root, or password-less sudo, and apt-get); otherwise prints the exact command and fails.
# Usage: tools/sysdeps.sh [PYTHON]      (PYTHON: the interpreter the venv is made from)
set -euo pipefail
PYTHON=${1:-python3}
pkgs=(libusb-1.0-0 libvulkan1 mesa-vulkan-drivers libegl1 libgl1 xvfb libxtst6)
command -v c++ >/dev/null 2>&1 || pkgs+=(g++)
"$PYTHON" -c "import ensurepip, venv" >/dev/null 2>&1 || pkgs+=(python3-venv)

if ! command -v dpkg-query >/dev/null 2>&1; then
  # Not Debian: check the shared libraries themselves, say what is missing.
  missing=""
  for lib in libusb-1.0.so.0 libvulkan.so.1 libEGL.so.1 libGL.so.1; do
    ldconfig -p 2>/dev/null | grep -q "$lib" || missing="$missing $lib"
  done
  command -v c++ >/dev/null 2>&1 || missing="$missing c++-compiler"
  if [ -n "$missing" ]; then
    echo "segood: missing system libraries:$missing (install them with your package manager:" \
         "libusb 1.0, Vulkan loader + Mesa Vulkan drivers, EGL, GL, a C++ compiler)" >&2
    exit 1
  fi
  exit 0
fi

need=()
for p in "${pkgs[@]}"; do
  [ "$(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null)" = installed ] || need+=("$p")
done
[ ${#need[@]} -eq 0 ] && exit 0

cmd="apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y ${need[*]}"
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  sudo=""
elif command -v sudo >/dev/null && sudo -n true 2>/dev/null && command -v apt-get >/dev/null; then
  sudo="sudo"
else
  echo "segood: missing system packages: ${need[*]}" >&2
  echo "segood: run this as root, then re-run make:" >&2
  echo "    sudo sh -c '$cmd'" >&2
  exit 1
fi
echo "segood: installing system packages: ${need[*]}"
$sudo sh -c "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq ${need[*]} >/dev/null"
