"""Environment checks behind ``segood doctor``: Python, torch and its CUDA, the spconv variant
against torch's CUDA (and its cumm), the Feature Mixing extension, open3d and its system
libraries, rosbags, nuscenes-devkit. Each check says what it found and, for a problem, the exact
fix. No CLI code here (see :mod:`segood.commands.doctor`).

Components: ``core`` (python, torch, spconv, the kernel) is always required; ``viz`` (open3d),
``ros`` (rosbags) and ``nuscenes`` (nuscenes-devkit) are required when installed or asked for;
``gpu`` (a working CUDA torch, spconv and kernel) only when asked for.
"""
from __future__ import annotations

import ctypes
import importlib
import importlib.metadata as md
import re
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

OK, WARN, FAIL, ABSENT = "ok", "warn", "FAIL", "absent"
COMPONENTS = ("core", "viz", "ros", "nuscenes", "gpu")

# shared library -> the Debian package that ships it (what open3d-cpu and its renderer load)
DEBIAN_PACKAGES = {
    "libusb-1.0.so.0": "libusb-1.0-0", "libvulkan.so.1": "libvulkan1", "libEGL.so.1": "libegl1",
    "libGL.so.1": "libgl1", "libgomp.so.1": "libgomp1", "libX11.so.6": "libx11-6",
    "libOpenGL.so.0": "libopengl0", "libGLX.so.0": "libglx0", "libstdc++.so.6": "libstdc++6",
}
RENDER_LIBS = ("libvulkan.so.1", "libEGL.so.1", "libGL.so.1")
VULKAN_ICD_DIRS = ("/usr/share/vulkan/icd.d", "/etc/vulkan/icd.d")


@dataclass
class Check:
    """One line of the report: ``status`` is ok / warn / FAIL / absent (optional, not installed)."""

    component: str
    name: str
    status: str
    detail: str
    fix: str = ""


def apt_fix(packages: list[str]) -> str:
    """The command that installs Debian ``packages``."""
    return "sudo apt-get install -y " + " ".join(packages) + "   (or: make sysdeps)"


def missing_library(message: str) -> str | None:
    """The ``libX.so.N`` named by a loader error (``libusb-1.0.so.0: cannot open shared object file``)."""
    m = re.search(r"(lib[\w.+-]+\.so(?:\.\d+)*): cannot open shared object", message)
    return m.group(1) if m else None


def installed(dist: str) -> str | None:
    """Version of the installed distribution ``dist``, or None."""
    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return None


def _dists(pattern: str) -> dict[str, str]:
    """Installed distributions whose normalised name fully matches ``pattern``: name -> version."""
    found = {}
    for d in md.distributions():
        name = (d.metadata.get("Name") or "").lower().replace("_", "-")
        if re.fullmatch(pattern, name):
            found[name] = d.version
    return found


# --------------------------------------------------------------------------- core


def check_python() -> Check:
    v = sys.version_info
    ok = v >= (3, 10)
    return Check("core", "python", OK if ok else FAIL, f"{sys.version.split()[0]} ({sys.executable})",
                 "" if ok else "segood needs Python >= 3.10: make PYTHON=python3.11 (or newer)")


def gpu_present() -> bool:
    """An NVIDIA GPU is visible to the OS (whatever torch says)."""
    return bool(list(Path("/dev").glob("nvidia[0-9]*"))) or shutil.which("nvidia-smi") is not None


def check_torch() -> Check:
    try:
        import torch
    except Exception as e:  # noqa: BLE001
        return Check("core", "torch", FAIL, f"cannot import: {e}", "make install (or pip install torch)")
    cuda, avail = torch.version.cuda, torch.cuda.is_available()
    detail = f"{torch.__version__}, CUDA build: {cuda or 'none (CPU build)'}"
    if avail:
        detail += f", GPU: {torch.cuda.get_device_name(0)} x{torch.cuda.device_count()}"
        return Check("core", "torch", OK, detail)
    if cuda and gpu_present():
        return Check("core", "torch", WARN, detail + ", but no usable GPU (driver too old or not loaded?)",
                     "check `nvidia-smi`; install a torch build whose CUDA your driver supports")
    if not cuda and gpu_present():
        return Check("core", "torch", WARN, detail + "; this machine has an NVIDIA GPU that torch cannot use",
                     "pip install torch --index-url https://download.pytorch.org/whl/cu121 (match your driver)")
    return Check("core", "torch", OK, detail + ", no GPU")


def _cuda_tag(version: str | None) -> str | None:
    """'12.1' -> 'cu121' (the spconv wheel suffix)."""
    if not version:
        return None
    major, minor = version.split(".")[:2]
    return f"cu{major}{minor}"


