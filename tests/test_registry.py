"""The registry: registration, duplicates, unknown names, create()."""

from __future__ import annotations

import pytest
from pydantic import BaseModel, ConfigDict, Field

import avgen
from avgen._core.errors import AvgenError, DuplicateComponentError, UnknownComponentError
from avgen._core.registry import KINDS, Registry


class P(BaseModel):
    model_config = ConfigDict(extra="forbid")
    size: int = Field(3, ge=1, description="a size")


class Sized(avgen.Metric):
    """A metric that remembers how it was built."""

    def __init__(self, size: int, context: avgen.BuildContext) -> None:
        self.size, self.context = size, context

    def compute(self, ctx):
        return {"size": float(self.size)}


def make(params: P, context: avgen.BuildContext) -> Sized:
    return Sized(params.size, context)


def test_kinds_are_the_six_of_the_design_the_detector_and_the_index() -> None:
    """The six kinds of component a recipe is made of, plus ``detector`` (visual event detectors) and ``index``
    (the exemplar retrieval)."""
    assert KINDS == ("encoder", "representation", "generator", "loss", "dataset", "metric", "detector", "index")


def test_register_get_and_build_with_context() -> None:
    reg = Registry()
    reg.register("metric", "plug_a", "tiny", make, P, summary="tiny one", card={"paper": "none"})
    comp = reg.get("metric", "tiny")
    assert comp.plugin == "plug_a" and comp.summary == "tiny one" and comp.card.as_dict() == {"paper": "none"}
    built = comp.build({"size": 5}, avgen.BuildContext(run_dir=None))
    assert built.size == 5 and built.context == avgen.BuildContext()
    assert comp.build({"size": 2}, {"device": "cpu"}).context.device == "cpu"  # a mapping of BuildContext fields


def test_a_card_with_an_unknown_key_is_refused_naming_the_plugin() -> None:
    with pytest.raises(ValueError, match="plug_a.*card: papr: unknown key"):
        Registry().register("metric", "plug_a", "tiny", make, P, card={"papr": "typo"})


def test_an_object_that_breaks_its_kind_contract_is_one_error_naming_the_plugin() -> None:
    reg = Registry()
    reg.register("encoder", "plug_b", "half", lambda params, context: Sized(1, context), P)
    with pytest.raises(AvgenError, match="plugin 'plug_b': encoder 'half' does not follow the contract: no dim, fps, "
                                         "input_size, encode .subclass avgen.Encoder"):
        reg.get("encoder", "half").build({})
    reg.register("generator", "plug_b", "plain", lambda params, context: object(), P)
    with pytest.raises(AvgenError, match="plugin 'plug_b': generator 'plain'"):
        reg.get("generator", "plain").build({})


def test_duplicate_names_fail_naming_both_plugins() -> None:
    reg = Registry()
    reg.register("metric", "first_plugin", "acc", make, P)
    with pytest.raises(DuplicateComponentError) as info:
        reg.register("metric", "second_plugin", "acc", make, P)
    assert "first_plugin" in str(info.value) and "second_plugin" in str(info.value)
    reg.register("loss", "second_plugin", "acc", make, P)  # same name, other kind: fine


def test_unknown_name_suggests_closest() -> None:
    reg = Registry()
    for name in ("resnet18", "resnet50", "alexnet"):
        reg.register("encoder", "vision", name, make, P)
    with pytest.raises(UnknownComponentError) as info:
        reg.get("encoder", "resnet5")
    message = str(info.value)
    assert "'resnet50'" in message and "avgen list encoder" in message
    assert isinstance(info.value, KeyError) and isinstance(info.value, AvgenError)


def test_bad_params_give_one_line_naming_the_field() -> None:
    reg = Registry()
    reg.register("encoder", "vision", "tiny", make, P)
    with pytest.raises(AvgenError) as info:
        reg.get("encoder", "tiny").build({"size": 0})
    assert "size" in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(AvgenError, match="unknown key"):
        reg.get("encoder", "tiny").build({"colour": 1})


def test_list_is_sorted_naturally_and_filtered_by_glob() -> None:
    reg = Registry()
    for name in ("resnet101", "resnet18", "alexnet", "resnet50"):
        reg.register("encoder", "vision", name, make, P)
    assert [c.name for c in reg.all("encoder")] == ["alexnet", "resnet18", "resnet50", "resnet101"]
    assert [c.name for c in reg.all("encoder", "resnet1*")] == ["resnet18", "resnet101"]


def test_register_rejects_non_pydantic_params_and_bad_names() -> None:
    reg = Registry()
    with pytest.raises(TypeError):
        reg.register("encoder", "p", "x", make, dict)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        reg.register("encoder", "p", "bad name!", make, P)
    with pytest.raises(ValueError):
        reg.register("widget", "p", "x", make, P)


def test_create_uses_installed_plugins_and_drops_none(example_plugin: None) -> None:
    mel = avgen.create("representation", "mel", n_mels=20, hop=None)
    assert mel.dim == 20 and mel.p.hop == 256
    with pytest.raises(UnknownComponentError):
        avgen.create("representation", "mell")
