"""Tests for the pure-torch sparse backend (segood.models.sparse_torch) and the backend switch.

The torch backend is checked against a dense ``conv3d`` / ``conv_transpose3d`` and against the
real spconv 2.3.8 (outputs and gradients), with 2 torch threads set globally.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from segood.models import build_model, sparse_torch
from segood.models.lidar_unet import LidarBranch
from segood.models.sparse_backend import resolve_backend, sparse_ops
from test_models import SMALL_CFG, _at, _densify, _random_sparse, make_batch, num_threads

import spconv.pytorch as spconv

REPO = Path(__file__).resolve().parent.parent
SHAPE, BS = [21, 24, 27], 2  # odd sizes: the last plane of z and x is dropped by a k = s = 2 conv


def _key(coords: torch.Tensor) -> torch.Tensor:
    """Sort key of [b, z, y, x] rows (spconv and torch order strided outputs differently)."""
    c = coords.long()
    return ((c[:, 0] * 1000 + c[:, 1]) * 1000 + c[:, 2]) * 1000 + c[:, 3]


CONVS = {  # name -> (module class name, args, kwargs); "inverse" runs after the paired down conv
    "subm": ("SubMConv3d", (8, 12, 3), dict(padding=1, bias=True, indice_key="s")),
    "strided_k2": ("SparseConv3d", (8, 12, 2), dict(stride=2, bias=False, indice_key="d2")),
    "strided_k3": ("SparseConv3d", (8, 12, 3), dict(stride=2, padding=1, bias=True, indice_key="d3")),
    "inverse": ("SparseInverseConv3d", (8, 12, 2), dict(bias=False, indice_key="down")),
}


def _run_conv(ops, kind: str, state: dict | None, coords, feats):
    """One conv of ``kind`` from backend module ``ops``; returns (out sorted by coords, sorted coords,
    grad wrt feats, conv, state dicts). The loss weights outputs by a function of their coordinates,
    so that both backends' differently ordered outputs get the same gradient."""
    torch.manual_seed(0)
    name, args, kwargs = CONVS[kind]
    down = ops.SparseConv3d(8, 8, 2, stride=2, bias=False, indice_key="down")
    conv = getattr(ops, name)(*args, **kwargs)
    if state is not None:
        conv.load_state_dict(state["conv"])
        down.load_state_dict(state["down"])
    f = feats.clone().requires_grad_(True)
    x = ops.SparseConvTensor(f, coords, SHAPE, BS)
    if kind == "inverse":
        x = down(x)
    y = conv(x)
    w = torch.sin(_key(y.indices).double()).float()[:, None] * torch.arange(1.0, y.features.shape[1] + 1)
    (y.features * w).sum().backward()
    order = torch.argsort(_key(y.indices))
    return {"out": y.features[order].detach(), "coords": y.indices[order].long(), "grad": f.grad,
            "conv": conv, "weight": w[order], "shape": list(y.spatial_shape),
            "state": {"conv": conv.state_dict(), "down": down.state_dict()}}


