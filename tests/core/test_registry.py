"""The generic registry and its did-you-mean errors, and the model registry built on it."""

from __future__ import annotations

import pytest
import torch

from torchkiln.components.models import MODELS
from torchkiln.core.errors import ConfigError, RegistryError
from torchkiln.core.registry import Registry, check_kwargs
from torchkiln.tasks.image_classification.models import create_model


def make_registry() -> Registry[object]:
    reg: Registry[object] = Registry("widget")

    @reg.register("bolt")
    def bolt() -> None:
        """A bolt.

        More text that is not part of the summary.
        """

    reg.add("nut", object(), summary="A nut")
    return reg


def test_register_get_list_and_summaries() -> None:
    reg = make_registry()
    assert reg.names() == ["bolt", "nut"]
    assert [e.name for e in reg] == ["bolt", "nut"]
    assert [e.summary for e in reg] == ["A bolt.", "A nut"]
    assert "bolt" in reg and "screw" not in reg
    assert callable(reg.get("bolt"))


def test_registering_a_name_twice_is_an_error() -> None:
    reg = make_registry()
    with pytest.raises(RegistryError) as info:
        reg.add("nut", object())
    assert (
        str(info.value)
        == "The widget 'nut' is registered twice. Each name must be unique; rename one of them."
    )
    with pytest.raises(RegistryError, match="registered twice"):
        reg.register("bolt")(lambda: None)


def test_unknown_name_lists_close_matches_and_the_list_command() -> None:
    with pytest.raises(RegistryError) as info:
        make_registry().get("nutt")
    assert (
        str(info.value)
        == "Unknown widget 'nutt'. Did you mean 'nut'? Run 'kiln list widgets' to see all of them."
    )


def test_unknown_name_without_close_matches() -> None:
    with pytest.raises(RegistryError) as info:
        make_registry().get("hammer")
    assert str(info.value) == "Unknown widget 'hammer'. Run 'kiln list widgets' to see all of them."


def test_unknown_model_suggests_the_one_obvious_name() -> None:
    with pytest.raises(RegistryError) as info:
        MODELS.of("image-classification").get("resnet-18")
    assert str(info.value) == (
        "Unknown model 'resnet-18'. Did you mean 'resnet18'? Run 'kiln list models' to see all of them."
    )


def test_check_kwargs_accepts_keyword_only_parameters() -> None:
    def build(*, width: int, depth: int = 2) -> None: ...

    check_kwargs(build, {"width": 3, "depth": 1}, what="Builder 'b'")


def test_check_kwargs_did_you_mean() -> None:
    def build(*, width: int, depth: int = 2) -> None: ...

    with pytest.raises(RegistryError) as info:
        check_kwargs(build, {"widht": 3}, what="Builder 'b'")
    assert (
        str(info.value)
        == "Builder 'b' has no parameter 'widht'. Did you mean 'width'? Valid parameters: width, depth."
    )


def test_check_kwargs_leaves_out_what_the_caller_supplies() -> None:
    def build(*, width: int, depth: int = 2) -> None: ...

    with pytest.raises(RegistryError) as info:
        check_kwargs(build, {"dept": 3}, what="Builder 'b'", exclude={"width"})
    assert str(info.value).endswith("Did you mean 'depth'? Valid parameters: depth.")


def test_create_model_args_hint_leaves_out_reserved_names() -> None:
    with pytest.raises(RegistryError) as info:
        create_model("cnn", num_classes=3, in_channels=1, image_size=16, args={"chanels": [8]})
    msg = str(info.value)
    assert "Did you mean 'channels'?" in msg
    assert "in_channels" not in msg and "num_classes" not in msg


@pytest.mark.parametrize("reserved", ["num_classes", "in_channels", "image_size", "pretrained"])
def test_create_model_rejects_reserved_args(reserved: str) -> None:
    with pytest.raises(ConfigError) as info:
        create_model("cnn", num_classes=3, in_channels=1, image_size=16, args={reserved: 1})
    assert (
        f"model.args sets '{reserved}', which torchkiln derives from the data or from model.pretrained."
        in str(info.value)
    )


def test_create_model_builds_a_working_cnn() -> None:
    model = create_model("cnn", num_classes=3, in_channels=1, image_size=16, args={"channels": [4]})
    assert model(torch.zeros(2, 1, 16, 16)).shape == (2, 3)
