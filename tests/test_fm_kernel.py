"""Feature Mixing kernel (cuda_ext/, segood.ood.feature_mixing): RNG, selection rule, bit-exactness,
properties, errors.

The C++ extension is built on first use (~1 min on 2 cores, then cached). It is required on the
CPU: if it cannot be built, every test that needs it fails with the build error. Only the CUDA
parts skip, on machines without a GPU / CUDA toolkit.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from segood.ood.feature_mixing import build as fm_build
from segood.ood.feature_mixing.kernel import KernelFeatureMixing, feature_mixing_op, reference_feature_mixing
from segood.ood.feature_mixing.philox import draw_dims, philox4x32_10
from segood.ood.feature_mixing.reference import FeatureMixing

ROOT = Path(__file__).resolve().parents[1]
DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]

# Random123 tests/kat_vectors, "philox4x32 10": counter, key, expected output.
KAT = [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
]


@pytest.fixture(scope="module")
def ext():
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ok = fm_build.load_extension()
    if not ok:
        pytest.fail(f"C++ extension did not build: {fm_build._ext_state.get('reason')} "
                    f"{[str(w.message) for w in caught]}")
    return torch.ops.segood


def _inputs(p, d_c, d_l, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(p, d_c, generator=g, dtype=torch.float64).to(dtype),
            torch.randn(p, d_l, generator=g, dtype=torch.float64).to(dtype),
            torch.rand(p, generator=g) < 0.6)


def _signed(seed):
    return seed - (1 << 64) if seed >= 1 << 63 else seed


# ---------------------------------------------------------------------------------------------
# Philox4x32-10


@pytest.mark.parametrize("counter,key,expected", KAT)
def test_philox_known_answers(counter, key, expected):
    out = philox4x32_10(np.array([counter], dtype=np.uint32), key)
    assert out.dtype == np.uint32 and out.tolist() == [list(expected)]
    out_t = philox4x32_10(torch.tensor([counter], dtype=torch.int64), torch.tensor(key))
    assert out_t.tolist() == [list(expected)]


def test_philox_cpp_matches_python(ext):
    rng = np.random.default_rng(1)
    counters = rng.integers(0, 1 << 32, size=(257, 4), dtype=np.uint64)
    for counter, key, expected in KAT:
        seed = key[0] | key[1] << 32
        got = ext.philox_debug(torch.tensor([counter], dtype=torch.int64), _signed(seed))
        assert got.tolist() == [list(expected)]
    for seed in (0, 1, 0x123456789ABCDEF0, (1 << 64) - 3):
        key = (seed & 0xFFFFFFFF, seed >> 32)
        want = philox4x32_10(counters, key).astype(np.int64)
        got = ext.philox_debug(torch.from_numpy(counters.astype(np.int64)), _signed(seed))
        assert np.array_equal(got.numpy(), want)


# ---------------------------------------------------------------------------------------------
# The selection rule (feature_mixing_math.h), written again here from the spec in plain Python


def _spec_dims(seed, step, point, modality, d, n):
    """dim_k = (walk(pi(k)) + offset) mod d, from DEVELOPERS.md's spec, one int at a time."""
    ctr = [point & 0xFFFFFFFF, point >> 32, step, modality << 31]
    w = [int(v) for v in philox4x32_10(np.array([ctr], dtype=np.uint64), (seed & 0xFFFFFFFF, seed >> 32))[0]]
    bits = (d - 1).bit_length()
    mask, shift = (1 << bits) - 1, max(1, (bits + 1) // 2)
    offset = (w[0] * d) >> 32
    keys = [((w[r + 1] & 0xFFFF) | 1, w[r + 1] >> 16) for r in range(3)]

    def pi(x):
        for a, c in keys:
            x = (a * x + c) & mask
            x ^= x >> shift
        return x

    out = []
    for k in range(n):
        y = pi(k)
        while y >= d:
            y = pi(y)
        out.append((y + offset) % d)
    return out


# (seed, step, point, modality, d, n) -> dims; computed with _spec_dims when the rule was adopted.
DIMS_KAT = [
    ((0, 0, 0, 0, 64, 16), [5, 3, 44, 51, 4, 12, 59, 22, 10, 27, 6, 42, 0, 7, 35, 26]),
    ((987654321, 17, 123456789012, 1, 40, 9), [34, 37, 16, 19, 22, 9, 20, 27, 36]),
    (((1 << 64) - 1, (1 << 32) - 1, (1 << 40) + 3, 0, 5, 5), [1, 0, 2, 3, 4]),
]


@pytest.mark.parametrize("args,expected", DIMS_KAT)
def test_selection_known_answers(args, expected):
    seed, step, point, modality, d, n = args
    assert _spec_dims(*args) == expected
    got = draw_dims(torch.tensor([point]), d, n, seed, step, modality)
    assert got.tolist() == [expected]


@pytest.mark.parametrize("d", [1, 2, 3, 5, 8, 24, 40, 64, 100, 4095, 4096])
def test_selection_reference_and_select_dim_match_spec(ext, d):
    """The torch reference (all rows at once), select_dim (the CUDA kernel's per-lane function,
    through dims_debug) and the spec agree; a full draw (n = d) is a permutation of 0..d-1."""
    n = d if d <= 100 else 100
    rows = torch.tensor([0, 1, 7, (1 << 33) + 5])
    ref = draw_dims(rows, d, n, 2**63 + 11, 99, 1)
    for i, point in enumerate(rows.tolist()):
        want = _spec_dims(2**63 + 11, 99, point, 1, d, n)
        assert ref[i].tolist() == want
        assert ext.dims_debug(_signed(2**63 + 11), 99, point, 1, d, n).tolist() == want
    assert (ref.sort(1).values == torch.arange(d)).all() if n == d else (ref.sort(1).values.diff(1) > 0).all()
    full = draw_dims(torch.arange(50), d, d, 3, 4, 0)
    assert (full.sort(1).values == torch.arange(d)).all()  # every row: a permutation


def test_selection_pairs_are_near_uniform(ext):
    """Not uniform over all N-subsets (a keyed permutation family), but close in what a mix can
    see: pairs of image dims co-occur within 12 % of the uniform rate, and the partner of an image
    dim is uniform over the LiDAR dims (measured: within ~3 % and ~2 % at d = 16, N = 4)."""
    p, d, n = 100_000, 16, 4
    c = torch.zeros(p, d)
    l = torch.arange(1, d + 1, dtype=torch.float32).expand(p, d).contiguous()
    out_c, _ = ext.feature_mixing(c, l, None, n, 21, 3)
    sel = (out_c != 0).float()
    assert (sel.sum(1) == n).all()
    pairs = (sel.T @ sel / p)[torch.triu_indices(d, d, 1).unbind()]
    rate = n * (n - 1) / (d * (d - 1))
    assert ((pairs / rate - 1).abs() < 0.12).all(), pairs / rate
    partner = torch.zeros(d, d)  # [image dim, LiDAR dim]
    rows, dims = out_c.nonzero(as_tuple=True)
    partner.index_put_((dims, out_c[rows, dims].long() - 1), torch.ones(len(rows)), accumulate=True)
    expected = p * n / (d * d)
    assert ((partner / expected - 1).abs() < 0.15).all(), partner / expected


# ---------------------------------------------------------------------------------------------
# Kernel == reference, bit for bit


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("p", [1, 7, 1000])
@pytest.mark.parametrize("dims", [(8, 5), (24, 40)])
def test_kernel_matches_reference(ext, dtype, p, dims):
    d_c, d_l = dims
    c, l, mask = _inputs(p, d_c, d_l, dtype, seed=p)
    for n in (0, 1, 5, min(d_c, d_l)):
        for m in (None, mask):
            for seed, step in ((0, 0), ((1 << 64) - 1, (1 << 32) - 1), (987654321, 17)):
                got = ext.feature_mixing(c, l, m, n, _signed(seed), step)
                want = reference_feature_mixing(c, l, m, n, seed, step)
                assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1]), (n, m is None, seed)


