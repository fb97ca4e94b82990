"""Interruptions and NaN input: kill -9 or Ctrl-C at random points, then resume to the same result.

The kill delays come from a seeded random generator and are printed, so a failure can be
replayed. In-process resume and the NaN training-loss stop are checked in test_train_fit.py
(test_resumed_run_ends_with_the_same_weights, test_nan_loss_stops_and_keeps_the_last_good_checkpoint);
a kill during featurize with the example recipe in test_run.py. This file adds NaN in the input
(audio, features) and in the validation loss.
"""

from __future__ import annotations

import random
import signal
import time
from pathlib import Path

import pytest
import torch

import avgen
from avgen._core.atomic import stale_temp_files
from avgen._core.cache import FeatureCache
from avgen._core.checkpoint import load_checkpoint
from avgen._core.errors import AvgenError
from avgen import GeneratorShape
from avgen._core.recipe import TrainParams
from avgen._core.recipefiles import load_recipe
from avgen._core.runner import Run
from avgen._core.train import WeightedLoss, fit
from reliability_support import (
    EPOCHS, assert_same_result, checkpoint_epoch, cli_in_process, ledger, reference_run, run_args, run_cli, stage_seconds,
    start_cli, wait_for_log, write_recipe,
)

pytestmark = pytest.mark.usefixtures("example_plugin")  # the tones dataset and mean_color encoder

KILL_SEED = 20240611  # fixed: the same kill delays on every run of the tests
BIG = ("data.clips_per_class=100", "encoder.fps=30", "encoder.input_size=128", "train.epochs=40")


def kill_mid_epoch(proc, run_dir: Path, after: int, fraction: float, occurrence: int, sig: int = signal.SIGKILL) -> dict:
    """Let the run finish epoch ``after`` and two more, timing those two (the pace of this run under whatever
    load the machine has), then send ``sig`` ``fraction`` of an epoch later; where it landed.

    The pace is measured live: a reference run's fit stage time divided by its epochs is mostly set-up,
    plotting and checkpoint writes (8x one epoch on the development machine), and a neighbour's load
    changes it; a delay taken from it landed the kill in the last epoch or after fit had ended."""
    wait_for_epoch(run_dir, after, proc)
    started = time.monotonic()
    wait_for_epoch(run_dir, after + 2, proc)
    epoch_seconds = (time.monotonic() - started) / 2
    return {"epoch_s": round(epoch_seconds, 4), **interrupt(proc, run_dir, "fit", occurrence, fraction * epoch_seconds, sig)}


def interrupt(proc, run_dir: Path, stage: str, occurrence: int, delay: float, sig: int = signal.SIGKILL) -> dict:
    """Wait for the ``occurrence``-th start of ``stage``, sleep ``delay`` s, send ``sig``; where it landed."""
    wait_for_log(run_dir, f"stage {stage} started", occurrence, proc)
    time.sleep(delay)
    alive = proc.poll() is None
    done_before = list(ledger(run_dir))
    proc.send_signal(sig)
    code = proc.wait(timeout=120)
    return {"stage": stage, "delay_s": round(delay, 3), "hit_running_process": alive, "exit": code,
            "stages_done": done_before, "checkpoint_epoch": checkpoint_epoch(run_dir)}


