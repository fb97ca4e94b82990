"""``motion_contacts``: a CPU contact detector, peaks of where motion stops (see motion.py)."""

from __future__ import annotations

import torch
from pydantic import BaseModel, ConfigDict, Field

from avgen import BuildContext, Detector

from avgen_timing.motion import contact_score, motion_cells, motion_energy, pick_peaks


class MotionContactsParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    fps: float = Field(30.0, gt=0, le=240, description="frames per second read from the video (a contact is placed on one of them)")
    input_size: int = Field(128, ge=16, le=1024, description="frames are resized to this many pixels square")
    max_shift: int = Field(4, ge=0, le=32, description="largest camera shake compensated between two frames (pixels at input_size)")
    cell: int = Field(4, ge=1, le=64, description="block size (pixels) the frame difference is averaged over")
    top: float = Field(0.02, gt=0, le=1, description="fraction of blocks whose mean is the motion energy (minus the median block)")
    before: int = Field(3, ge=1, le=30, description="frames of motion before a contact that the contact score compares with")
    min_gap: float = Field(0.2, ge=0, le=10, description="two contacts are at least this far apart (s)")
    threshold: float = Field(0.1, ge=0, le=1, description="contacts with confidence (score / the clip's largest score) below this are dropped")
    min_score: float = Field(0.005, ge=0, description="confidence is score / max(largest score, this): a still video has no confident contact")


class MotionContacts(Detector):
    """Contacts where motion stops: peaks of the contact score of the motion energy."""

    def __init__(self, p: MotionContactsParams) -> None:
        self.p = p
        self.fps = p.fps
        self.input_size = p.input_size

    def energy(self, frames: torch.Tensor) -> torch.Tensor:
        """Motion energy per frame [N] (motion into frame t)."""
        return motion_energy(motion_cells(frames, self.p.max_shift, self.p.cell), self.p.top)

    def strength(self, frames: torch.Tensor) -> torch.Tensor:
        return contact_score(self.energy(frames), self.p.before)

    def detect(self, frames: torch.Tensor) -> torch.Tensor:
        return self.curves(frames)[1]

    def curves(self, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        score = self.strength(frames)
        return score, events(score, self.fps, self.p.min_gap, self.p.threshold, self.p.min_score)


def events(score: torch.Tensor, fps: float, min_gap: float, threshold: float, min_score: float) -> torch.Tensor:
    """Peaks of a per-frame score as [K, 2] (seconds, confidence = score / max(largest score, min_score))."""
    s = score.double().numpy()
    top = max(float(s.max()) if s.size else 0.0, min_score, 1e-12)
    conf = s / top
    peaks = pick_peaks(conf, max(0, round(min_gap * fps)), threshold)
    return torch.tensor([[p / fps, conf[p]] for p in peaks], dtype=torch.float32).reshape(-1, 2)


def make_motion_contacts(params: MotionContactsParams, context: BuildContext) -> MotionContacts:
    return MotionContacts(params)
