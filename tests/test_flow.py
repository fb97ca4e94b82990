"""The flow plugin: flow_matching generator, its sampler, guidance and loss, on real representations."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from avgen import GeneratorShape, create
from avgen._core.plugins import get_component
from conftest import avgen_in_process

pytestmark = pytest.mark.usefixtures("one_thread")


def flow(shape: GeneratorShape, **params):
    from avgen import BuildContext

    return get_component("generator", "flow_matching").build(params, BuildContext(shape=shape))


def toy_data(count: int, shape: GeneratorShape, seed: int = 0) -> dict[str, torch.Tensor]:
    """Clips whose representation is a class pattern scaled by a loudness the video shows."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, shape.num_classes, (count,), generator=g)
    patterns = torch.randn(shape.num_classes, shape.rep_dim, 1, generator=g)
    ramps = torch.linspace(1.0, 0.2, shape.steps)
    loud = torch.rand(count, generator=g) + 0.5
    rep = patterns[labels] * ramps * loud[:, None, None] + 0.05 * torch.randn(count, shape.rep_dim, shape.steps, generator=g)
    features = torch.zeros(count, 3, shape.feature_dim)
    features[torch.arange(count), :, labels] = 1.0
    features[:, :, -1] = loud[:, None]
    return {"features": features, "rep": rep, "label": labels}


SHAPE = GeneratorShape(feature_dim=8, rep_dim=12, steps=10, num_classes=3)


def test_flow_matching_is_listed_from_its_own_plugin() -> None:
    component = get_component("generator", "flow_matching")
    assert component.plugin == "flow"
    assert get_component("loss", "flow_matching_mse").plugin == "flow"


def test_training_learns_the_conditional_velocity_and_samples_carry_the_video() -> None:
    torch.manual_seed(0)
    model = flow(SHAPE, hidden=32, blocks=2, dropout=0.0)
    data = toy_data(96, SHAPE)
    model.prepare(data)
    loss = create("loss", "flow_matching_mse")
    class_nll = create("loss", "class_nll")  # trains the class head the flow is conditioned on, as the recipes do
    optimizer = torch.optim.Adam(model.parameters(), lr=5e-3)
    model.eval()
    with torch.no_grad():
        before = float(loss(model.training_outputs(data), data))  # eval mode: fixed t and noise from the seed
    model.train()
    for step in range(500):
        index = torch.randint(0, 96, (32,))
        batch = {k: v[index] for k, v in data.items()}
        outputs = model.training_outputs(batch)
        value = loss(outputs, batch) + 0.1 * class_nll(outputs, batch)
        optimizer.zero_grad()
        value.backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        after = float(loss(model.training_outputs(data), data))
        sampled = model(data["features"])["rep"]
    # E||x1 - x0||^2 is about 2 per value for unit-variance data and noise; the learned velocity explains most of it
    assert before > 1.5 and after < 0.6 * before
    # samples land near their own clip's representation, closer than the mean representation is (0.51 measured)
    own = (sampled - data["rep"]).square().mean()
    mean_rep = (data["rep"].mean(0, keepdim=True) - data["rep"]).square().mean()
    assert own < 0.75 * mean_rep
    # and carry the class the video shows: the class mean closest in cosine is the clip's class (chance 1/3;
    # the real reps score 1.0 and the samples 0.92-1.0 over seeds)
    unit = torch.nn.functional.normalize
    class_means = torch.stack([data["rep"][data["label"] == c].mean(0) for c in range(SHAPE.num_classes)])
    nearest = (unit(sampled.flatten(1), dim=1) @ unit(class_means.flatten(1), dim=1).T).argmax(1)
    assert (nearest == data["label"]).float().mean() > 0.8
    # --material: forcing another class moves the samples to that class (the class condition is one-hot there)
    forced = (data["label"] + 1) % SHAPE.num_classes
    with torch.no_grad():
        moved = model.class_outputs(data["features"], forced)
    nearest = (unit(moved["rep"].flatten(1), dim=1) @ unit(class_means.flatten(1), dim=1).T).argmax(1)
    assert (nearest == forced).float().mean() > 0.8
    assert torch.equal(moved["probs"].argmax(1), forced) and torch.equal(moved["video_probs"].argmax(1),
                                                                           model(data["features"])["probs"].argmax(1))