def test_kill9_during_fit_then_resume_gives_the_same_checkpoints_and_metrics(tmp_path, tmp_path_factory, capsys,
                                                                            monkeypatch, one_thread):
    """One kill -9 mid-fit; the rerun (in this process, one thread like the subprocesses) resumes to the same end."""
    reference = reference_run(tmp_path_factory)
    rng = random.Random(KILL_SEED)
    target, fraction = rng.randrange(1, EPOCHS - 8), rng.random()  # at most epoch 7 + 2 timed ones of 16
    plan = f"kill -9 {fraction:.3f} of an epoch after epoch {target + 2}; seed {KILL_SEED}"
    recipe, out, home = write_recipe(tmp_path), tmp_path / "runs", tmp_path / "home"
    run_dir = out / "tiny"
    proc = start_cli(run_args(recipe, out), home, tmp_path / "killed.err")
    landed = kill_mid_epoch(proc, run_dir, target, fraction, 1)
    with capsys.disabled():
        print(f"\n{plan}\n  landed: {landed}")
    assert landed["hit_running_process"] and landed["exit"] == -signal.SIGKILL, landed
    assert "fit" not in landed["stages_done"], f"the kill came after fit had finished: {landed}"

    monkeypatch.setenv("AVGEN_HOME", str(home))
    code, lines, _ = cli_in_process(capsys, *run_args(recipe, out))
    assert code == 0, lines[-20:]
    said = "".join("".join(lines).split())  # compared without white space: the console wraps long lines anywhere
    assert "featurize:doneearlier,skipped" in said
    if landed["checkpoint_epoch"]:
        resuming = f"resuming from {run_dir / 'checkpoints' / 'last.safetensors'} (epoch {landed['checkpoint_epoch']})"
        assert "".join(resuming.split()) in said
    assert list(ledger(run_dir)) == ["prepare", "featurize", "fit", "generate", "evaluate", "report"]
    assert_same_result(run_dir, reference)
    assert stale_temp_files(run_dir) == []


def test_ctrl_c_during_fit_stops_cleanly_and_resuming_gives_the_same_result(tmp_path, tmp_path_factory, capsys,
                                                                             monkeypatch, one_thread):
    reference = reference_run(tmp_path_factory)
    rng = random.Random(KILL_SEED + 1)
    target, fraction = rng.randrange(1, EPOCHS - 8), rng.random()
    plan = f"SIGINT {fraction:.3f} of an epoch after epoch {target + 2}; seed {KILL_SEED + 1}"
    recipe, out, home = write_recipe(tmp_path), tmp_path / "runs", tmp_path / "home"
    proc = start_cli(run_args(recipe, out), home, tmp_path / "interrupted.err")
    landed = kill_mid_epoch(proc, out / "tiny", target, fraction, 1, sig=signal.SIGINT)
    with capsys.disabled():
        print(f"\n{plan}\n  landed: {landed}")
    assert landed["exit"] == 130 and "fit" not in landed["stages_done"], landed
    assert "Traceback" not in (tmp_path / "interrupted.err").read_text()
    assert stale_temp_files(out / "tiny") == []  # a KeyboardInterrupt mid-write removes its temp file

    monkeypatch.setenv("AVGEN_HOME", str(home))
    code, lines, _ = cli_in_process(capsys, *run_args(recipe, out))
    assert code == 0, lines[-20:]
    assert_same_result(out / "tiny", reference)


def test_ctrl_c_prints_the_resume_hint(tmp_path, monkeypatch, capsys):
    from avgen._core.cli import main

    def interrupted(self, only=None, fresh=False, last=None):
        raise KeyboardInterrupt

    monkeypatch.setattr(Run, "execute", interrupted)
    with pytest.raises(SystemExit) as exit_info:
        main(["run", str(write_recipe(tmp_path)), "--out", str(tmp_path / "runs")])
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert exit_info.value.code == 130
    assert lines[-1].startswith("interrupted; finished stages and checkpoints are kept, rerun the same command to")
    with pytest.raises(SystemExit) as exit_info:  # the same command would start over: it says to leave --fresh out
        main(["run", str(write_recipe(tmp_path)), "--out", str(tmp_path / "runs"), "--fresh"])
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert exit_info.value.code == 130 and lines[-1].endswith("rerun the same command without --fresh to resume"), lines