def test_op_wrapper_matches_reference_and_fallback(ext, monkeypatch):
    c, l, mask = _inputs(50, 16, 12)
    got = feature_mixing_op(c, l, mask, 4, 2**63 + 5, 3)
    monkeypatch.setitem(fm_build._ext_state, "ok", False)  # as if the build had failed
    fallback = feature_mixing_op(c, l, mask, 4, 2**63 + 5, 3)
    assert torch.equal(got[0], fallback[0]) and torch.equal(got[1], fallback[1])


def test_into_matches_the_op_and_checks_outputs(ext):
    c, l, mask = _inputs(300, 24, 40, torch.bfloat16, seed=2)
    out_c, out_l = torch.full_like(c, 7), torch.full_like(l, 7)
    ext.feature_mixing_into(c, l, mask, 9, 4, 5, out_c, out_l)
    want = reference_feature_mixing(c, l, mask, 9, 4, 5)
    assert torch.equal(out_c, want[0]) and torch.equal(out_l, want[1])
    with pytest.raises(ValueError, match=r"out_lidar must be a contiguous torch.bfloat16 tensor of shape \[300, 40\]"):
        ext.feature_mixing_into(c, l, mask, 9, 4, 5, out_c, out_l[:, :39])
    with pytest.raises(ValueError, match=r"out_image must be a contiguous"):
        ext.feature_mixing_into(c, l, mask, 9, 4, 5, out_c.float(), out_l)
    with pytest.raises(ValueError, match=r"out_image overlaps an input"):
        ext.feature_mixing_into(c, l, mask, 9, 4, 5, c, out_l)
    with pytest.raises(ValueError, match=r"n_swap must be in"):
        ext.feature_mixing_into(c, l, mask, 25, 4, 5, out_c, out_l)