def test_eval_mode_training_outputs_are_deterministic_and_the_one_step_estimate_is_exact_for_the_true_velocity() -> None:
    model = flow(SHAPE, hidden=16, blocks=1)
    data = toy_data(16, SHAPE)
    model.prepare(data)
    model.eval()
    first, second = model.training_outputs(data), model.training_outputs(data)
    assert torch.equal(first["velocity"], second["velocity"])
    assert torch.equal(first["velocity_target"], second["velocity_target"])
    # with v = x1 - x0 the one-step estimate x_t + (1 - t) v is x1, i.e. the clip's own representation
    class TrueVelocity(torch.nn.Module):
        def forward(self, x, t, frames, clip, probs):
            return (model.normalise(data["rep"]) - x) / (1 - t)[:, None, None]

    model.net = TrueVelocity()
    out = model.training_outputs(data)
    torch.testing.assert_close(out["rep"], data["rep"], rtol=1e-4, atol=1e-4)


def euler_reference(velocity, x, steps):
    """A hand-written Euler loop, independent of the plugin's integrate."""
    for i in range(steps):
        x = x + velocity(x, i / steps) / steps
    return x


@pytest.mark.parametrize("sampler, order", [("euler", 1), ("midpoint", 2), ("heun", 2)])
def test_samplers_solve_a_known_ode_with_their_order(sampler: str, order: int) -> None:
    from avgen_flow import integrate

    # dx/dt = x cos(t): x(1) = x(0) exp(sin 1)
    x0 = torch.tensor([1.0, -2.0], dtype=torch.float64)
    exact = x0 * math.exp(math.sin(1.0))
    errors = [float((integrate(lambda x, t: x * math.cos(t), x0, n, sampler) - exact).abs().max()) for n in (8, 16, 32)]
    ratios = [errors[i] / errors[i + 1] for i in range(2)]
    assert all(2 ** order * 0.8 < r < 2 ** order * 1.25 for r in ratios), (errors, ratios)
    if sampler == "euler":
        torch.testing.assert_close(integrate(lambda x, t: x * math.cos(t), x0, 8, "euler"),
                                   euler_reference(lambda x, t: x * math.cos(t), x0, 8))


def trained_toy_model(**params):
    torch.manual_seed(1)
    model = flow(SHAPE, hidden=16, blocks=1, **params)
    data = toy_data(32, SHAPE)
    model.prepare(data)
    with torch.no_grad():  # weights away from the zero init of the last convs, so the network depends on its inputs
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return model.eval(), data


def test_sampling_is_deterministic_under_a_seed_and_independent_of_the_batch() -> None:
    model, data = trained_toy_model(steps=4, sampler="heun")
    with torch.no_grad():
        whole = model(data["features"])["rep"]
        again = model(data["features"])["rep"]
        alone = torch.cat([model(data["features"][i:i + 1])["rep"] for i in range(4)])
        torch.manual_seed(123)  # the global RNG plays no part
        after_reseed = model(data["features"])["rep"]
    assert torch.equal(whole, again) and torch.equal(whole, after_reseed)
    torch.testing.assert_close(alone, whole[:4], rtol=1e-5, atol=1e-5)
    other, _ = trained_toy_model(steps=4, sampler="heun", seed=7)
    other.load_state_dict(model.state_dict())
    with torch.no_grad():
        reseeded = other(data["features"])["rep"]
    assert (reseeded - whole).abs().max() > 1e-2  # another seed, another sample