@pytest.mark.slow
def test_repeated_kill9_in_featurize_and_fit_then_resume_gives_the_same_result(tmp_path, tmp_path_factory, capsys):
    """One kill during featurize, then four during fit at random epochs and random points inside them (each
    resumed run is killed again), then a clean finish."""
    reference = reference_run(tmp_path_factory, *BIG)
    featurize_seconds, fit_seconds = stage_seconds(reference, "featurize"), stage_seconds(reference, "fit")
    epochs = int(BIG[-1].split("=")[1])
    clips = 3 * int(BIG[0].split("=")[1])
    rng = random.Random(KILL_SEED + 2)
    featurize_share = rng.uniform(0.2, 0.8)  # kill once this share of the clips is in the cache (progress, not time)
    # kill once the checkpoint reaches target + 2 (two epochs timed), this far into the next epoch; the targets are
    # 4 epochs apart so that the four kills land at four different epochs
    targets = [4 * k for k in sorted(rng.sample(range(1, (epochs - 8) // 4 + 1), 4))]
    fractions = [rng.random() for _ in targets]
    recipe, out, home = write_recipe(tmp_path), tmp_path / "runs", tmp_path / "home"
    run_dir = out / "tiny"
    proc = start_cli(run_args(recipe, out, *BIG), home, tmp_path / "killed0.err")
    wait_for_cache_entries(home / "cache", round(featurize_share * clips), proc)
    landings = [interrupt(proc, run_dir, "featurize", 1, 0.0)]
    for number, (target, fraction) in enumerate(zip(targets, fractions), start=1):
        proc = start_cli(run_args(recipe, out, *BIG), home, tmp_path / f"killed{number}.err")
        landed = kill_mid_epoch(proc, run_dir, target, fraction, number)
        landings.append({"after_epoch": target + 2, **landed})
    with capsys.disabled():
        print(f"\nreference: featurize {featurize_seconds:.2f} s, fit {fit_seconds:.2f} s; kill seed {KILL_SEED + 2}; "
              f"featurize killed at {featurize_share:.2f} of {clips} clips")
        for landed in landings:
            print("  kill -9:", landed)
    assert "featurize" not in landings[0]["stages_done"] and landings[0]["hit_running_process"], landings[0]
    for landed in landings[1:]:
        assert landed["hit_running_process"] and "fit" not in landed["stages_done"], landed
    assert len({x["checkpoint_epoch"] for x in landings[1:]}) == 4  # four different points of training

    resumed = run_cli(run_args(recipe, out, *BIG), home)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_same_result(run_dir, reference)
    assert stale_temp_files(run_dir) == []


def wait_for_cache_entries(cache: Path, count: int, proc, timeout: float = 600) -> None:
    """Wait until the feature cache holds ``count`` entries (clips featurized) while the process lives."""
    deadline = time.monotonic() + timeout
    while len(list(cache.glob("*/*.safetensors"))) < count:
        assert proc.poll() is None, f"the run ended (exit {proc.returncode}) before {count} clips were featurized"
        assert time.monotonic() < deadline, f"{count} clips were not featurized in {timeout} s"
        time.sleep(0.01)


def wait_for_epoch(run_dir: Path, epoch: int, proc, timeout: float = 300) -> None:
    """Wait until checkpoints/last holds ``epoch`` (or later) while the process lives."""
    deadline = time.monotonic() + timeout
    while (checkpoint_epoch(run_dir) or 0) < epoch:
        assert proc.poll() is None, f"the run ended (exit {proc.returncode}) before epoch {epoch}"
        assert time.monotonic() < deadline, f"epoch {epoch} was not reached in {timeout} s"
        time.sleep(0.005)


# ---------------------------------------------------------------- NaN in the input


class NanAudio:
    """A dataset that passes everything through but returns NaN samples for one clip (a damaged file)."""

    def __init__(self, inner, bad_id: str) -> None:
        self.inner, self.bad_id = inner, bad_id

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def load_audio(self, clip):
        wave = self.inner.load_audio(clip)
        if clip.id == self.bad_id:
            wave = wave.clone()
            wave[100:110] = float("nan")
        return wave


class NanFeatures:
    """An encoder whose features are NaN for the frames of the ``bad``-th clip of its first batch."""

    def __init__(self, inner, bad: int, frames: int) -> None:
        self.inner, self.bad, self.frames, self.calls = inner, bad, frames, 0

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def encode(self, frames: torch.Tensor) -> torch.Tensor:
        out = self.inner.encode(frames)
        self.calls += 1
        if self.calls == 1:
            out = out.clone()
            out[self.bad * self.frames : (self.bad + 1) * self.frames] = float("inf")
        return out


def tiny_run(tmp_path: Path, strict: bool = False) -> Run:
    recipe = load_recipe(write_recipe(tmp_path))
    return Run(recipe, tmp_path / "run", torch.device("cpu"), cache=FeatureCache(tmp_path / "cache"), strict=strict)


def test_nan_audio_is_caught_at_featurize_naming_the_clip(tmp_path):
    """By default the clip is skipped and listed in skipped.txt; with --strict (Run.strict) the run stops on it."""
    run = tiny_run(tmp_path / "default")
    bad = run.dataset.clips("train")[5]
    run._dataset = NanAudio(run.dataset, bad.id)
    run.execute(only="prepare")
    run.execute(only="featurize")
    skipped = (run.run_dir / "skipped.txt").read_text().splitlines()
    assert len(skipped) == 1 and skipped[0].startswith(f"train\tclip {bad.id}") and "NaN" in skipped[0], skipped
    train = run.featurized("train")
    assert bad.id not in [c.id for c in train.clips] and len(train.clips) == 35
    assert torch.isfinite(train.wave).all()

    strict = tiny_run(tmp_path / "strict", strict=True)
    strict._dataset = NanAudio(strict.dataset, bad.id)
    with pytest.raises(AvgenError, match=rf"^clip {bad.id}\b.*NaN or inf.*--strict"):
        strict.execute()
    assert list(ledger(strict.run_dir)) == ["prepare"]  # featurize is not marked done
    assert not (strict.run_dir / "checkpoints").exists()


def test_inf_features_stop_featurize_naming_the_clip(tmp_path):
    run = tiny_run(tmp_path)
    run.recipe.featurize.precision = "fp32"  # on a bf16 CPU, "auto"'s check would spend the first encode call
    bad = run.dataset.clips("train")[2]
    run.featurizer.encoder = NanFeatures(run.encoder, bad=2, frames=run.featurizer.sizes()[1])
    with pytest.raises(AvgenError, match=rf"^clip {bad.id} .*visual features contain NaN or inf"):
        run.execute()
    assert run.featurizer.encoder.calls >= 1


def test_a_nan_free_input_passes_the_same_check(tmp_path):
    """The control for the two tests above: the unwrapped dataset and encoder featurize without error."""
    run = tiny_run(tmp_path)
    run.execute(only="prepare")
    run.execute(only="featurize")
    assert torch.isfinite(run.featurized("train").wave).all() and torch.isfinite(run.featurized("train").features).all()


class NanInValidation:
    """spec_smooth_l1 in training, NaN in validation from the ``after``-th validation pass on."""

    needs_wave = False

    def __init__(self, after: int) -> None:
        self.after, self.passes = after, 0
        self.inner = avgen.create("loss", "spec_smooth_l1")

    def __call__(self, outputs, batch):
        value = self.inner(outputs, batch)
        if not torch.is_grad_enabled():
            self.passes += 1
            if self.passes >= self.after:
                return value * float("nan")
        return value


def test_nan_validation_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, one_thread):
    """The validation counterpart of test_train_fit.py's NaN-loss tests: one validation batch per epoch."""
    g = torch.Generator().manual_seed(0)
    shape = GeneratorShape(feature_dim=4, rep_dim=3, steps=5, num_classes=2)

    def split(n: int) -> dict[str, torch.Tensor]:
        return {"features": torch.randn(n, 2, 4, generator=g), "rep": torch.rand(n, 3, 5, generator=g),
                "label": torch.randint(0, 2, (n,), generator=g), "wave": torch.zeros(n, 8)}

    torch.manual_seed(0)
    model = avgen.create("generator", "owens_lstm", context={"shape": shape}, hidden=8)
    params = TrainParams(epochs=5, batch_size=16)
    with pytest.raises(AvgenError, match=r"^validation loss became nan at epoch 3; the last good checkpoint is kept at "
                                         r".*last\.safetensors"):
        fit(model=model, losses=[WeightedLoss("spec", 1.0, NanInValidation(after=3))], train=split(32),
            val=split(16), params=params, run_dir=tmp_path, seed=0, device=torch.device("cpu"))
    weights, state = load_checkpoint(tmp_path / "checkpoints" / "last.safetensors")
    assert state["epoch"] == 2 and [h["epoch"] for h in state["history"]] == [1, 2]
    assert all(torch.isfinite(v).all() for v in weights.values())
