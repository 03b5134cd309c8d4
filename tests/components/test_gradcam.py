"""Grad-CAM and Grad-CAM++ against maps computed by hand, on a trained detector of a bright square, and
the overlay drawing."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from torchkiln.components.gradcam import class_activation_maps, jet, overlay, overlay_png
from torchkiln.core.errors import PredictError

X = torch.tensor(
    [
        [0.0, 1.0, 2.0, 3.0],
        [-1.0, -2.0, 4.0, 0.0],
        [2.0, -4.0, 0.0, 1.0],
        [0.0, 0.0, -1.0, 2.0],
    ]
)


def gap_net() -> nn.Sequential:
    """conv (A0 = relu(x), A1 = relu(-x)) -> global average pool -> Linear, W = [[1, 0], [0, 1], [2, 1]]."""
    conv = nn.Conv2d(1, 2, 3, padding=1, bias=False)
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[0, 0, 1, 1], conv.weight[1, 0, 1, 1] = 1.0, -1.0
        fc = nn.Linear(2, 3, bias=False)
        fc.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [2.0, 1.0]]))
    return nn.Sequential(nn.Sequential(conv, nn.ReLU()), nn.AdaptiveAvgPool2d(1), nn.Flatten(), fc)


def test_gradcam_is_the_hand_computed_map() -> None:
    net, x = gap_net(), X.view(1, 1, 4, 4)
    a0, a1 = X.clamp(min=0), (-X).clamp(min=0)  # max 4 each
    # y_c = sum_k W_ck mean(A_k): the gradient is W_ck / 16 everywhere, so w_k = W_ck / 16.
    expected = {0: a0 / 4, 1: a1 / 4, 2: (2 * a0 + a1) / (2 * a0 + a1).max()}
    for c, heat in expected.items():
        cams = class_activation_maps(net, x, net[0], target=c)
        assert torch.allclose(cams.heatmaps[0], heat, atol=1e-6), c
        assert cams.targets.tolist() == [c]
    # Without a target, the predicted class: logits (2 * mean(A0) + mean(A1)) is the largest.
    assert class_activation_maps(net, x, net[0]).targets.tolist() == [2]


def test_gradcam_plus_plus_is_the_hand_computed_map() -> None:
    net, x = gap_net(), X.view(1, 1, 4, 4)
    a0, a1 = X.clamp(min=0), (-X).clamp(min=0)
    s0, s1 = float(a0.sum()), float(a1.sum())  # 13 and 8
    # g = W_ck / 16 everywhere: alpha = g^2 / (2 g^2 + S_k g^3) = 1 / (2 + S_k g), w_k = 16 alpha g.
    g0, g1 = 2 / 16, 1 / 16
    w0, w1 = 16 * g0 / (2 + s0 * g0), 16 * g1 / (2 + s1 * g1)
    cam = w0 * a0 + w1 * a1
    cams = class_activation_maps(net, x, net[0], target=2, method="gradcam++")
    assert torch.allclose(cams.heatmaps[0], cam / cam.max(), atol=1e-6)
    # Class 0 leans on A0 alone (w1 = 0: its gradient is 0, so alpha is 0): the map is A0's.
    cams = class_activation_maps(net, x, net[0], target=0, method="gradcam++")
    assert torch.allclose(cams.heatmaps[0], a0 / 4, atol=1e-6)


def squares(n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Noise images (0 to 0.25); class 1 holds a bright 5x5 square at a random place. Returns the images
    (n, 1, 16, 16), the labels and each image's square mask."""
    x = torch.rand(n, 1, 16, 16, generator=gen) * 0.25
    y = torch.randint(0, 2, (n,), generator=gen)
    corner = torch.randint(0, 12, (n, 2, 1), generator=gen)
    side = torch.arange(16)
    rows = (side >= corner[:, 0]) & (side < corner[:, 0] + 5)  # (n, 16)
    cols = (side >= corner[:, 1]) & (side < corner[:, 1] + 5)
    mask = rows[:, :, None] & cols[:, None, :] & y.bool()[:, None, None]  # (n, 16, 16)
    x[:, 0][mask] = 1.0
    return x, y, mask


STEPS = 40


