"""The DCGAN's two networks: shapes at every size, both passes, conditioning and spectral norm."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from torchkiln.core.errors import ConfigError
from torchkiln.tasks.image_generation.models import dcgan


@pytest.mark.parametrize(("size", "channels"), [(28, 1), (32, 3), (56, 1), (64, 3)])
def test_generator_and_discriminator_shapes_and_backward(size: int, channels: int) -> None:
    nets = dcgan(image_size=size, in_channels=channels, num_classes=0, latent_dim=16, width=8)
    g, d = nets["generator"], nets["discriminator"]
    fake = g(torch.randn(4, 16))
    assert fake.shape == (4, channels, size, size)
    assert fake.min() >= -1 and fake.max() <= 1  # tanh
    logits = d(fake)
    assert logits.shape == (4,)
    F.binary_cross_entropy_with_logits(logits, torch.ones(4)).backward()
    for name, net in nets.items():
        grads = [p.grad for p in net.parameters()]
        assert all(gr is not None and torch.isfinite(gr).all() for gr in grads), name


def test_conditional_networks_use_the_label() -> None:
    torch.manual_seed(0)
    nets = dcgan(image_size=28, in_channels=1, num_classes=3, latent_dim=8, width=8).eval()
    g, d = nets["generator"], nets["discriminator"]
    z = torch.randn(1, 8)
    a = g(torch.cat([z, torch.tensor([[1.0, 0, 0]])], 1))
    b = g(torch.cat([z, torch.tensor([[0.0, 1, 0]])], 1))
    assert not torch.equal(a, b)  # the same noise, another class: another image
    x = torch.cat([a, a])
    assert d(x, torch.tensor([0, 1]))[0] != d(x, torch.tensor([0, 1]))[1]  # the projection term
    with pytest.raises(ValueError, match="a conditional discriminator needs the labels"):
        d(x)


def test_spectral_norm_replaces_the_discriminators_batchnorm() -> None:
    nets = dcgan(image_size=32, in_channels=3, num_classes=0, latent_dim=8, width=8, spectral_norm=True)
    d = nets["discriminator"]
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in d.modules())
    assert any(hasattr(m, "parametrizations") for m in d.modules())
    d(torch.randn(2, 3, 32, 32)).sum().backward()
    # Power iteration keeps the largest singular value of each layer's weight near 1.
    d.train()
    for _ in range(20):
        d(torch.randn(2, 3, 32, 32))
    conv = d.body[0]
    sigma = float(torch.linalg.matrix_norm(conv.weight.detach().flatten(1), ord=2))
    assert sigma == pytest.approx(1.0, abs=0.05)


def test_unsupported_size_is_refused() -> None:
    with pytest.raises(ConfigError) as info:
        dcgan(image_size=48, in_channels=1, num_classes=0, latent_dim=8)
    assert str(info.value) == (
        "The DCGAN draws images of 28, 32, 56 or 64 pixels; got image_size 48. Set data.image_size to one "
        "of them."
    )