def test_guidance_zero_uses_the_conditional_velocity_and_guidance_extrapolates_from_the_null_video() -> None:
    model, data = trained_toy_model(steps=3, sampler="euler", guidance=0.0)
    features = data["features"][:5]
    p = model.params
    noise = torch.randn(SHAPE.rep_dim, SHAPE.steps, generator=torch.Generator().manual_seed(p.seed))
    x0 = noise.expand(5, -1, -1)
    net = model.net
    cond = (features, features.mean(1))
    null = model.null_video.expand_as(features)
    uncond = (null, null.mean(1))
    probs = model.class_head(features.mean(1)).softmax(-1)  # the class condition, the same in both halves

    def v(c):
        return lambda x, t: net(x, torch.full((x.shape[0],), t), *c, probs)

    with torch.no_grad():
        plain = model(features)["rep"]
        expected_plain = model.denormalise(euler_reference(v(cond), x0, 3))
        model.params = p.model_copy(update={"guidance": 2.0})
        guided = model(features)["rep"]
        expected_guided = model.denormalise(euler_reference(
            lambda x, t: v(cond)(x, t) + 2.0 * (v(cond)(x, t) - v(uncond)(x, t)), x0, 3))
    torch.testing.assert_close(plain, expected_plain, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(guided, expected_guided, rtol=1e-4, atol=1e-4)
    assert (guided - plain).abs().max() > 1e-2


@pytest.mark.parametrize("representation, params", [("stft", {"n_fft": 512, "hop_length": 128, "compression": "log"}),
                                                    ("cochleagram", {})])
def test_shapes_on_the_stft_and_the_cochleagram(representation: str, params: dict) -> None:
    rep = create("representation", representation, **params)
    rate = rep.sample_rate
    samples = rate // 4
    t = torch.arange(samples) / rate
    waves = torch.stack([torch.sin(2 * math.pi * f * t) * torch.exp(-8 * t) for f in (220.0, 440.0, 880.0, 1760.0)])
    reps = rep.encode(waves)
    shape = GeneratorShape(feature_dim=6, rep_dim=rep.dim, steps=rep.frames(samples), num_classes=2)
    assert reps.shape == (4, shape.rep_dim, shape.steps)
    model = flow(shape, hidden=16, blocks=2, steps=2)
    batch = {"features": torch.randn(4, 3, 6), "rep": reps, "label": torch.tensor([0, 1, 0, 1])}
    model.prepare(batch)
    model.train()
    out = model.training_outputs(batch)
    assert out["velocity"].shape == out["velocity_target"].shape == out["rep"].shape == reps.shape
    assert out["probs"].shape == (4, 2)
    model.eval()
    with torch.no_grad():
        sampled = model(batch["features"])["rep"]
        wave = rep.decode(sampled, phase=rep.phases[0], length=samples)
    assert sampled.shape == reps.shape and torch.isfinite(sampled).all()
    assert wave.shape == (4, samples) and torch.isfinite(wave).all()


def test_a_checkpoint_restores_the_statistics_and_an_unprepared_model_says_what_to_do() -> None:
    from avgen import AvgenError

    model, data = trained_toy_model(steps=2)
    fresh = flow(SHAPE, hidden=16, blocks=1, steps=2).eval()
    with pytest.raises(AvgenError, match="prepare"):
        fresh(data["features"])
    fresh.load_state_dict(model.state_dict())
    with torch.no_grad():
        assert torch.equal(fresh(data["features"])["rep"], model(data["features"])["rep"])


def test_base_sample_makes_the_flow_a_residual_to_the_class_mean_of_the_true_or_predicted_class() -> None:
    from avgen import AvgenError

    data = toy_data(48, SHAPE)
    data["label"][:3] = -1  # unlabelled clips: their base is the global mean (0 after normalisation)
    model = flow(SHAPE, hidden=16, blocks=1, steps=4, base_sample=True, guidance=0.0)
    model.prepare(data)
    model.eval()
    labelled = data["label"] >= 0
    class_means = torch.stack([data["rep"][labelled & (data["label"] == c)].mean(0) for c in range(SHAPE.num_classes)])

    class TrueVelocity(torch.nn.Module):  # the exact velocity towards the residual of each clip
        def forward(self, x, t, frames, clip, probs):
            target = model.normalise(data["rep"]) - model.normalise(class_means)[data["label"].clamp_min(0)] \
                * labelled[:, None, None]
            return (target - x) / (1 - t)[:, None, None]

    net = model.net
    model.net = TrueVelocity()
    with torch.no_grad():
        out = model.training_outputs(data)  # the one-step estimate adds the true class's base back: the clip itself
    torch.testing.assert_close(out["rep"], data["rep"], rtol=1e-4, atol=1e-4)

    class NoVelocity(torch.nn.Module):
        def forward(self, x, t, frames, clip, probs):
            return torch.zeros_like(x)

    model.net = NoVelocity()
    noise = torch.randn(SHAPE.rep_dim, SHAPE.steps, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        sampled = model(data["features"])
        forced = model.class_outputs(data["features"], torch.full((48,), 2))
    predicted = sampled["probs"].argmax(-1)
    # no velocity: the sample is the starting noise on the base of the class head's argmax (or the forced class)
    torch.testing.assert_close(sampled["rep"], class_means[predicted] + noise * model.rep_std, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(forced["rep"], (class_means[2] + noise * model.rep_std).expand(48, -1, -1),
                               rtol=1e-4, atol=1e-4)
    # the base samples travel in the state dict
    model.net = net
    fresh = flow(SHAPE, hidden=16, blocks=1, steps=4, base_sample=True, guidance=0.0).eval()
    fresh.load_state_dict(model.state_dict())
    with torch.no_grad():
        assert torch.equal(fresh(data["features"])["rep"], model(data["features"])["rep"])
    with pytest.raises(AvgenError, match="class head"):
        flow(SHAPE, base_sample=True, class_head=False, class_condition=False)


def test_residual_scale_scales_the_flows_residual_to_the_base_sample_and_zero_gives_the_base_sample() -> None:
    from avgen import AvgenError
    from avgen_flow.params import FlowParams

    data = toy_data(24, SHAPE)
    torch.manual_seed(0)
    full = flow(SHAPE, hidden=16, blocks=1, steps=3, base_sample=True, temperature=0.3)
    full.prepare(data)
    with torch.no_grad():  # the last convolution starts at zero: give the flow a residual to scale
        full.net.out.weight.normal_(0, 0.5)
    full.eval()
    models = {}
    for scale in (0.0, 0.5):
        models[scale] = flow(SHAPE, hidden=16, blocks=1, steps=3, base_sample=True, temperature=0.3,
                             residual_scale=scale).eval()
        models[scale].load_state_dict(full.state_dict())  # the same weights: only the sampler differs
    with torch.no_grad():
        out = full(data["features"])
        half, zero = (models[s](data["features"]) for s in (0.5, 0.0))
    base = full.base(out["probs"].argmax(-1))
    residual = full.normalise(out["rep"]) - base
    assert float(residual.abs().mean()) > 0.1  # the flow's sample is not its base sample
    torch.testing.assert_close(half["rep"], full.denormalise(base + 0.5 * residual), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(zero["rep"], full.denormalise(base), rtol=1e-6, atol=1e-6)  # the class mean itself
    torch.testing.assert_close(zero["probs"], out["probs"])  # the class head is not touched
    # a recipe without the key resolves as before (its id and the runs recorded before it stay the same)
    assert "residual_scale" not in FlowParams().model_dump()
    assert FlowParams(residual_scale=0.0).model_dump()["residual_scale"] == 0.0
    with pytest.raises(AvgenError, match="base_sample"):
        flow(SHAPE, residual_scale=0.5)


def test_frame_probs_pooling_averages_the_per_frame_probabilities_of_the_same_head() -> None:
    data = toy_data(8, SHAPE)
    data["features"] = torch.randn(8, 3, SHAPE.feature_dim, generator=torch.Generator().manual_seed(1))
    pooled = flow(SHAPE, hidden=16, blocks=1, class_pooling="frame_probs")
    mean = flow(SHAPE, hidden=16, blocks=1)
    mean.load_state_dict(pooled.state_dict())  # the same head weights: only the pooling differs
    weight, bias = pooled.class_head.weight, pooled.class_head.bias
    by_hand = torch.stack([(data["features"][:, n] @ weight.T + bias).softmax(-1) for n in range(3)]).mean(0)
    with torch.no_grad():
        torch.testing.assert_close(pooled.class_logits(data["features"]).softmax(-1), by_hand)
        torch.testing.assert_close(mean.class_logits(data["features"]).softmax(-1),
                                   (data["features"].mean(1) @ weight.T + bias).softmax(-1))


def test_material_needs_a_class_conditioned_model() -> None:
    from avgen import AvgenError

    model, data = trained_toy_model(steps=2, class_condition=False)
    with pytest.raises(AvgenError, match="class_condition"):
        model.class_outputs(data["features"], data["label"])


def test_the_loss_names_what_it_needs() -> None:
    from avgen import AvgenError

    loss = create("loss", "flow_matching_mse")
    with pytest.raises(AvgenError, match="flow_matching"):
        loss({"rep": torch.zeros(2, 3, 4)}, {})


RECIPE = """
[run]
name = "flow_tiny"
seed = 0

[data]
name = "synthetic_hits"
root = "data"
videos = 6
classes = 3
video_seconds = 4.0

[encoder]
name = "mean_color"
fps = 8
input_size = 32

[representation]
name = "stft"
n_fft = 512
hop_length = 128
compression = "log"
n_iter = 4

[generator]
name = "flow_matching"
hidden = 16
blocks = 1
steps = 2

[[loss]]
name = "flow_matching_mse"

[[loss]]
name = "class_nll"
weight = 0.1

[train]
epochs = 3
batch_size = 8

[[metric]]
name = "recall_at_k"
"""


def test_a_flow_recipe_runs_end_to_end_and_generate_overrides_steps_and_guidance(tmp_path: Path, example_plugin: None,
                                                                                 capsys: pytest.CaptureFixture[str],
                                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    import av
    import numpy as np

    (tmp_path / "flow.toml").write_text(RECIPE)
    # the CLI entry point in this process (the real `python -m avgen run` and `generate` run in conftest.py's
    # tiny_run and in test_generate.py)
    monkeypatch.setenv("AVGEN_HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    code, _, lines = avgen_in_process(capsys, "run", "flow.toml", "--out", "runs")
    assert code == 0, lines[-20:]
    run_dir = tmp_path / "runs" / "flow_tiny"
    fit = json.loads((run_dir / "stages.json").read_text())["stages"]["fit"]
    assert set(fit["val"]) >= {"flow_matching_mse", "class_nll"}
    assert "recall_at_k" in json.loads((run_dir / "metrics.json").read_text())
    video = next((tmp_path / "data").rglob("*.mp4"))
    outputs = {}
    for name, extra in {"default": [], "guided": ["--set", "generator.guidance=3", "--set", "generator.steps=3"]}.items():
        out = tmp_path / f"{name}.mp4"
        code, _, lines = avgen_in_process(capsys, "generate", str(video), "--run", str(run_dir), "-o", str(out), *extra)
        assert code == 0, lines[-20:]
        with av.open(str(out)) as container:
            assert any(s.type == "audio" for s in container.streams)
        import soundfile

        outputs[name], _ = soundfile.read(out.with_suffix(".wav"))
    assert outputs["default"].shape == outputs["guided"].shape
    assert np.abs(outputs["default"] - outputs["guided"]).max() > 1e-3  # the override reached the sampler
    # bad settings
    code, _, lines = avgen_in_process(capsys, "generate", str(video), "--run", str(run_dir), "--set", "generator.steps=0",
                                      "-o", str(tmp_path / "bad"))
    assert code == 2 and len(lines) == 1, lines
    code, _, lines = avgen_in_process(capsys, "generate", str(video), "--run", str(run_dir), "--set", "train.epochs=3",
                                      "-o", str(tmp_path / "bad"))
    assert code == 2 and "generator" in lines[-1], lines
