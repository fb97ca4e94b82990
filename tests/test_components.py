"""Every registered component, of all eight kinds: built with defaults, one call on tiny inputs, contract checked.

Like timm's test over ``list_models()``: a component a plugin registers (built in or installed)
is picked up here without a line of test code of its own.
"""

from __future__ import annotations

import ast
import warnings
from pathlib import Path

import pytest
import torch

import avgen
from avgen import BuildContext, EvalContext, GeneratorShape
from avgen._core.components import BASES
from conftest import REPO

RATE = 8000
SHAPE = GeneratorShape(feature_dim=6, rep_dim=9, steps=5, num_classes=3)
ALL = [(c.kind, c.name) for c in avgen.list_components()]
SIZE = {"alexnet": 64}  # the smallest input each encoder takes (others: 32 px)
NEEDS_WEIGHTS = {"soundnet_perceptual", "soundnet_fd"}  # SoundNet's converted weights (fetched once per test cache)

pytestmark = pytest.mark.usefixtures("one_thread")


def test_every_kind_has_components_and_no_builtin_plugin_is_broken():
    from avgen._core.plugins import get_plugins

    assert {kind for kind, _ in ALL} == set(avgen.KINDS)
    broken = {name: info.error for name, info in get_plugins().info.items() if info.broken}
    assert not broken


def defaults_for(kind: str, name: str, tmp_path: Path) -> dict:
    """The few params a tiny, offline build needs (random weights, small inputs, data in tmp_path)."""
    fields = avgen.get_component(kind, name).params.model_fields
    wanted = {"weights": "none", "input_size": SIZE.get(name, 32), "root": str(tmp_path / "data"),
              "sample_rate": RATE, "n_iter": 2}
    if (kind, name) == ("representation", "stft"):
        wanted.update(n_fft=16, hop_length=4)
    return {k: v for k, v in wanted.items() if k in fields}


def build(kind: str, name: str, tmp_path: Path, **context):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # random weights warn
        return avgen.create(kind, name, context=BuildContext(**context), **defaults_for(kind, name, tmp_path))


def stft(tmp_path: Path):
    return build("representation", "stft", tmp_path)


@pytest.mark.parametrize("kind,name", ALL, ids=[f"{k}-{n}" for k, n in ALL])
def test_component_builds_runs_once_and_keeps_its_contract(kind, name, tmp_path, monkeypatch):
    if name in NEEDS_WEIGHTS:
        from soundnet_support import converted_home

        monkeypatch.setenv("AVGEN_HOME", str(converted_home()))
    try:
        obj = build(kind, name, tmp_path, shape=SHAPE, representation=stft(tmp_path))
    except avgen.AvgenError as exc:  # a real dataset that is not on disk: one line saying what to put where
        assert kind == "dataset" and "\n" not in str(exc) and str(tmp_path / "data") in str(exc), exc
        return
    assert isinstance(obj, BASES[kind]) or all(hasattr(obj, attr) for attr in BASES[kind].REQUIRED)
    card = avgen.get_component(kind, name).card
    assert isinstance(card, avgen.Card)
    globals()[f"once_{kind}"](obj, tmp_path)


def once_encoder(encoder, tmp_path):
    frames = torch.randint(0, 256, (2, encoder.input_size, encoder.input_size, 3), dtype=torch.uint8)
    out = encoder.encode(frames)
    assert out.shape == (2, encoder.dim) and out.dtype == torch.float32 and torch.isfinite(out).all()


def once_representation(rep, tmp_path):
    wave = torch.randn(2, rep.sample_rate // 8)
    encoded = rep.encode(wave)
    assert encoded.shape == (2, rep.dim, rep.frames(wave.shape[1]))
    for phase in rep.phases:
        out = rep.decode(encoded, phase=phase, reference=wave, length=wave.shape[1])
        assert out.shape == wave.shape and torch.isfinite(out).all(), phase
    assert rep.frame_hop is None or rep.frame_hop > 0


def train_split(n: int = 12) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {"features": torch.randn(n, 4, SHAPE.feature_dim, generator=g),
            "rep": torch.rand(n, SHAPE.rep_dim, SHAPE.steps, generator=g),
            "label": torch.arange(n) % SHAPE.num_classes, "wave": torch.randn(n, 16, generator=g)}


def once_generator(generator, tmp_path):
    train = train_split()
    generator.prepare(train)
    outputs = generator.training_outputs(train)
    assert outputs["rep"].shape == (12, SHAPE.rep_dim, SHAPE.steps)
    outputs["rep"].square().mean().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in generator.parameters())
    generator.eval()
    plain = generator(train["features"])
    probabilities = generator.class_probabilities(plain)
    assert probabilities is None or probabilities.shape == (12, SHAPE.num_classes)
    assert generator.mean_outputs(train, 3)["rep"].shape == (3, SHAPE.rep_dim, SHAPE.steps)