def check_spconv_install() -> Check:
    """Exactly one spconv variant, with a matching cumm, and that variant against torch's CUDA."""
    import torch

    spconvs, cumms = _dists(r"spconv(-cu\d+)?"), _dists(r"cumm(-cu\d+)?")
    torch_tag = _cuda_tag(torch.version.cuda)
    want = f'pip install -e ".[{torch_tag}]"' if torch_tag else 'pip install -e ".[cpu]"'
    if not spconvs:
        return Check("core", "spconv", FAIL, "not installed", want)
    if len(spconvs) > 1:
        names = " ".join(sorted(spconvs))
        return Check("core", "spconv", FAIL, f"several variants installed together: {spconvs}",
                     f"pip uninstall -y {names} {' '.join(sorted(cumms))} && {want}")
    (name, version), = spconvs.items()
    variant = name.removeprefix("spconv").lstrip("-") or "cpu"
    detail = f"{name} {version}"
    want_cumm = "cumm" if variant == "cpu" else f"cumm-{variant}"
    if want_cumm not in cumms or len(cumms) > 1:
        return Check("core", "spconv", FAIL, f"{detail} with cumm {cumms or 'missing'} (needs {want_cumm})",
                     f"pip uninstall -y {' '.join(sorted(cumms))}; pip install --force-reinstall {name}=={version}")
    problem = _requirement_mismatch(name, want_cumm, cumms[want_cumm])
    detail += f" + {want_cumm} {cumms[want_cumm]}"
    if problem:
        return Check("core", "spconv", FAIL, f"{detail}: {problem}", f"pip install --force-reinstall {name}=={version}")
    if variant == "cpu" and torch.cuda.is_available():
        return Check("core", "spconv", FAIL, f"{detail}: the CPU build on a machine where torch uses the GPU",
                     f"pip uninstall -y spconv cumm && {want}")
    if variant != "cpu" and not torch_tag:
        return Check("core", "spconv", WARN, f"{detail}: a CUDA build beside a CPU-only torch",
                     'pip uninstall -y spconv-* cumm-* && pip install -e ".[cpu]"')
    if variant != "cpu" and torch_tag and variant[:4] != torch_tag[:4]:
        return Check("core", "spconv", WARN, f"{detail}: built for another CUDA major than torch ({torch_tag})",
                     f"pip uninstall -y {name} {want_cumm} && {want}")
    return Check("core", "spconv", OK, detail)


def _requirement_mismatch(dist: str, dep: str, have: str) -> str:
    """'' when ``dist``'s requirement on ``dep`` admits version ``have``, else what is wrong."""
    try:
        from packaging.requirements import Requirement
        from packaging.version import Version
    except ImportError:
        return ""
    for line in md.requires(dist) or []:
        req = Requirement(line)
        if req.name.lower().replace("_", "-") == dep and not req.specifier.contains(Version(have), prereleases=True):
            return f"{dist} needs {dep}{req.specifier}, installed {have}"
    return ""


def check_spconv_runs() -> Check:
    """A tiny SubMConv3d forward on the CPU (and on the GPU when torch has one)."""
    try:
        import torch

        from segood.models import spconv_guard  # noqa: F401  (patches spconv's CPU traps)
        import spconv.pytorch as spconv
    except Exception as e:  # noqa: BLE001
        return Check("core", "spconv-run", FAIL, f"cannot import spconv.pytorch: {e}",
                     'pip install --force-reinstall -e ".[cpu]" (or the cuXXX extra matching torch)')
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for dev in devices:
        try:
            coords = torch.tensor([[0, 0, 0, 0], [0, 1, 1, 1]], dtype=torch.int32, device=dev)
            x = spconv.SparseConvTensor(torch.ones(2, 4, device=dev), coords, [4, 4, 4], 1)
            conv = spconv.SubMConv3d(4, 8, 3, indice_key="doctor").to(dev)
            with spconv_guard.single_thread():
                out = conv(x).features
            assert out.shape == (2, 8)
        except Exception as e:  # noqa: BLE001
            return Check("core", "spconv-run", FAIL, f"SubMConv3d on {dev} failed: {' '.join(str(e).split())[:200]}",
                         "reinstall the spconv variant matching torch's CUDA (see the spconv line)")
    return Check("core", "spconv-run", OK, f"SubMConv3d forward on {', '.join(devices)}")


def check_feature_mixing() -> list[Check]:
    """The C++ extension: built (or buildable), which CPU path, whether its CUDA kernel is registered."""
    import torch

    from segood.ood.feature_mixing import build as fm_build

    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ok = fm_build.load_extension()
    if not ok:
        reason = fm_build.extension_reason()
        fix = "install a C++ compiler (sudo apt-get install -y g++) and ninja (pip install ninja)"
        if "SEGOOD_FM_EXT" in str(reason):
            fix = "unset SEGOOD_FM_EXT"
        return [Check("core", "feature-mixing", FAIL, f"extension did not build: {reason}", fix)]
    path = torch.ops.segood.cpu_path()
    checks = [Check("core", "feature-mixing", OK,
                    f"built in {fm_build.build_dir(fm_build.want_cuda())}, CPU path: {path}")]
    has_cuda = torch._C._dispatch_has_kernel_for_dispatch_key("segood::feature_mixing", "CUDA")
    if has_cuda:
        checks.append(Check("gpu", "feature-mixing-cuda", OK, "CUDA kernel registered"))
    elif torch.cuda.is_available():
        checks.append(Check("gpu", "feature-mixing-cuda", FAIL,
                            "GPU present but the extension has no CUDA kernel (built without nvcc?)",
                            "install the CUDA toolkit matching torch, set CUDA_HOME, remove "
                            f"{fm_build.build_dir(True)} and re-run"))
    else:
        checks.append(Check("gpu", "feature-mixing-cuda", ABSENT, "no CUDA kernel (no GPU; not needed)"))
    return checks


