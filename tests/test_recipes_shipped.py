"""Every recipe shipped in recipes/ validates against the registered components."""

from __future__ import annotations

from pathlib import Path

import pytest

from avgen._core.recipefiles import load_recipes
RECIPES = sorted((Path(__file__).resolve().parents[1] / "recipes").glob("*.toml"))
PAPER = {  # what each paper recipe must state: its generator, losses and their weights
    "pocan_ghd": ("can_lstm", ["class_nll", "spec_smooth_l1", "soundnet_perceptual"], [1.0, 50.0, 100.0]),
    "can_ghd": ("can_lstm", ["class_nll", "spec_smooth_l1"], [1.0, 50.0]),
    "pocan_vig": ("can_lstm", ["class_nll", "spec_smooth_l1", "soundnet_perceptual"], [1.0, 50.0, 100.0]),
    "can_vig": ("can_lstm", ["class_nll", "spec_smooth_l1"], [1.0, 50.0]),
    "owens_alex_coch_ghd": ("owens_lstm", ["spec_smooth_l1"], [1.0]),
    "owens_alex_spec_ghd": ("owens_lstm", ["spec_smooth_l1"], [1.0]),
    "owens_res_spec_ghd": ("owens_lstm", ["spec_smooth_l1"], [1.0]),
    "owens_vig": ("owens_lstm", ["spec_smooth_l1"], [1.0]),
}


def test_all_paper_recipes_exist() -> None:
    assert set(PAPER) <= {p.stem for p in RECIPES}
    assert "quickstart" in {p.stem for p in RECIPES}


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_recipe_validates(path: Path) -> None:
    recipes = load_recipes(path)
    assert recipes
    for recipe in recipes:
        if recipe.generator.name in ("owens_lstm", "can_lstm"):  # the paper's generators, with its settings
            assert recipe.train.batch_size == 40 and recipe.train.optimizer == "adam"
            assert recipe.generator.params["hidden"] == 128
    if path.stem in PAPER:
        (recipe,) = recipes
        generator, losses, weights = PAPER[path.stem]
        assert recipe.generator.name == generator
        assert [l.name for l in recipe.loss] == losses and [l.weight for l in recipe.loss] == weights
        ghd = path.stem.endswith("_ghd")
        assert recipe.data.params["sample_rate"] == (22050 if ghd else 8000)
        assert recipe.data.params["clip_seconds"] == (0.5 if ghd else 10.0)
        rep = recipe.representation
        assert rep.params["n_fft"] == 2048 and rep.params["hop_length"] == 512
        assert rep.name == ("cochleagram" if "coch" in path.stem else "stft")
        alex = "alex" in path.stem
        assert recipe.encoder.name == ("alexnet" if alex else "resnet200d")


@pytest.mark.parametrize("flow, paper", [("flow_ghd", "pocan_ghd"), ("flow_quickstart", "quickstart")])
def test_flow_recipes_share_data_encoder_and_evaluation_with_the_recipe_they_compare_with(flow: str, paper: str) -> None:
    """A flow row in `avgen compare` differs from the paper's rows only in the generator and its training."""
    folder = RECIPES[0].parent
    (ours,) = load_recipes(folder / f"{flow}.toml")
    theirs = load_recipes(folder / f"{paper}.toml")[0]
    assert ours.generator.name == "flow_matching" and ours.loss[0].name == "flow_matching_mse"
    assert ours.data == theirs.data and ours.encoder == theirs.encoder and ours.eval == theirs.eval
    assert {m.name for m in theirs.metric} <= {m.name for m in ours.metric}
    same = {k: v for k, v in theirs.representation.params.items() if k != "compression"}
    assert ours.representation.name == theirs.representation.name
    assert {k: ours.representation.params.get(k) for k in same} == same


EXTRA_VARIANTS = {"quickstart": set(), "synthetic_hard": {"flow", "flow_base", "can_tuned", "flow_base_tuned",
                                                    "flow_proto_tuned"}}  # beyond
# the paper (tests below)
VARIANTS = {  # the paper's three methods as variants of one recipe: generator, losses, weights
    "owens": ("owens_lstm", ["spec_smooth_l1"], [50.0]),
    "can": ("can_lstm", ["class_nll", "spec_smooth_l1"], [1.0, 50.0]),
    "pocan": ("can_lstm", ["class_nll", "spec_smooth_l1", "soundnet_perceptual"], [1.0, 50.0, 100.0]),
}


