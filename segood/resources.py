"""Where segood's data files live, in a source checkout and in an installed wheel.

The repository keeps ``configs/`` and ``cuda_ext/`` at its top level; a built wheel ships them
inside the package as ``segood/_configs`` and ``segood/_cuda_ext`` (copied by the build hook in
``setup.py``). Code asks :func:`resource_dir` and never builds these paths itself.
"""
from __future__ import annotations

from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
CHECKOUT_DIR = PACKAGE_DIR.parent
RESOURCES = ("configs", "cuda_ext")


def in_checkout() -> bool:
    """segood runs from its source tree (editable install or PYTHONPATH), not from a wheel."""
    return (CHECKOUT_DIR / "pyproject.toml").is_file() and (CHECKOUT_DIR / "configs").is_dir()


def resource_dir(name: str) -> Path:
    """The ``configs`` or ``cuda_ext`` folder: the checkout's top-level one, else the packaged copy."""
    if name not in RESOURCES:
        raise ValueError(f"unknown resource '{name}', expected one of {RESOURCES}")
    if in_checkout():
        return CHECKOUT_DIR / name
    packaged = PACKAGE_DIR / f"_{name}"
    if not packaged.is_dir():
        raise FileNotFoundError(f"{packaged}: segood's {name} are missing from this install (a broken wheel?); "
                                "reinstall segood")
    return packaged


def base_dir() -> Path:
    """What relative data paths in configs are resolved against: the repository root in a
    checkout, else the current directory."""
    return CHECKOUT_DIR if in_checkout() else Path.cwd()