def once_loss(loss, tmp_path):
    rep = stft(tmp_path)
    wave = torch.randn(4, RATE // 2)
    real = rep.encode(wave)
    outputs = {"rep": real + 0.1, "probs": torch.full((4, SHAPE.num_classes), 1 / SHAPE.num_classes),
               # what a flow generator adds (flow_matching_mse scores these)
               "velocity": torch.ones_like(real), "velocity_target": torch.zeros_like(real)}
    if loss.needs_wave:
        outputs["wave"] = rep.decode(outputs["rep"], phase="given", reference=wave, length=wave.shape[1])
    batch = {"rep": real, "wave": wave, "label": torch.tensor([0, 1, 2, 0]), "features": torch.zeros(4, 2, 3)}
    value = loss(outputs, batch)
    assert value.shape == () and torch.isfinite(value) and float(value) > 0


def once_dataset(dataset, tmp_path):
    try:
        dataset.prepare()
    except avgen.AvgenError as exc:  # a real dataset that is not on disk says what to put where, in one line
        assert "\n" not in str(exc) and str(tmp_path / "data") in str(exc)
        return
    clips = dataset.clips("train")
    assert clips and dataset.class_names
    assert all(isinstance(row, str) for row in dataset.skipped_rows("train"))
    audio = dataset.load_audio(clips[0])
    assert audio.shape == (round(clips[0].duration * dataset.sample_rate),)


def once_detector(detector, tmp_path):
    g = torch.Generator().manual_seed(0)
    frames = torch.randint(0, 256, (12, detector.input_size, detector.input_size, 3), dtype=torch.uint8, generator=g)
    strength = detector.strength(frames)
    assert strength.shape == (12,) and torch.isfinite(strength).all() and (strength >= 0).all()
    events = detector.detect(frames)
    assert events.ndim == 2 and events.shape[1] == 2
    assert ((events[:, 0] >= 0) & (events[:, 0] <= 12 / detector.fps)).all() and ((events[:, 1] >= 0) & (events[:, 1] <= 1)).all()
    assert torch.equal(events[:, 0], events[:, 0].sort().values)


def once_index(index, tmp_path):
    g = torch.Generator().manual_seed(0)
    bank = torch.randn(48, 9, generator=g)
    assert index.build(bank) is index
    scores, indices = index.search(bank[:4] * 3, 5)  # each row's nearest is itself (cosine 1)
    assert scores.shape == indices.shape == (4, 5) and indices.dtype == torch.long
    assert indices[:, 0].tolist() == [0, 1, 2, 3] and torch.all(scores[:, :-1] >= scores[:, 1:])
    assert index.search(bank[:2], 100)[1].shape == (2, 48)  # k is clipped to the bank


def once_metric(metric, tmp_path):
    g = torch.Generator().manual_seed(0)
    real = torch.randn(6, RATE // 2, generator=g) * 0.1
    train = torch.randn(12, RATE // 2, generator=g) * 0.1
    rep = stft(tmp_path)
    ctx = EvalContext(run_dir=tmp_path, sample_rate=RATE, class_names=["a", "b", "c"], test_ids=[str(i) for i in range(6)],
                      test_labels=torch.arange(6) % 3, real_waves=real, real_reps=rep.encode(real),
                      train_labels=torch.arange(12) % 3, train_waves=lambda: train,
                      train_bank=lambda: avgen.time_average(rep.encode(train)), predicted_reps=rep.encode(real.flip(1)),
                      generated={"raw": real.flip(1), "exemplar": train[:6]}, retrieved=torch.arange(6)[:, None] + torch.arange(3),
                      representation=rep)
    out = metric.compute(ctx)
    assert isinstance(out, dict) and all(isinstance(v, (int, float)) for v in out.values())


PUBLIC_MODULE = "avgen"


def plugin_files() -> list[Path]:
    return sorted([*(REPO / "plugins").rglob("*.py"), *(REPO / "examples").rglob("*.py")])


def test_plugins_import_only_the_public_api():
    """``from avgen import X`` or ``import avgen``; a private core module (avgen._core.runner, ...) is off limits."""
    offenders = []
    for path in plugin_files():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else []
            offenders += [f"{path.relative_to(REPO)}:{node.lineno} {n}" for n in names if n.startswith(PUBLIC_MODULE + ".")]
    assert not offenders, "plugins import private core modules:\n" + "\n".join(offenders)


def test_every_public_name_resolves():
    for name in avgen.__all__:
        assert getattr(avgen, name) is not None, name


@pytest.mark.parametrize("phase", ["given", "random"])
def test_a_phase_the_representation_does_not_declare_is_one_line_before_the_run_starts(
        phase, tmp_path, capsys, avgen_home, example_plugin):
    """mel declares only griffin_lim; 'given' never fits eval.phase (generated sound has no reference)."""
    from conftest import EXAMPLE, avgen_in_process

    code, _, errors = avgen_in_process(capsys, "run", str(EXAMPLE / "tones_generate.toml"), "--out", str(tmp_path / "runs"),
                                       "--set", f"eval.phase={phase}")
    assert code == 2 and errors == [f"error: {EXAMPLE / 'tones_generate.toml'}: eval.phase = '{phase}': "
                                    "representation 'mel' decodes with griffin_lim"]
    assert not (tmp_path / "runs").exists()