def test_cpu_kernel_is_built_parallel(ext):
    """Without -fopenmp, at::parallel_for's pragma is dropped and the kernel silently runs on one
    thread (measured 1.9x clone at N = 0 instead of 1.1x): the library must call into OpenMP."""
    libs = [p for p in torch.ops.loaded_libraries if "segood_fm" in Path(p).name]
    assert libs, torch.ops.loaded_libraries
    assert b"GOMP_parallel" in Path(libs[0]).read_bytes(), f"{libs[0]} was built without OpenMP"


def test_stale_torch_build_lock_is_removed_not_waited_on(ext, tmp_path):
    """A build killed mid-way leaves torch's `lock` file; torch's load would then wait forever
    (seen here after an interrupted test run). The cached build is copied so nothing recompiles."""
    import sys

    src = fm_build.build_dir(False)
    dst = tmp_path / "ext"
    shutil.copytree(src, dst / torch.__version__ / "cpu")
    (dst / torch.__version__ / "cpu" / "lock").touch()
    code = ("import warnings, torch; warnings.simplefilter('always')\n"
            "from segood.ood.feature_mixing import build\n"
            "assert build.load_extension(), build.extension_reason()\n")
    run = subprocess.run([sys.executable, "-c", code], env={**os.environ, "SEGOOD_EXT_DIR": str(dst)},
                         capture_output=True, text=True, timeout=240, check=False)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "left by an interrupted extension build" in run.stderr
    assert not (dst / torch.__version__ / "cpu" / "lock").exists()


_SCALAR_CHECK = """
import torch
from segood.ood.feature_mixing import load_extension, reference_feature_mixing
assert load_extension()
print(torch.ops.segood.cpu_path())
g = torch.Generator().manual_seed(1)
for p, d_c, d_l, n in ((1, 5, 7, 5), (130, 24, 40, 9), (67, 8, 8, 8)):
    c, l = torch.randn(p, d_c, generator=g), torch.randn(p, d_l, generator=g)
    mask = torch.rand(p, generator=g) < 0.5
    for m in (None, mask):
        got = torch.ops.segood.feature_mixing(c, l, m, n, -3, 11)
        want = reference_feature_mixing(c, l, m, n, (1 << 64) - 3, 11)
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1]), (p, n, m is None)
"""