def check_gpu() -> Check:
    import torch

    if torch.cuda.is_available():
        return Check("gpu", "cuda", OK, f"{torch.cuda.get_device_name(0)}, CUDA {torch.version.cuda}")
    return Check("gpu", "cuda", FAIL if gpu_present() else ABSENT, "torch sees no CUDA device",
                 "install a CUDA build of torch matching your driver, then the matching spconv extra")


# --------------------------------------------------------------------------- optional parts


def _import_check(component: str, name: str, module: str, dist: str, extra: str) -> Check:
    """Import ``module``; 'absent' when ``dist`` is not installed, FAIL (with the fix) when it
    is installed but does not load."""
    version = installed(dist)
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as e:
        if version is None and e.name and e.name.split(".")[0] == module.split(".")[0]:
            return Check(component, name, ABSENT, f"{dist} not installed", f'pip install -e ".[{extra}]"')
        return Check(component, name, FAIL, f"{dist} {version}: cannot import: {e}",
                     f'pip install -e ".[{extra}]"')
    except OSError as e:
        lib = missing_library(str(e))
        fix = apt_fix([DEBIAN_PACKAGES.get(lib, lib)]) if lib else f"reinstall {dist}"
        return Check(component, name, FAIL, f"{dist} {version}: cannot load {lib or ''}: {e}", fix)
    except Exception as e:  # noqa: BLE001
        return Check(component, name, FAIL, f"{dist} {version}: import failed: {e}",
                     f"pip install --force-reinstall {dist}")
    return Check(component, name, OK, f"{dist} {version or getattr(mod, '__version__', '?')}")


def check_open3d() -> list[Check]:
    dist = "open3d-cpu" if installed("open3d-cpu") else "open3d"
    checks = [_import_check("viz", "open3d", "open3d", dist, "viz")]
    if checks[0].status == ABSENT:
        return checks
    missing = []
    for lib in RENDER_LIBS:
        try:
            ctypes.CDLL(lib)
        except OSError:
            missing.append(DEBIAN_PACKAGES[lib])
    if not any(Path(d).glob("*.json") for d in VULKAN_ICD_DIRS if Path(d).is_dir()):
        missing.append("mesa-vulkan-drivers")
    if missing:
        checks.append(Check("viz", "open3d-render", FAIL, f"headless renderer libraries missing: {missing}",
                            apt_fix(missing)))
    else:
        checks.append(Check("viz", "open3d-render", OK, "Vulkan loader + ICD, EGL, GL found (headless PNGs)"))
    return checks


def check_rosbags() -> Check:
    return _import_check("ros", "rosbags", "rosbags.rosbag2", "rosbags", "ros")


def check_nuscenes() -> Check:
    c = _import_check("nuscenes", "nuscenes-devkit", "nuscenes.nuscenes", "nuscenes-devkit", "nuscenes")
    if c.status == ABSENT:
        c.fix = 'pip install -e ".[nuscenes]" && pip install --no-deps nuscenes-devkit==1.2.0'
    return c


# --------------------------------------------------------------------------- the report


def run_checks() -> list[Check]:
    """Every check, in report order."""
    checks = [check_python(), check_torch()]
    if checks[1].status == FAIL:
        return checks
    checks += [check_spconv_install(), check_spconv_runs(), *check_feature_mixing(), check_gpu(),
               *check_open3d(), check_rosbags(), check_nuscenes()]
    return checks


def problems(checks: list[Check], need: set[str]) -> list[Check]:
    """The checks that make something the user asked for unusable: a FAIL of a required component
    (core, anything installed, anything in ``need``) and an absent component in ``need``."""
    return [c for c in checks
            if (c.status == FAIL and (c.component != "gpu" or "gpu" in need))
            or (c.status == ABSENT and c.component in need)]


def format_report(checks: list[Check], bad: list[Check]) -> str:
    """The printed report: one line per check, its fix beneath, and a verdict."""
    lines = []
    for c in checks:
        lines.append(f"  {c.status:<6} {c.name:<20} {c.detail}")
        if c.fix and (c.status in (FAIL, WARN) or c in bad):
            lines.append(f"  {'':<6} {'':<20} fix: {c.fix}")
    if bad:
        lines.append(f"{len(bad)} problem(s): {', '.join(c.name for c in bad)}")
    else:
        lines.append("everything asked for works")
    return "\n".join(lines)


def environment_note() -> str:
    """Which interpreter and which segood the report is about."""
    import segood

    return f"segood {installed('segood') or '?'} from {Path(segood.__file__).parent} (environment {sys.prefix})"