def test_a_trained_detector_of_a_bright_square_is_explained_by_the_square() -> None:
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    features = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU()
    )
    net = nn.Sequential(features, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 2))
    opt = torch.optim.Adam(net.parameters(), lr=0.02)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny net: 3 ms a step on one thread, 200 ms on two busy cores
    try:
        for _ in range(STEPS):
            x, y, _ = squares(64, gen)
            loss = nn.functional.cross_entropy(net(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
    finally:
        torch.set_num_threads(threads)
    x, y, mask = squares(64, gen)
    x, mask = x[y == 1], mask[y == 1]
    for method in ("gradcam", "gradcam++"):
        cams = class_activation_maps(net, x, features, target=1, method=method)
        inside = (cams.heatmaps * mask).sum((1, 2)) / mask.sum((1, 2))
        outside = (cams.heatmaps * ~mask).sum((1, 2)) / (~mask).sum((1, 2))
        assert (cams.outputs.argmax(1) == 1).float().mean() > 0.95  # it learnt the task
        assert bool((inside > 3 * outside).all()), (method, (inside / outside).min())
        peak = cams.heatmaps.flatten(1).argmax(1, keepdim=True)
        assert bool(mask.flatten(1).gather(1, peak).all())  # every map is hottest inside its square


def test_hooks_are_removed_no_grads_are_left_and_the_mode_is_restored() -> None:
    net, x = gap_net(), X.view(1, 1, 4, 4)
    net.train()
    with torch.inference_mode():  # as Predictor.forward's callers: grad is enabled locally
        inference = class_activation_maps(net, x, net[0], target=2)
    with torch.no_grad():
        no_grad = class_activation_maps(net, x, net[0], target=2)
    assert torch.equal(inference.heatmaps, no_grad.heatmaps)
    assert net.training and all(m.training for m in net.modules())
    assert all(not m._forward_hooks and not m._backward_hooks for m in net.modules())
    assert all(p.grad is None for p in net.parameters())
    with pytest.raises(PredictError):  # a failure inside the forward pass removes the hook too
        class_activation_maps(net, x, net[3])
    assert all(not m._forward_hooks for m in net.modules())


def test_frozen_layers_and_batches_with_one_target_per_input() -> None:
    net = gap_net().requires_grad_(False)
    x = torch.stack([X, -X]).view(2, 1, 4, 4)
    cams = class_activation_maps(net, x, net[0], target=[0, 0])
    assert torch.allclose(cams.heatmaps[0], X.clamp(min=0) / 4, atol=1e-6)
    assert torch.allclose(cams.heatmaps[1], (-X).clamp(min=0) / 4, atol=1e-6)
    # Class 1 reads A1 only, which is zero on an all-positive image: no evidence, an all-zero map.
    zero = class_activation_maps(net, torch.ones(1, 1, 4, 4), net[0], target=1)
    assert torch.equal(zero.heatmaps, torch.zeros(1, 4, 4))


def test_a_target_function_picks_the_class_from_the_outputs() -> None:
    # A two-class model at an operating point answers the class its threshold picks, not the argmax: the
    # target function gets the outputs and returns those classes, and the maps explain them.
    net, x = gap_net(), torch.stack([X, -X]).view(2, 1, 4, 4)
    seen: list[torch.Tensor] = []

    def answered(outputs: torch.Tensor) -> torch.Tensor:
        seen.append(outputs)
        return torch.tensor([0, 1])

    cams = class_activation_maps(net, x, net[0], target=answered)
    assert cams.targets.tolist() == [0, 1]
    assert seen[0].shape == (2, 3) and not seen[0].requires_grad
    assert torch.allclose(cams.heatmaps[0], X.clamp(min=0) / 4, atol=1e-6)
    assert torch.allclose(cams.heatmaps[1], X.clamp(min=0) / 4, atol=1e-6)  # A1 of -X is relu(X)


def test_a_coarse_layer_is_resized_to_the_input() -> None:
    net = gap_net()
    pooled = nn.Sequential(net[0], nn.MaxPool2d(2), *list(net)[1:])
    cams = class_activation_maps(pooled, torch.randn(3, 1, 8, 8), pooled[1])
    assert cams.heatmaps.shape == (3, 8, 8) and cams.outputs.shape == (3, 3)
    assert float(cams.heatmaps.min()) >= 0.0 and float(cams.heatmaps.max()) <= 1.0


def test_bad_requests_say_what_to_do() -> None:
    net, x = gap_net(), X.view(1, 1, 4, 4)
    with pytest.raises(PredictError) as err:
        class_activation_maps(net, x, net[0], method="cam")
    assert str(err.value) == (
        "Unknown explanation method 'cam'. Expected one of gradcam, gradcam++. Pick one of them (--method on "
        "the command line, method= in Python)."
    )
    with pytest.raises(PredictError) as err:
        class_activation_maps(net, x, net[0], target=3)
    assert str(err.value) == (
        "Class index 3 is out of range: the model has 3 classes (0 to 2). Pick a class the model was "
        "trained on."
    )
    with pytest.raises(PredictError) as err:
        class_activation_maps(net, x, net[0], target=[0, 1])
    assert str(err.value) == (
        "Got 2 target classes for 1 inputs; expected one class, or one per input. Pass a single class index "
        "or a list as long as the inputs."
    )
    with pytest.raises(PredictError) as err:
        class_activation_maps(net, x, net[2])
    assert str(err.value) == (
        "Grad-CAM needs a layer whose output is a feature map (B, C, H, W); the chosen Flatten gives (1, 2). "
        "Pick a convolutional layer of the model."
    )


def test_overlay_blends_jet_colours_over_the_image() -> None:
    assert jet(np.array([[0.0, 0.5, 1.0]])).tolist() == [[[0, 0, 128], [128, 255, 128], [128, 0, 0]]]
    image = np.full((2, 3), 100, dtype=np.uint8)
    heat = np.array([[0.0, 0.5, 1.0], [1.0, 1.0, 1.0]])
    out = overlay(image, heat, alpha=0.5)
    assert out.shape == (2, 3, 3) and out.dtype == np.uint8
    assert out[0].tolist() == [[50, 50, 114], [114, 178, 114], [114, 50, 50]]
    assert np.array_equal(overlay(np.stack([image] * 3, axis=2), torch.tensor(heat), alpha=0.5), out)
    png = overlay_png(image, heat, min_side=12)
    with Image.open(io.BytesIO(png)) as img:
        assert img.size == (12, 8) and img.mode == "RGB"
    with pytest.raises(PredictError) as err:
        overlay(image, np.zeros((3, 3)))
    assert str(err.value) == (
        "The heatmap is 3x3 but the image is 2x3; expected the same size. Overlay the image the model saw "
        "(after its resize and crop)."
    )
    with pytest.raises(PredictError) as err:
        overlay(image.astype(np.float32), heat)
    assert "overlay needs a uint8 image of shape (H, W) or (H, W, C) with C in 1, 3, 4; got float32" in str(
        err.value
    )
