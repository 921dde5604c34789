"""Tests for segood.models: spconv CPU guards, LiDAR U-Net, image branch, segmenter.

The torch sparse backend and the backend switch: tests/test_sparse_torch.py."""

from __future__ import annotations

import contextlib

import pytest
import torch
import torch.nn.functional as F

from segood.models import build_model
from segood.models.image_net import (
    ImageBranch,
    ResNetEncoder,
    load_pretrained,
    sample_points,
    upsample_to,
)
from segood.models.lidar_unet import LidarBranch
from segood.models.spconv_guard import run_sparse, single_thread

import spconv.pytorch as spconv

SMALL_CFG = {
    "num_classes": 18,
    "lidar": {"in_channels": 7, "channels": [8, 16, 24], "out_channels": 16, "point_hidden": 8},
    "image": {"depth": 18, "out_channels": 16, "pretrained": None, "width_scale": 0.25},
    "fusion": {"hidden": 32},
}


@contextlib.contextmanager
def num_threads(n: int):
    """Set torch's global thread count for a block (the CPU race needs >= 2)."""
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def make_batch(n_per_scan: int = 3000, batch_size: int = 2, hw=(96, 320), seed: int = 0,
               invisible: bool = True) -> dict:
    """Random batch following segood.data.batch.Batch (voxel size 0.2 m, unique voxels)."""
    g = torch.Generator().manual_seed(seed)
    h, w = hw
    n = n_per_scan * batch_size
    xyz = torch.rand(n, 3, generator=g) * torch.tensor([20.0, 20.0, 3.0]) - torch.tensor([10.0, 10.0, 2.0])
    points = torch.cat([xyz, torch.rand(n, 1, generator=g)], 1)
    batch_idx = torch.arange(batch_size).repeat_interleave(n_per_scan)
    grid = torch.floor(xyz / 0.2).long()
    grid -= grid.min(0).values
    key = torch.cat([batch_idx[:, None], grid[:, [2, 1, 0]]], 1)  # [b, z, y, x]
    coords, p2v = torch.unique(key, dim=0, return_inverse=True)
    counts = torch.zeros(len(coords)).index_add_(0, p2v, torch.ones(n))
    mean = torch.zeros(len(coords), 4).index_add_(0, p2v, points) / counts[:, None]
    centre = (coords[:, [3, 2, 1]].float() + 0.5) * 0.2
    feats = torch.cat([mean, mean[:, :3] - centre], 1)
    visible = torch.rand(n, generator=g) < (0.6 if invisible else 2.0)
    uv = torch.zeros(n, 2)
    uv[visible] = torch.rand(int(visible.sum()), 2, generator=g) * torch.tensor([w - 1.0, h - 1.0])
    target = torch.randint(-1, 18, (n,), generator=g)
    return {
        "points": points,
        "batch_idx": batch_idx,
        "voxel_coords": coords.int(),
        "voxel_feats": feats,
        "point2voxel": p2v,
        "spatial_shape": (coords[:, 1:].max(0).values + 1).tolist(),
        "batch_size": batch_size,
        "images": torch.randn(batch_size, 3, h, w, generator=g),
        "pixel_uv": uv,
        "visible": visible,
        "target": target,
        "ood_target": (target == -1).long(),
    }


# ----------------------------------------------------------------- spconv vs dense

def _random_sparse(seed: int, shape, batch_size: int = 2, n: int = 3000, c: int = 8):
    """Random unique active voxels [b, z, y, x] and features."""
    g = torch.Generator().manual_seed(seed)
    b = torch.randint(0, batch_size, (n, 1), generator=g)
    zyx = torch.stack([torch.randint(0, s, (n,), generator=g) for s in shape], 1)
    coords = torch.unique(torch.cat([b, zyx], 1), dim=0).int()
    feats = torch.randn(len(coords), c, generator=g)
    return coords, feats


def _densify(feats: torch.Tensor, coords: torch.Tensor, shape, batch_size: int) -> torch.Tensor:
    """(V, C) at coords -> dense (B, C, Z, Y, X), differentiable."""
    dense = feats.new_zeros(batch_size, *shape, feats.shape[1])
    c = coords.long()
    dense = dense.index_put((c[:, 0], c[:, 1], c[:, 2], c[:, 3]), feats)
    return dense.permute(0, 4, 1, 2, 3)


