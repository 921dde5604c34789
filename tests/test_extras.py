"""Every spconv extra of pyproject.toml installs: PyPI is asked (``pip install --dry-run``, with
dependencies, so spconv's own requirement on cumm is checked against the pinned cumm) and must
resolve to exactly the pinned versions. Needs the network to PyPI (CI has it)."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

try:
    import tomllib
except ImportError:  # Python 3.10
    from pip._vendor import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
EXTRAS = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
SPCONV_EXTRAS = {k: v for k, v in EXTRAS.items() if k == "cpu" or re.fullmatch(r"cu\d+", k)}


def resolve(pins: list[str]) -> dict[str, str] | str:
    """name -> version pip would install for ``pins``, or pip's error."""
    res = subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet",
                          "--disable-pip-version-check", "--report", "-", *pins],
                         capture_output=True, text=True, timeout=300)
    if res.returncode != 0:
        return res.stderr.strip()[-1500:]
    return {i["metadata"]["name"].lower(): i["metadata"]["version"] for i in json.loads(res.stdout)["install"]}


@pytest.fixture(scope="module")
def resolved():
    with ThreadPoolExecutor(max_workers=len(SPCONV_EXTRAS)) as pool:
        return dict(zip(SPCONV_EXTRAS, pool.map(resolve, SPCONV_EXTRAS.values())))


def test_every_cuda_extra_pins_spconv_with_its_cumm():
    assert {"cpu", "cu118", "cu120", "cu121", "cu124", "cu126"} <= SPCONV_EXTRAS.keys()
    for name, pins in SPCONV_EXTRAS.items():
        names = sorted(p.split("==")[0] for p in pins)
        suffix = "" if name == "cpu" else f"-{name}"
        assert names == [f"cumm{suffix}", f"spconv{suffix}"] and all("==" in p for p in pins), (name, pins)


@pytest.mark.parametrize("extra", sorted(SPCONV_EXTRAS))
def test_extra_resolves_on_pypi(extra, resolved):
    got = resolved[extra]
    assert isinstance(got, dict), f"extra [{extra}] {SPCONV_EXTRAS[extra]} does not resolve:\n{got}"
    for pin in SPCONV_EXTRAS[extra]:
        name, version = pin.split("==")
        assert got.get(name) == version, (extra, pin, got)


def test_a_pin_that_cannot_resolve_is_caught():
    got = resolve(["spconv-cu120==2.3.6", "cumm-cu120==0.6.3"])  # 2.3.6 needs cumm-cu120<0.5
    assert isinstance(got, str) and "cumm-cu120" in got