def test_scalar_cpu_path_matches_reference(ext):
    """The AVX2 draw path is what the other tests exercise on this machine; SEGOOD_FM_SIMD=0
    selects the portable one (read once per process, hence the subprocess)."""
    import sys

    env = {**os.environ, "SEGOOD_FM_SIMD": "0"}
    run = subprocess.run([sys.executable, "-c", _SCALAR_CHECK], env=env, capture_output=True, text=True,
                         timeout=300, check=False)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.split()[-1] == "scalar"


def test_threads_do_not_change_the_result(ext):
    c, l, mask = _inputs(6000, 8, 8, seed=4)  # grain ~2000 rows: three tasks over two threads
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        many = ext.feature_mixing(c, l, mask, 5, 9, 2)
        torch.set_num_threads(1)
        one = ext.feature_mixing(c, l, mask, 5, 9, 2)
    finally:
        torch.set_num_threads(before)
    want = reference_feature_mixing(c, l, mask, 5, 9, 2)
    for got in (many, one):
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


def test_load_extension_failure_warns_and_falls_back(monkeypatch):
    monkeypatch.setattr(fm_build, "_ext_state", {})
    monkeypatch.setenv("SEGOOD_FM_EXT", "0")
    with pytest.warns(RuntimeWarning, match=r"Feature Mixing extension unavailable \(disabled by "
                                            r"SEGOOD_FM_EXT=0\); using the torch reference"):
        assert fm_build.load_extension() is False
    c, l, _ = _inputs(5, 6, 6)
    out = feature_mixing_op(c, l, None, 2, 1, 1)
    want = reference_feature_mixing(c, l, None, 2, 1, 1)
    assert torch.equal(out[0], want[0])


# ---------------------------------------------------------------------------------------------
# Properties of the mix


@pytest.mark.parametrize("n", [0, 1, 3, 12])
def test_swap_properties(ext, n):
    c, l, mask = _inputs(300, 12, 20, torch.float64, seed=3)
    out_c, out_l = ext.feature_mixing(c, l, mask, n, 11, 5)
    assert torch.equal(out_c[~mask], c[~mask]) and torch.equal(out_l[~mask], l[~mask])
    sel = mask.nonzero().squeeze(1)
    # continuous inputs: every swapped entry differs from the original one, a.s.
    assert ((out_c[sel] != c[sel]).sum(1) == n).all()
    assert ((out_l[sel] != l[sel]).sum(1) == n).all()
    # a permutation of each point's values
    before = torch.cat([c, l], 1).sort(1).values
    after = torch.cat([out_c, out_l], 1).sort(1).values
    assert torch.equal(before, after)
    # every changed image entry holds a LiDAR value of the same point, and vice versa
    for p in sel[:20].tolist():
        changed_c = out_c[p][out_c[p] != c[p]]
        assert torch.isin(changed_c, l[p]).all() and torch.isin(out_l[p][out_l[p] != l[p]], c[p]).all()
    if n == 0:
        assert torch.equal(out_c, c) and torch.equal(out_l, l)


def test_determinism_and_counters(ext):
    c, l, mask = _inputs(200, 16, 16, seed=4)
    a = ext.feature_mixing(c, l, None, 4, 7, 100)
    assert all(torch.equal(x, y) for x, y in zip(a, ext.feature_mixing(c, l, None, 4, 7, 100)))
    for other in (ext.feature_mixing(c, l, None, 4, 7, 101), ext.feature_mixing(c, l, None, 4, 8, 100)):
        assert not torch.equal(a[0], other[0]) and not torch.equal(a[1], other[1])
    # the counter is the row index: masking rows does not change the others' draws
    m = ext.feature_mixing(c, l, mask, 4, 7, 100)
    assert torch.equal(m[0][mask], a[0][mask]) and torch.equal(m[1][mask], a[1][mask])
    # independent sub-streams per modality: the dims for N are a prefix of the dims for N + 1
    changed3 = ext.feature_mixing(c, l, None, 3, 7, 100)[0] != c
    assert (changed3 <= (a[0] != c)).all()


def test_dims_are_uniform(ext):
    p, d, n = 20000, 16, 3
    c, l = torch.zeros(p, d), torch.ones(p, d)
    out_c, out_l = ext.feature_mixing(c, l, None, n, 5, 9)
    for counts in (out_c.sum(0), (1 - out_l).sum(0)):  # how often each dim was swapped
        expected = p * n / d
        assert ((counts - expected).abs() < 5 * expected**0.5).all(), counts


