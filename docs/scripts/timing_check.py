"""The numbers of docs/timing.md: contact detection and av_sync on the synthetic dataset.

    python docs/scripts/timing_check.py [ROOT] [DETECTOR]
      # ROOT: a synthetic_hits folder (default data/synthetic_hits); DETECTOR: motion_contacts (default) or
      # learned_contacts (train it first: avgen timing fit ROOT)

Prints the detector's precision/recall at +-1 and 0 frames on the test and train videos, then
av_sync's offsets for the real test audio shifted by known amounts (the audio window of each
clip read `shift` seconds earlier, so its sound comes `shift` late).
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import numpy as np
import torch

import avgen
from avgen import EvalContext
from avgen_timing.commands import evaluate_detector
from avgen_timing.sync import best_offset, onset_envelope

SHIFTS = (-0.2, -0.1, 0.0, 0.1, 0.2)


def main(root: Path, detector_name: str) -> None:
    dataset = avgen.create("dataset", "synthetic_hits", root=str(root))
    dataset.prepare()
    detector = avgen.create("detector", detector_name)
    for split in ("test", "train"):
        for tolerance in (1, 0):
            r = evaluate_detector(root, detector, split, tolerance)
            print(f"{detector_name} {split} +-{tolerance}: P {r['precision']:.3f} R {r['recall']:.3f} F1 {r['f1']:.3f} "
                  f"(chance P {r['chance_precision']:.3f}; {r['videos']} videos, {r['annotated']} contacts, "
                  f"{r['detected']} detections; frame errors {r['frame_error']})")
    clips = dataset.clips("test")
    metric = avgen.create("metric", "av_sync", detector=detector_name, timeline_clips=0)
    ctx = EvalContext(run_dir=Path("."), sample_rate=dataset.sample_rate, class_names=dataset.class_names,
                      test_ids=[c.id for c in clips], test_labels=torch.tensor([c.label for c in clips]),
                      real_waves=torch.zeros(len(clips), 1), test_clips=clips, dataset=dataset)
    visuals = metric.visuals(ctx)
    frame = 1 / detector.fps
    for shift in SHIFTS:
        errors = []
        for clip, vis in zip(clips, visuals):
            wave = dataset.load_audio(dataclasses.replace(clip, start=max(0.0, clip.start - shift)))
            env, step = onset_envelope(wave, dataset.sample_rate, metric.p.rate, metric.p.top_db)
            found = best_offset(env, step, clip.start, vis.strength, vis.fps, vis.start, metric.p.max_offset)
            if found is not None:
                errors.append(found - shift)
        e = np.abs(np.array(errors))
        print(f"av_sync ({detector_name}) real audio shifted {shift:+.1f} s: {len(e)} clips, recovered within one frame "
              f"{(e <= frame + 1e-9).mean():.3f}, median |error| {1000 * np.median(e):.1f} ms, mean |error| {1000 * e.mean():.1f} ms")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("data/synthetic_hits"),
         sys.argv[2] if len(sys.argv) > 2 else "motion_contacts")
