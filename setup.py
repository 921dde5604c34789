"""Build hook: ship the top-level ``configs/`` and ``cuda_ext/`` inside the wheel as
``segood/_configs`` and ``segood/_cuda_ext`` (see segood/resources.py). Everything else is in
pyproject.toml."""
from __future__ import annotations

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
SHIPPED = {"configs": ("*.yaml",), "cuda_ext": ("*.cpp", "*.cu", "*.h")}


class BuildWithResources(build_py):
    """``build_py`` plus the copies of configs/ and cuda_ext/ into the built package."""

    def run(self) -> None:
        super().run()
        if self.editable_mode:  # an editable install reads them from the checkout
            return
        for name, patterns in SHIPPED.items():
            dest = Path(self.build_lib) / "segood" / f"_{name}"
            shutil.rmtree(dest, ignore_errors=True)
            dest.mkdir(parents=True)
            for pattern in patterns:
                for src in sorted((ROOT / name).glob(pattern)):
                    shutil.copy2(src, dest / src.name)


setup(cmdclass={"build_py": BuildWithResources})