# ---------------------------------------------------------------------------------------------
# Gradients


def test_gradcheck(ext):
    c, l, mask = _inputs(6, 5, 4, torch.float64, seed=6)
    c.requires_grad_(True)
    l.requires_grad_(True)
    for m in (None, mask):
        assert torch.autograd.gradcheck(lambda a, b: ext.feature_mixing(a, b, m, 3, 1, 2), (c, l))
        assert torch.autograd.gradgradcheck(lambda a, b: ext.feature_mixing(a, b, m, 3, 1, 2), (c, l))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_backward_matches_reference(ext, dtype):
    c, l, mask = _inputs(100, 10, 14, dtype, seed=7)
    g_c, g_l, _ = _inputs(100, 10, 14, dtype, seed=8)
    grads = []
    for fn in (feature_mixing_op, reference_feature_mixing):
        a, b = c.clone().requires_grad_(True), l.clone().requires_grad_(True)
        out_c, out_l = fn(a, b, mask, 6, 42, 3)
        torch.autograd.backward((out_c, out_l), (g_c, g_l))
        grads.append((a.grad, b.grad))
    assert torch.equal(grads[0][0], grads[1][0]) and torch.equal(grads[0][1], grads[1][1])
    # only one output used: the other's gradient is zero
    a = c.clone().requires_grad_(True)
    feature_mixing_op(a, l, mask, 6, 42, 3)[0].sum().backward()
    assert a.grad.sum() == (~mask).sum() * 10 + mask.sum() * (10 - 6)


# ---------------------------------------------------------------------------------------------
# Errors: Python checks (feature_mixing_op / reference) and C++ checks (the op called directly)


def _error_cases():
    c, l, mask = _inputs(4, 6, 5)
    return [
        ("n_swap big", (c, l, None, 6), ValueError, r"n_swap must be in \[0, min\(d_c, d_l\)\] = \[0, 5\], got 6"),
        ("n_swap neg", (c, l, None, -1), ValueError, r"n_swap must be in .* got -1"),
        ("points", (c, l[:3], None, 1), ValueError, r"same number of points, got 4 and 3"),
        ("noncontig", (c.t().contiguous().t(), l, None, 1), ValueError, r"feat_image must be contiguous"),
        ("int dtype", (c.long(), l.long(), None, 1), TypeError,
         r"feat_image must be float32, float64, float16 or bfloat16"),
        ("dtype mismatch", (c, l.double(), None, 1), TypeError, r"must have the same dtype"),
        ("1-D", (c[0], l, None, 1), ValueError, r"feat_image must be 2-D"),
        ("mask dtype", (c, l, mask.long(), 1), TypeError, r"mask must be a bool tensor"),
        ("mask shape", (c, l, mask[:3], 1), ValueError, r"mask must have shape \(P,\) = \(4,\)"),
        ("too many dims", (torch.zeros(2, 5000), torch.zeros(2, 4), None, 1), ValueError,
         r"at most 4096"),
    ]


@pytest.mark.parametrize("case", _error_cases(), ids=lambda c: c[0])
def test_errors_python(case):
    _, (c, l, mask, n), exc, pattern = case
    for fn in (feature_mixing_op, reference_feature_mixing):
        with pytest.raises(exc, match=pattern):
            fn(c, l, mask, n, 0, 0)


@pytest.mark.parametrize("case", _error_cases(), ids=lambda c: c[0])
def test_errors_cpp(ext, case):
    _, (c, l, mask, n), exc, pattern = case
    for op in (ext.feature_mixing, ext.feature_mixing_backward):
        pattern_op = pattern if op is ext.feature_mixing else pattern.replace("feat_", "grad_")
        with pytest.raises(exc, match=pattern_op):
            op(c, l, mask, n, 0, 0)