@pytest.mark.parametrize("kind", list(CONVS))
def test_torch_backend_matches_spconv(kind):
    coords, feats = _random_sparse(1, tuple(SHAPE), BS)
    with num_threads(2):
        from segood.models.spconv_guard import single_thread

        with single_thread():
            ref = _run_conv(spconv, kind, None, coords, feats)
        got = _run_conv(sparse_torch, kind, ref["state"], coords, feats)
    assert got["shape"] == ref["shape"]
    assert torch.equal(got["coords"], ref["coords"])
    torch.testing.assert_close(got["out"], ref["out"], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got["grad"], ref["grad"], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(got["conv"].weight.grad, ref["conv"].weight.grad, atol=1e-3, rtol=1e-4)
    if got["conv"].bias is not None:
        torch.testing.assert_close(got["conv"].bias.grad, ref["conv"].bias.grad, atol=1e-3, rtol=1e-4)


def _dense_reference(kind: str, conv, feats, coords, out_coords, down=None):
    """Dense conv3d (or conv_transpose3d for the inverse) on the same weights, read at out_coords."""
    w = conv.weight.detach().clone().requires_grad_(True)  # (out, kD, kH, kW, in)
    f = feats.clone().requires_grad_(True)
    dense = _densify(f, coords, SHAPE, BS)
    name, args, kwargs = CONVS[kind]
    if kind == "inverse":
        w_down = down.weight.detach().permute(0, 4, 1, 2, 3)
        coarse = F.conv3d(dense, w_down, stride=2)  # every active coarse site is non-zero-capable
        out = F.conv_transpose3d(coarse, w.permute(4, 0, 1, 2, 3), stride=2)
        out = F.pad(out, [0, SHAPE[2] - out.shape[4], 0, SHAPE[1] - out.shape[3], 0, SHAPE[0] - out.shape[2]])
    else:
        out = F.conv3d(dense, w.permute(0, 4, 1, 2, 3), stride=kwargs.get("stride", 1),
                       padding=kwargs.get("padding", 0))
    if conv.bias is not None:
        out = out + conv.bias.detach().view(1, -1, 1, 1, 1)
    return _at(out, out_coords), f, w


@pytest.mark.parametrize("kind", list(CONVS))
def test_torch_backend_matches_dense_conv(kind):
    coords, feats = _random_sparse(2, tuple(SHAPE), BS)
    with num_threads(2):
        got = _run_conv(sparse_torch, kind, None, coords, feats)
        down = None
        if kind == "inverse":  # the dense path needs the down conv the sparse one used
            torch.manual_seed(0)
            down = sparse_torch.SparseConv3d(8, 8, 2, stride=2, bias=False, indice_key="down")
        ref, f, w = _dense_reference(kind, got["conv"], feats, coords, got["coords"], down)
        (ref * got["weight"]).sum().backward()
    torch.testing.assert_close(got["out"], ref.detach(), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(got["grad"], f.grad, atol=1e-4, rtol=1e-4)  # inverse: through the down conv
    torch.testing.assert_close(got["conv"].weight.grad, w.grad, atol=1e-3, rtol=1e-4)
    if kind.startswith("strided"):  # every site any input reaches is an output, and no other
        cover = F.conv3d(_densify(torch.ones(len(coords), 1), coords, SHAPE, BS),
                         torch.ones(1, 1, *(3 if kind == "strided_k3" else 2,) * 3),
                         stride=2, padding=1 if kind == "strided_k3" else 0)
        assert int((cover > 0).sum()) == len(got["coords"])


def test_inverse_conv_zeroes_voxels_no_window_reached():
    # k = s = 2 on an odd axis: voxels on the last plane are in no window (spconv drops them too)
    coords, feats = _random_sparse(3, tuple(SHAPE), BS)
    got = _run_conv(sparse_torch, "inverse", None, coords, feats)
    last = (got["coords"][:, 1] == SHAPE[0] - 1) | (got["coords"][:, 3] == SHAPE[2] - 1)
    assert last.any() and (~last).any()
    assert torch.all(got["out"][last] == 0) and got["out"][~last].abs().sum() > 0


def _lidar_run(model: LidarBranch, batch: dict) -> tuple[torch.Tensor, list[torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    out = model(batch)
    (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
    return out.detach(), [p.grad.clone() for p in model.parameters()]


def test_lidar_branch_torch_equals_spconv():
    batch = make_batch(2000)
    torch.manual_seed(0)
    ref_model = LidarBranch(7, [8, 16, 24], 16, point_hidden=8, skip="add", backend="spconv")
    model = LidarBranch(7, [8, 16, 24], 16, point_hidden=8, skip="add", backend="torch")
    assert ref_model.backend == "spconv" and model.backend == "torch"
    ref_state = ref_model.state_dict()
    assert {k: v.shape for k, v in model.state_dict().items()} == {k: v.shape for k, v in ref_state.items()}
    model.load_state_dict(ref_state)
    with num_threads(2):
        ref_out, ref_grads = _lidar_run(ref_model, batch)
        out, grads = _lidar_run(model, batch)
    for a, b in zip([out, *grads], [ref_out, *ref_grads]):
        assert (a - b).abs().max() <= 1e-4 * b.abs().max()


def test_torch_backend_is_deterministic_with_two_threads():
    batch = make_batch(2000)
    torch.manual_seed(0)
    model = LidarBranch(7, [8, 16, 24], 16, point_hidden=8, skip="add", backend="torch")
    with num_threads(2):
        first = _lidar_run(model, batch)
        second = _lidar_run(model, batch)
    for a, b in zip([first[0], *first[1]], [second[0], *second[1]]):
        assert torch.equal(a, b)


def test_kernel_maps_are_built_once_per_level(monkeypatch):
    calls = {"subm": 0, "strided": 0}
    subm, strided = sparse_torch.submanifold_map, sparse_torch.strided_map

    def count(name, fn):
        def wrapped(*a, **k):
            calls[name] += 1
            return fn(*a, **k)
        return wrapped

    monkeypatch.setattr(sparse_torch, "submanifold_map", count("subm", subm))
    monkeypatch.setattr(sparse_torch, "strided_map", count("strided", strided))
    model = LidarBranch(7, [8, 16, 24], 16, point_hidden=8, skip="add", backend="torch")
    model(make_batch(500))
    assert calls == {"subm": 3, "strided": 2}  # 5 SubM convs over 3 levels, 2 down convs


def test_sparse_conv_under_bf16_autocast():
    coords, feats = _random_sparse(4, tuple(SHAPE), BS)
    conv = sparse_torch.SubMConv3d(8, 12, 3, padding=1, bias=True, indice_key="s")
    ref = conv(sparse_torch.SparseConvTensor(feats, coords, SHAPE, BS)).features
    f = feats.clone().requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = conv(sparse_torch.SparseConvTensor(f, coords, SHAPE, BS)).features
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), ref.detach(), atol=5e-2, rtol=5e-2)
    out.float().sum().backward()
    assert f.grad.dtype == torch.float32 and conv.weight.grad.dtype == torch.float32
    assert f.grad.abs().sum() > 0


# ----------------------------------------------------------------- checkpoints across backends


def _train_tiny(cfg: dict, steps: int = 3) -> dict:
    """A few AdamW steps of the small segmenter; returns its state dict."""
    torch.manual_seed(0)
    model = build_model(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for step in range(steps):
        batch = make_batch(800, seed=step)
        out = model(batch)
        loss = F.cross_entropy(out["logits"], batch["target"], ignore_index=-1)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.state_dict()


@pytest.mark.parametrize("trained, loaded", [("spconv", "torch"), ("torch", "spconv")])
def test_checkpoint_moves_between_backends(tmp_path, trained, loaded):
    def cfg(backend):
        return {**SMALL_CFG, "lidar": {**SMALL_CFG["lidar"], "backend": backend}}

    path = tmp_path / f"{trained}.pt"
    torch.save(_train_tiny(cfg(trained)), path)
    batch = make_batch(1000, seed=7)
    preds = {}
    for backend in (trained, loaded):
        model = build_model(cfg(backend))
        assert model.lidar.backend == backend
        model.load_state_dict(torch.load(path, weights_only=True))
        with torch.no_grad():
            preds[backend] = model.eval()(batch)["logits"]
    torch.testing.assert_close(preds[loaded], preds[trained], atol=1e-4, rtol=1e-4)
    assert torch.equal(preds[loaded].argmax(1), preds[trained].argmax(1))


# ----------------------------------------------------------------- selection


def test_backend_selection_and_errors():
    assert resolve_backend("torch") == "torch"
    assert resolve_backend("spconv") == "spconv"
    assert resolve_backend("auto") == "spconv"  # CPU with spconv installed; see sparse_backend's rule
    assert sparse_ops("torch") is sparse_torch
    with pytest.raises(ValueError, match="model.lidar.backend"):
        resolve_backend("minkowski")
    with pytest.raises(ValueError, match="lidar.backend"):
        build_model({"lidar": {"backend": "cuda"}})


BLOCKED = textwrap.dedent("""
    # spconv is installed here: a meta-path finder makes `import spconv` fail, as on a machine
    # without it (the GPU check machine)
    import importlib.abc, sys
    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            if name == "spconv" or name.startswith("spconv."):
                raise ImportError(f"No module named {name!r} (blocked by the test)")
            return None
    sys.meta_path.insert(0, Block())
    import torch
    from segood.models import build_model
    cfg = {"num_classes": 18, "lidar": {"channels": [8, 16], "out_channels": 16, "point_hidden": 8},
           "image": {"width_scale": 0.25, "out_channels": 16}, "fusion": {"hidden": 32}}
    model = build_model(cfg)
    assert model.lidar.backend == "torch", model.lidar.backend
    n = 2000
    g = torch.Generator().manual_seed(0)
    xyz = torch.rand(n, 3, generator=g) * 10
    grid = torch.floor(xyz / 0.2).long()
    key = torch.cat([torch.zeros(n, 1, dtype=torch.long), grid[:, [2, 1, 0]]], 1)
    coords, p2v = torch.unique(key, dim=0, return_inverse=True)
    batch = {"points": torch.cat([xyz, torch.rand(n, 1, generator=g)], 1), "voxel_coords": coords.int(),
             "voxel_feats": torch.randn(len(coords), 7, generator=g), "point2voxel": p2v,
             "spatial_shape": (coords[:, 1:].max(0).values + 1).tolist(), "batch_size": 1,
             "batch_idx": torch.zeros(n, dtype=torch.long)}
    out = model(batch)
    out["logits"].sum().backward()
    assert out["logits"].shape == (n, 18) and torch.isfinite(out["logits"]).all()
    assert not any(m == "spconv" or m.startswith("spconv.") for m in sys.modules)
    try:
        build_model({**cfg, "lidar": {**cfg["lidar"], "backend": "spconv"}})
    except RuntimeError as err:
        assert "model.lidar.backend" in str(err) and "blocked by the test" in str(err), err
    else:
        raise AssertionError("backend spconv without spconv must fail")
    print("OK")
""")


def test_auto_backend_runs_without_spconv():
    res = subprocess.run([sys.executable, "-c", BLOCKED], capture_output=True, text=True, cwd=REPO,
                         env={**__import__("os").environ, "PYTHONPATH": str(REPO)}, timeout=300)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip().endswith("OK")