@pytest.mark.parametrize("stem", ["quickstart", "synthetic_hard"])
def test_synthetic_recipes_run_the_papers_three_methods_with_its_settings(stem: str) -> None:
    recipes = {r.run.name: r for r in load_recipes(RECIPES[[p.stem for p in RECIPES].index(stem)])}
    assert set(recipes) == set(VARIANTS) | EXTRA_VARIANTS[stem]
    for name, (generator, losses, weights) in VARIANTS.items():
        recipe = recipes[name]
        assert recipe.generator.name == generator and recipe.generator.params["hidden"] == 128
        assert [l.name for l in recipe.loss] == losses and [l.weight for l in recipe.loss] == weights
        assert recipe.data.name == "synthetic_hits"
        assert recipe.data.params["sample_rate"] == 22050 and recipe.data.params["clip_seconds"] == 0.5
        assert recipe.representation.name == "stft"
        assert recipe.representation.params["n_fft"] == 2048 and recipe.representation.params["hop_length"] == 512
        assert recipe.train.lr == 0.001
    assert recipes["can"].train.epochs == recipes["pocan"].train.epochs
    if stem == "synthetic_hard":
        assert recipes["can"].data.params["difficulty"] == "hard"
        assert recipes["can"].data.params["videos"] >= 96  # enough clips that a method's R@1 means something
        assert "soundnet_fd" in [m.name for m in recipes["can"].metric]


def test_the_hard_recipes_flow_variant_shares_data_encoder_and_evaluation_with_the_papers_methods() -> None:
    recipes = {r.run.name: r for r in load_recipes(RECIPES[0].parent / "synthetic_hard.toml")}
    pocan = recipes["pocan"]
    for flow in (recipes["flow"], recipes["flow_base"]):
        assert flow.generator.name == "flow_matching" and flow.loss[0].name == "flow_matching_mse"
        assert flow.data == pocan.data and flow.encoder == pocan.encoder and flow.eval == pocan.eval
        assert [m.name for m in flow.metric] == [m.name for m in pocan.metric]
    # the two flows differ only in the base sample, the class head's pooling and the sampler's temperature
    base, plain = dict(recipes["flow_base"].generator.params), dict(recipes["flow"].generator.params)
    assert base.pop("base_sample") is True and base.pop("temperature") == 0.3
    assert base.pop("class_pooling") == "frame_probs"
    assert not plain.pop("base_sample", False) and plain.pop("temperature", 1.0) == 1.0
    assert plain.pop("class_pooling", "mean_feature") == "mean_feature"
    assert base == plain and recipes["flow_base"].train == recipes["flow"].train


def test_the_hard_recipes_tuned_variants_differ_from_their_frozen_ones_only_in_the_encoders_tuning() -> None:
    recipes = {r.run.name: r for r in load_recipes(RECIPES[0].parent / "synthetic_hard.toml")}
    for tuned, frozen in (("can_tuned", "can"), ("flow_base_tuned", "flow_base")):
        a, b = recipes[tuned], recipes[frozen]
        params = dict(a.encoder.params)
        assert params.pop("tune") == "last_stage" and params.pop("tune_lr") == 1e-4
        assert params.pop("tune_epochs") == 30 and params.pop("tune_max_clips") == 8192
        assert params == b.encoder.params  # a frozen encoder's params carry no tuning keys
        assert a.generator == b.generator and a.loss == b.loss and a.train == b.train and a.data == b.data
        assert a.representation == b.representation and a.eval == b.eval


def test_the_hard_recipes_proto_variant_is_flow_base_tuned_with_the_residual_scaled_to_zero() -> None:
    recipes = {r.run.name: r for r in load_recipes(RECIPES[0].parent / "synthetic_hard.toml")}
    proto, tuned = recipes["flow_proto_tuned"], recipes["flow_base_tuned"]
    params = dict(proto.generator.params)
    assert params.pop("residual_scale") == 0.0 and "residual_scale" not in tuned.generator.params
    assert params == tuned.generator.params and proto.generator.name == tuned.generator.name
    assert proto.encoder == tuned.encoder and proto.loss == tuned.loss and proto.train == tuned.train
    assert proto.data == tuned.data and proto.representation == tuned.representation and proto.eval == tuned.eval
