"""``learned_contacts``: a small head on the motion features, trained from a dataset's annotated contact times.

Per frame three motion features (mean block change, motion energy, share of blocks that
changed; log scale) over a window of +-``window`` frames go through an MLP (hidden 32) to the
probability that the frame is a contact. ``avgen timing fit ROOT`` trains it on the videos of
a Greatest-Hits-layout folder and writes ``$AVGEN_HOME/weights/timing/learned_contacts.safetensors``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from avgen import AvgenError, BuildContext, Detector, atomic_path, weights_dir

from avgen_timing.detector import events
from avgen_timing.motion import motion_cells, motion_energy

CHANGED = 0.04  # a block changed when its mean brightness change exceeds this share of the frame's mean


def default_weights() -> Path:
    return weights_dir() / "timing" / "learned_contacts.safetensors"


class LearnedContactsParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    weights: str = Field("default", description="head file from `avgen timing fit`; 'default': $AVGEN_HOME/weights/timing/"
                                                "learned_contacts.safetensors; 'none': untrained (random) head")
    min_gap: float = Field(0.2, ge=0, le=10, description="two contacts are at least this far apart (s)")
    threshold: float = Field(0.5, ge=0, le=1, description="contacts with probability below this are dropped")


class Head(torch.nn.Module):
    def __init__(self, inputs: int, hidden: int = 32) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(inputs, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, 1))
        self.register_buffer("mean", torch.zeros(inputs))
        self.register_buffer("std", torch.ones(inputs))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x - self.mean) / self.std)[:, 0]


def frame_features(frames: torch.Tensor, settings: dict[str, Any]) -> torch.Tensor:
    """[N, 3 (2 window + 1)]: the log motion features of the frames around each frame (edges repeated)."""
    cells = motion_cells(frames, settings["max_shift"], settings["cell"])
    per_frame = torch.stack([cells.mean(1), motion_energy(cells, settings["top"]), (cells > CHANGED).float().mean(1)], 1)
    per_frame = torch.log(per_frame + 1e-3)
    w = settings["window"]
    padded = torch.cat([per_frame[:1].expand(w, -1), per_frame, per_frame[-1:].expand(w, -1)])
    return torch.stack([padded[i:i + per_frame.shape[0]] for i in range(2 * w + 1)], 1).flatten(1)


SETTINGS = {"fps": 30.0, "input_size": 128, "max_shift": 4, "cell": 4, "top": 0.02, "window": 6}


class LearnedContacts(Detector):
    """Contacts where the trained head's probability peaks."""

    def __init__(self, p: LearnedContactsParams, folder: Path | None = None) -> None:
        self.p = p
        self.settings = dict(SETTINGS)
        self.head = Head(3 * (2 * self.settings["window"] + 1)).eval()
        self.path: Path | None = None  # the head file, read on first use (a recipe's [detector] is built to be fitted)
        if p.weights != "none":
            self.path = default_weights() if p.weights == "default" else Path(p.weights)
            if folder is not None and not self.path.is_absolute() and p.weights != "default":
                self.path = folder / self.path  # a head kept in a run or model folder names it relative to it
        self.fps = self.settings["fps"]
        self.input_size = self.settings["input_size"]

    def trained_head(self) -> Head:
        """The head, read from its file on first use; one line when there is none."""
        if self.path is not None:
            if not self.path.is_file():
                raise AvgenError(f"learned_contacts: no head at {self.path}; train one with `avgen timing fit VIDEOS`"
                                 + ("" if self.p.weights == "default" else f" -o {self.path}"))
            self.head.load_state_dict(load_file(str(self.path)))
            self.path = None
        return self.head

    def strength(self, frames: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return torch.sigmoid(self.trained_head()(frame_features(frames, self.settings)))

    def fit(self, videos: list[Path], folder: Path) -> dict[str, Any]:
        """Fit the head on the videos' contacts (annotated times: the dataset's (``annotated``) or a times file's;
        else their own sound's onsets) and keep it in ``folder`` as detector.safetensors. Fitted heads are cached by
        their samples' cache keys (the videos, what labels them, the settings), so the variants of a recipe fit once
        and a changed times file or annotation fits again."""
        from avgen import cache_dir, cache_key, make_once

        files = sample_files(videos, self.annotated)
        cached = cache_dir() / "timing" / "heads" / f"{cache_key('learned_contacts', [f.stem for f in files])}.safetensors"
        if not cached.is_file():
            samples = shared_samples(videos, files, self.annotated)  # runs fitting the same head at once share videos

            def make(tmp: Path) -> None:
                head = fit_head([(f, y) for f, y, _ in samples.values()])
                save_head(head, tmp, {"videos": len(videos), "labels": sorted({s for _, _, s in samples.values()})})

            make_once(cached, make)
        target = folder / "detector.safetensors"
        with atomic_path(target) as tmp:
            tmp.write_bytes(cached.read_bytes())
        self.head.load_state_dict(load_file(str(target)))
        self.path = None
        return {"weights": target.name}

    def detect(self, frames: torch.Tensor) -> torch.Tensor:
        return self.curves(frames)[1]

    def curves(self, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        score = self.strength(frames)
        return score, events(score, self.fps, self.p.min_gap, self.p.threshold, min_score=1.0)


def make_learned_contacts(params: LearnedContactsParams, context: BuildContext) -> LearnedContacts:
    return LearnedContacts(params, context.run_dir if context is not None else None)


def fit_head(samples: list[tuple[torch.Tensor, torch.Tensor]], epochs: int = 300, seed: int = 0) -> Head:
    """Train a head on (features [N, F], labels [N] in {0, 1}) of several videos: full-batch Adam, BCE with the
    positives weighted by negatives / positives."""
    x = torch.cat([f for f, _ in samples])
    y = torch.cat([l for _, l in samples]).float()
    if y.sum() == 0:
        raise AvgenError("no contact in the training videos (no annotated time, no onset in their sound)")
    with torch.random.fork_rng():  # the caller's random state is left as it was
        torch.manual_seed(seed)
        return _fit(x, y, epochs)


def _fit(x: torch.Tensor, y: torch.Tensor, epochs: int) -> Head:
    head = Head(x.shape[1])
    head.mean.copy_(x.mean(0))
    head.std.copy_(x.std(0).clamp_min(1e-6))
    weight = (y.numel() - y.sum()) / y.sum()
    opt = torch.optim.Adam(head.parameters(), lr=1e-2, weight_decay=1e-4)
    for _ in range(epochs):
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(head(x), y, pos_weight=weight)
        loss.backward()
        opt.step()
    return head.eval()


def save_head(head: Head, path: Path, info: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        save_file({k: v.contiguous() for k, v in head.state_dict().items()}, str(tmp),
                  metadata={"settings": json.dumps(SETTINGS), "trained_on": json.dumps(info)})
    return path


def video_samples(videos: list[Path], labels: str = "auto", progress: Any = None,
                  given: dict[Path, list[float]] | None = None) -> dict[Path, tuple[torch.Tensor, torch.Tensor, str]]:
    """Per video, (motion features [N, 39], contact labels [N], 'annotated' or 'audio'): the labels are the
    annotated times (``given`` by the run's dataset, or a times file beside the video), else the onsets of its own
    soundtrack."""
    from avgen import read_frames

    from avgen_timing.footage import contact_times

    out = {}
    for video in videos:
        frames = read_frames(video, SETTINGS["fps"], SETTINGS["input_size"])
        features = frame_features(frames, SETTINGS)
        times, source = contact_times(video, labels, given)
        out[video] = (features, labels_for(list(times), features.shape[0], SETTINGS["fps"]), source)
        if progress is not None:
            progress()
    return out


def _stamp(path: Path) -> tuple[str, int, int]:
    return str(path.resolve()), path.stat().st_size, path.stat().st_mtime_ns


def sample_files(videos: list[Path], given: dict[Path, list[float]] | None = None) -> list[Path]:
    """Where ``shared_samples`` keeps each video's samples: keyed by the settings, the video, what labels it (the
    dataset's times, a times file beside it, else its own sound) and how media is read."""
    from avgen import MEDIA_VERSION, cache_dir, cache_key

    from avgen_timing.footage import times_file

    def path(video: Path) -> Path:
        times = times_file(video)
        own = [given[video]] if given and video in given else []  # the dataset's annotated times
        key = cache_key("learned_contacts.samples", SETTINGS, _stamp(video), times and _stamp(times), MEDIA_VERSION, *own)
        return cache_dir() / "timing" / "samples" / f"{key}.safetensors"

    return [path(v) for v in videos]


def shared_samples(videos: list[Path], files: list[Path], given: dict[Path, list[float]] | None = None,
                   ) -> dict[Path, tuple[torch.Tensor, torch.Tensor, str]]:
    """``video_samples`` (labels 'auto') through the cache, in ``files`` (``sample_files``), each made by one
    process: the variants of a recipe finishing side by side fit their detector on the same videos at the same time."""
    from avgen import make_each

    def make(i: int, tmp: Path) -> None:
        features, labels, source = video_samples([videos[i]], given=given)[videos[i]]
        save_file({"features": features.contiguous(), "labels": labels.contiguous()}, str(tmp), metadata={"source": source})

    make_each(files, make)
    out = {}
    for video, file in zip(videos, files):
        try:
            with safe_open(str(file), "pt") as entry:
                out[video] = (entry.get_tensor("features"), entry.get_tensor("labels"), entry.metadata()["source"])
        except Exception:  # a damaged entry: computed again here  # noqa: BLE001
            out.update(video_samples([video], given=given))
    return out


def labels_for(times: list[float], count: int, fps: float) -> torch.Tensor:
    y = torch.zeros(count)
    for t in times:
        k = int(round(t * fps))
        if 0 <= k < count and math.isfinite(t):
            y[k] = 1
    return y