def _at(dense: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
    """Dense (B, C, Z, Y, X) read at coords -> (V, C)."""
    c = coords.long()
    return dense.permute(0, 2, 3, 4, 1)[c[:, 0], c[:, 1], c[:, 2], c[:, 3]]


@pytest.mark.parametrize("kind", ["subm", "strided"])
def test_spconv_matches_dense_conv3d_with_two_threads(kind):
    # big enough that the unguarded CPU race shows up reliably (~3k voxels),
    # sparse enough that some strided output sites stay inactive
    shape, bs = [20, 24, 28], 2
    coords, feats = _random_sparse(1, tuple(shape), bs)
    torch.manual_seed(0)
    if kind == "subm":
        conv = spconv.SubMConv3d(8, 12, 3, padding=1, bias=True, indice_key="t")
        stride = 1
    else:
        conv = spconv.SparseConv3d(8, 12, 3, stride=2, padding=1, bias=True, indice_key="t")
        stride = 2
    # spconv 2.x stores weights as (out, kD, kH, kW, in)
    assert tuple(conv.weight.shape) == (12, 3, 3, 3, 8)
    feats_s = feats.clone().requires_grad_(True)
    out_sp = {}

    def fn(f):
        out_sp["t"] = conv(spconv.SparseConvTensor(f, coords, shape, bs))
        return out_sp["t"].features

    with num_threads(2):
        out = run_sparse(fn, feats_s, list(conv.parameters()))
        out_coords = out_sp["t"].indices
        weight_r = torch.randn(out.shape, generator=torch.Generator().manual_seed(3))
        (out * weight_r).sum().backward()
        assert torch.get_num_threads() == 2  # restored after forward and backward

    w_dense = conv.weight.detach().permute(0, 4, 1, 2, 3).clone().requires_grad_(True)
    b_dense = conv.bias.detach().clone().requires_grad_(True)
    feats_d = feats.clone().requires_grad_(True)
    dense = F.conv3d(_densify(feats_d, coords, shape, bs), w_dense, b_dense, stride=stride, padding=1)
    ref = _at(dense, out_coords)
    (ref * weight_r).sum().backward()

    torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(feats_s.grad, feats_d.grad, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(conv.weight.grad, w_dense.grad.permute(0, 2, 3, 4, 1), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(conv.bias.grad, b_dense.grad, atol=1e-4, rtol=1e-4)
    if kind == "strided":  # every non-zero dense output site is an active spconv output
        active = torch.zeros(dense.shape[0], *dense.shape[2:], dtype=torch.bool)
        c = out_coords.long()
        active[c[:, 0], c[:, 1], c[:, 2], c[:, 3]] = True
        no_bias = (dense - b_dense.view(1, -1, 1, 1, 1)).detach()
        assert (~active).any()
        assert no_bias.permute(0, 2, 3, 4, 1)[~active].abs().max() < 1e-6


def test_single_thread_restores_count():
    with num_threads(2):
        with single_thread():
            assert torch.get_num_threads() == 1
        assert torch.get_num_threads() == 2


def _lidar_grads(model: LidarBranch, batch: dict) -> tuple[torch.Tensor, list[torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    out = model(batch)
    (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
    return out.detach(), [p.grad.clone() for p in model.parameters()]


@pytest.mark.parametrize("backend", ["spconv", "torch"])
def test_lidar_gradients_two_threads_equal_single_thread(backend):
    batch = make_batch(2000)
    torch.manual_seed(0)
    model = LidarBranch(7, [8, 16, 24], 16, point_hidden=8, skip="add", backend=backend)
    assert model.backend == backend
    with num_threads(2):
        out2, grads2 = _lidar_grads(model, batch)
    with num_threads(1):
        out1, grads1 = _lidar_grads(model, batch)
    # The non-sparse layers (point MLPs, BN) legitimately run with 2 threads and
    # sum in another order: allow float32 noise relative to each tensor's scale.
    # The spconv race, unguarded, gives errors of several percent.
    for a, b in zip([out2, *grads2], [out1, *grads1]):
        assert (a - b).abs().max() <= 1e-4 * b.abs().max()


# ----------------------------------------------------------------- segmenter

def _loss(out: dict, batch: dict) -> torch.Tensor:
    t = batch["target"]
    return (
        F.cross_entropy(out["logits"], t, ignore_index=-1)
        + F.cross_entropy(out["logits_lidar"], t, ignore_index=-1)
        + F.cross_entropy(out["logits_image"], t, ignore_index=-1)
        + F.binary_cross_entropy_with_logits(out["anomaly_logit"], batch["ood_target"].float())
    )


@pytest.mark.parametrize("cfg", [SMALL_CFG, {}], ids=["small", "defaults"])
def test_segmenter_forward_backward_shapes_and_gradients(cfg):
    batch = make_batch()
    torch.manual_seed(0)
    model = build_model(cfg)
    with num_threads(2):
        out = model(batch)
        _loss(out, batch).backward()
    p = batch["points"].shape[0]
    d_c, d_l = model.image.out_channels, model.lidar.out_channels
    d_f = model.seg_head.in_features
    expected = {
        "logits": (p, 18), "logits_lidar": (p, 18), "logits_image": (p, 18),
        "anomaly_logit": (p,), "feat_image": (p, d_c), "feat_lidar": (p, d_l), "fused": (p, d_f),
    }
    for key, shape in expected.items():
        assert tuple(out[key].shape) == shape, key
        assert torch.isfinite(out[key]).all(), key
    invisible = ~batch["visible"]
    assert torch.equal(out["feat_image"][invisible].detach(),
                       model.image.placeholder.detach().expand(int(invisible.sum()), -1))
    no_grad = [n for n, prm in model.named_parameters() if prm.grad is None or not prm.grad.abs().sum() > 0]
    assert no_grad == []


def test_segmenter_without_images_uses_placeholder_everywhere():
    batch = make_batch(500)
    del batch["images"]
    model = build_model(SMALL_CFG).eval()
    with torch.no_grad():
        out = model(batch)
    torch.testing.assert_close(out["feat_image"], model.image.placeholder.expand_as(out["feat_image"]))


def test_synthesize_outputs_and_gradients():
    batch = make_batch(1000)
    torch.manual_seed(0)
    model = build_model(SMALL_CFG)

    def swap_two_dims(fi, fl, b):
        idx = torch.nonzero(b["visible"], as_tuple=True)[0][:50]
        mi, ml = fi[idx].clone(), fl[idx].clone()
        mi[:, :2], ml[:, :2] = fl[idx, :2], fi[idx, :2]
        return idx, mi, ml

    out = model(batch, synthesize=swap_two_dims)
    assert tuple(out["outlier_index"].shape) == (50,)
    assert tuple(out["outlier_logits"].shape) == (50, 18)
    assert tuple(out["outlier_anomaly_logit"].shape) == (50,)
    loss = -F.log_softmax(out["outlier_logits"], 1).mean() + out["outlier_anomaly_logit"].sum()
    loss.backward()
    for module in (model.lidar, model.image.encoder, model.fusion, model.anomaly_head, model.seg_head):
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters())


def test_build_model_rejects_invalid_values():
    with pytest.raises(ValueError, match="depth"):
        build_model({"image": {"depth": 50}})
    with pytest.raises(ValueError, match="channels"):
        build_model({"lidar": {"channels": [16, -1]}})
    with pytest.raises(ValueError, match="num_classes"):
        build_model({"num_classes": 0})
    with pytest.raises(ValueError, match="width_scale"):
        build_model({"image": {"width_scale": 0}})


# ----------------------------------------------------------------- torchvision names

RESNET18_KEYS = """
conv1.weight bn1.weight bn1.bias bn1.running_mean bn1.running_var bn1.num_batches_tracked
layer1.0.conv1.weight layer1.0.bn1.weight layer1.0.bn1.bias layer1.0.bn1.running_mean
layer1.0.bn1.running_var layer1.0.bn1.num_batches_tracked layer1.0.conv2.weight layer1.0.bn2.weight
layer1.0.bn2.bias layer1.0.bn2.running_mean layer1.0.bn2.running_var layer1.0.bn2.num_batches_tracked
layer1.1.conv1.weight layer1.1.bn1.weight layer1.1.bn1.bias layer1.1.bn1.running_mean
layer1.1.bn1.running_var layer1.1.bn1.num_batches_tracked layer1.1.conv2.weight layer1.1.bn2.weight
layer1.1.bn2.bias layer1.1.bn2.running_mean layer1.1.bn2.running_var layer1.1.bn2.num_batches_tracked
layer2.0.conv1.weight layer2.0.bn1.weight layer2.0.bn1.bias layer2.0.bn1.running_mean
layer2.0.bn1.running_var layer2.0.bn1.num_batches_tracked layer2.0.conv2.weight layer2.0.bn2.weight
layer2.0.bn2.bias layer2.0.bn2.running_mean layer2.0.bn2.running_var layer2.0.bn2.num_batches_tracked
layer2.0.downsample.0.weight layer2.0.downsample.1.weight layer2.0.downsample.1.bias
layer2.0.downsample.1.running_mean layer2.0.downsample.1.running_var
layer2.0.downsample.1.num_batches_tracked
layer2.1.conv1.weight layer2.1.bn1.weight layer2.1.bn1.bias layer2.1.bn1.running_mean
layer2.1.bn1.running_var layer2.1.bn1.num_batches_tracked layer2.1.conv2.weight layer2.1.bn2.weight
layer2.1.bn2.bias layer2.1.bn2.running_mean layer2.1.bn2.running_var layer2.1.bn2.num_batches_tracked
layer3.0.conv1.weight layer3.0.bn1.weight layer3.0.bn1.bias layer3.0.bn1.running_mean
layer3.0.bn1.running_var layer3.0.bn1.num_batches_tracked layer3.0.conv2.weight layer3.0.bn2.weight
layer3.0.bn2.bias layer3.0.bn2.running_mean layer3.0.bn2.running_var layer3.0.bn2.num_batches_tracked
layer3.0.downsample.0.weight layer3.0.downsample.1.weight layer3.0.downsample.1.bias
layer3.0.downsample.1.running_mean layer3.0.downsample.1.running_var
layer3.0.downsample.1.num_batches_tracked
layer3.1.conv1.weight layer3.1.bn1.weight layer3.1.bn1.bias layer3.1.bn1.running_mean
layer3.1.bn1.running_var layer3.1.bn1.num_batches_tracked layer3.1.conv2.weight layer3.1.bn2.weight
layer3.1.bn2.bias layer3.1.bn2.running_mean layer3.1.bn2.running_var layer3.1.bn2.num_batches_tracked
layer4.0.conv1.weight layer4.0.bn1.weight layer4.0.bn1.bias layer4.0.bn1.running_mean
layer4.0.bn1.running_var layer4.0.bn1.num_batches_tracked layer4.0.conv2.weight layer4.0.bn2.weight
layer4.0.bn2.bias layer4.0.bn2.running_mean layer4.0.bn2.running_var layer4.0.bn2.num_batches_tracked
layer4.0.downsample.0.weight layer4.0.downsample.1.weight layer4.0.downsample.1.bias
layer4.0.downsample.1.running_mean layer4.0.downsample.1.running_var
layer4.0.downsample.1.num_batches_tracked
layer4.1.conv1.weight layer4.1.bn1.weight layer4.1.bn1.bias layer4.1.bn1.running_mean
layer4.1.bn1.running_var layer4.1.bn1.num_batches_tracked layer4.1.conv2.weight layer4.1.bn2.weight
layer4.1.bn2.bias layer4.1.bn2.running_mean layer4.1.bn2.running_var layer4.1.bn2.num_batches_tracked
""".split()


def test_encoder_keys_are_torchvision_resnet18_minus_fc():
    assert len(RESNET18_KEYS) == 120  # torchvision resnet18: 122 entries incl. fc.weight, fc.bias
    assert list(ResNetEncoder(18).state_dict().keys()) == RESNET18_KEYS
    shapes = {k: tuple(v.shape) for k, v in ResNetEncoder(18).state_dict().items()}
    assert shapes["conv1.weight"] == (64, 3, 7, 7)
    assert shapes["layer2.0.downsample.0.weight"] == (128, 64, 1, 1)
    assert shapes["layer4.1.conv2.weight"] == (512, 512, 3, 3)


def test_encoder_resnet34_key_count():
    keys = list(ResNetEncoder(34).state_dict().keys())
    # blocks (3, 4, 6, 3): 12 entries per block, +6 per downsample, +6 stem
    assert len(keys) == 16 * 12 + 3 * 6 + 6 == 216
    assert "layer3.5.bn2.num_batches_tracked" in keys and "layer3.6.conv1.weight" not in keys


def test_load_pretrained_accepts_torchvision_checkpoint_with_fc(tmp_path):
    src = ResNetEncoder(18)
    with torch.no_grad():
        for p in src.parameters():
            p.normal_()
    state = dict(src.state_dict())
    state["fc.weight"], state["fc.bias"] = torch.randn(1000, 512), torch.randn(1000)
    path = tmp_path / "resnet18-imagenet.pth"
    torch.save(state, path)
    dst = ResNetEncoder(18)
    load_pretrained(dst, path)
    for k, v in src.state_dict().items():
        assert torch.equal(dst.state_dict()[k], v), k


def test_load_pretrained_refuses_missing_key(tmp_path):
    state = dict(ResNetEncoder(18).state_dict())
    del state["layer3.1.bn2.running_var"]
    path = tmp_path / "broken-resnet.pth"
    torch.save(state, path)
    with pytest.raises(ValueError, match="broken-resnet.pth") as err:
        load_pretrained(ResNetEncoder(18), path)
    assert "layer3.1.bn2.running_var" in str(err.value)


def test_build_model_loads_pretrained_encoder(tmp_path):
    src = ResNetEncoder(18)
    path = tmp_path / "r18.pth"
    torch.save(src.state_dict(), path)
    model = build_model({"image": {"pretrained": str(path), "width_scale": 1.0}})
    assert torch.equal(model.image.encoder.conv1.weight, src.conv1.weight)
    with pytest.raises(ValueError, match="width_scale"):
        build_model({"image": {"pretrained": str(path), "width_scale": 0.5}})
    with pytest.raises(FileNotFoundError, match="nowhere.pth"):
        build_model({"image": {"pretrained": str(tmp_path / "nowhere.pth"), "width_scale": 1.0}})


def test_load_pretrained_refuses_width_mismatch(tmp_path):
    path = tmp_path / "r18.pth"
    torch.save(ResNetEncoder(18).state_dict(), path)
    with pytest.raises(ValueError, match="shape"):
        load_pretrained(ResNetEncoder(18, width_scale=0.5), path)


# ----------------------------------------------------------------- sampling

def _linear_map(stride: int, hf: int, wf: int, channels: int = 3):
    """Feature map whose cell (j, i) holds g(u, v) at its centre u = s*i, v = s*j."""
    coef = torch.tensor([[0.5, -1.25, 3.0], [2.0, 0.75, -1.0], [-0.3, 0.1, 0.2]])[:channels]
    v, u = torch.meshgrid(stride * torch.arange(hf).double(), stride * torch.arange(wf).double(), indexing="ij")
    fmap = coef[:, 0, None, None].double() * u + coef[:, 1, None, None].double() * v + coef[:, 2, None, None].double()
    return fmap.float(), coef


def test_sample_points_reproduces_linear_function():
    stride, hf, wf = 4, 24, 80
    fmap, coef = _linear_map(stride, hf, wf)
    g = torch.Generator().manual_seed(0)
    uv = torch.rand(500, 2, generator=g) * torch.tensor([stride * (wf - 1.0), stride * (hf - 1.0)])
    got = sample_points(fmap, uv, stride)
    expected = uv[:, :1] * coef[:, 0] + uv[:, 1:] * coef[:, 1] + coef[:, 2]
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-5)
    assert tuple(sample_points(fmap, uv[:0], stride).shape) == (0, 3)


def test_upsample_keeps_cell_centres_aligned():
    coarse, coef = _linear_map(8, 6, 10)
    fine_expected, _ = _linear_map(4, 12, 20)
    fine = upsample_to(coarse[None], (12, 20))[0]
    # interior (fine cell i reads coarse coordinate i/2 <= last centre): exact
    torch.testing.assert_close(fine[:, :11, :19], fine_expected[:, :11, :19], atol=1e-4, rtol=1e-5)


def test_image_branch_samples_the_decoded_map_and_placeholder():
    batch = make_batch(400)
    branch = ImageBranch(18, 16, width_scale=0.25).eval()
    with torch.no_grad():
        feats = branch(batch)
        fmaps = branch.feature_maps(batch["images"])
    vis, inv = batch["visible"], ~batch["visible"]
    assert inv.any() and vis.any()
    assert torch.equal(feats[inv], branch.placeholder.detach().expand(int(inv.sum()), -1))
    b1 = torch.nonzero(vis & (batch["batch_idx"] == 1), as_tuple=True)[0]
    torch.testing.assert_close(feats[b1], sample_points(fmaps[1], batch["pixel_uv"][b1], branch.stride))
