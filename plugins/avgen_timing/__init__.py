"""Timing: when each sound happens. A CPU contact detector, the audio-video sync metric and the timeline figure (issue 20)."""

from __future__ import annotations

from avgen import hookimpl

from avgen_timing.detector import MotionContactsParams, make_motion_contacts


@hookimpl
def register_detectors(register):
    register(
        "motion_contacts", make_motion_contacts, params=MotionContactsParams,
        summary="contacts where motion stops: camera-compensated frame differences, peak picking (CPU)",
        card={"fps": 30.0, "input_size": 128, "input": "RGB frames uint8",
              "definition": "score(t) = mean motion energy of the 3 frames before t - min(energy into t, into t+1); peaks >= threshold x the clip's largest"},
    )