def test_errors_scalars_and_devices(ext):
    c, l, mask = _inputs(4, 6, 5)
    with pytest.raises(ValueError, match=r"step must be in \[0, 2\*\*32\), got -1"):
        feature_mixing_op(c, l, None, 1, 0, -1)
    with pytest.raises(ValueError, match=r"step must be in \[0, 2\*\*32\)"):
        ext.feature_mixing(c, l, None, 1, 0, 1 << 32)
    with pytest.raises(ValueError, match=r"seed must be in \[0, 2\*\*64\), got -1"):
        feature_mixing_op(c, l, None, 1, -1, 0)
    with pytest.raises(TypeError, match=r"n_swap must be an int, got float"):
        feature_mixing_op(c, l, None, 1.0, 0, 0)
    with pytest.raises(ValueError, match=r"feat_image and feat_lidar must be on the same device, got cpu and meta"):
        feature_mixing_op(c, l.to("meta"), None, 1, 0, 0)
    with pytest.raises(ValueError, match=r"mask must be on the features' device cpu, got meta"):
        feature_mixing_op(c, l, mask.to("meta"), 1, 0, 0)


# ---------------------------------------------------------------------------------------------
# The trainer-facing class


def test_kernel_feature_mixing_class(ext):
    p = 500
    c, l, _ = _inputs(p, 16, 8, seed=9)
    g = torch.Generator().manual_seed(10)
    batch = {"visible": torch.rand(p, generator=g) < 0.7,
             "target": torch.randint(-1, 5, (p,), generator=g)}
    synth = KernelFeatureMixing(n_swap=3, seed=5, max_points=200)
    c.requires_grad_(True)
    index, mixed_c, mixed_l = synth(c, l, batch, step=4)
    ref_index = FeatureMixing(3, seed=5, max_points=200).select(batch, FeatureMixing(3, 5).generator(4))
    assert torch.equal(index, ref_index) and len(index) == 200
    assert ((batch["visible"] & (batch["target"] >= 0))[index]).all()
    mask = torch.zeros(p, dtype=torch.bool)
    mask[index] = True
    want_c, want_l = reference_feature_mixing(c.detach(), l, mask, 3, 5, 4)
    assert torch.equal(mixed_c, want_c[index]) and torch.equal(mixed_l, want_l[index])
    mixed_c.sum().backward()
    assert c.grad[index].sum() == 200 * (16 - 3) and c.grad.sum() == c.grad[index].sum()
    again = synth(c.detach(), l, batch, step=4)
    assert torch.equal(again[1], mixed_c) and not torch.equal(synth(c.detach(), l, batch, 5)[1], mixed_c)
    with pytest.raises(ValueError, match="one row per point"):
        synth(c[:10], l[:10], batch, 0)


# ---------------------------------------------------------------------------------------------
# nvcc: the shared header inside CUDA kernels (no GPU needed)


def test_cuda_compile_check():
    """The shared header (sm_80, sm_90) and feature_mixing_cuda.cu itself (sm_90, against this
    torch's headers) compile with nvcc; ~1-2 min on 2 cores, most of it the torch headers."""
    import sys

    nvcc = shutil.which("nvcc") or ("/usr/local/cuda/bin/nvcc" if os.access("/usr/local/cuda/bin/nvcc", os.X_OK)
                                    else None)
    if nvcc is None:
        pytest.skip("GPU-only: nvcc (CUDA toolkit) not found in PATH or /usr/local/cuda/bin")
    run = subprocess.run(["bash", str(ROOT / "tools" / "check_cuda_compile.sh"), "--ext"], capture_output=True,
                         text=True, env={**os.environ, "NVCC": nvcc, "PYTHON": sys.executable}, timeout=600)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "feature_mixing_cuda.cu sm_90 ok" in run.stdout


def test_cuda_kernel_matches_the_reference(ext):
    if not torch.cuda.is_available():
        pytest.skip("GPU-only: no CUDA device (torch.cuda.is_available() is False)")
    assert fm_build.has_kernel(torch.device("cuda")), "extension built without its CUDA kernel"
    c, l, mask = _inputs(3000, 96, 64)
    want = reference_feature_mixing(c, l, mask, 8, 7, 3)
    got = ext.feature_mixing(c.cuda(), l.cuda(), mask.cuda(), 8, 7, 3)
    assert all(torch.equal(w, g.cpu()) for w, g in zip(want, got))
