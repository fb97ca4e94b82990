"""Timing: when each sound happens. CPU contact detectors, sound by events (one sound per contact, the onsets
file of ``avgen generate --onsets-out/--onsets``), the audio-video sync metric and the timeline figure."""

from __future__ import annotations

from avgen import hookimpl

from avgen_timing.detector import MotionContactsParams, make_motion_contacts
from avgen_timing.learned import LearnedContactsParams, make_learned_contacts
from avgen_timing.regions import RegionContactsParams, make_region_contacts
from avgen_timing.sync import SyncParams, make_sync


@hookimpl
def register_detectors(register):
    register(
        "motion_contacts", make_motion_contacts, params=MotionContactsParams,
        summary="contacts where motion stops: camera-compensated frame differences, peak picking (CPU)",
        card={"fps": 30.0, "input_size": 128, "input": "RGB frames uint8",
              "definition": "score(t) = mean motion energy into frames t-2..t - energy into t+1; peaks >= threshold x the clip's largest"},
    )
    register(
        "learned_contacts", make_learned_contacts, params=LearnedContactsParams,
        summary="contacts where a small MLP on +-6 frames of motion features peaks; train it with `avgen timing fit ROOT`",
        card={"fps": 30.0, "input_size": 128, "input": "RGB frames uint8",
              "weights": "$AVGEN_HOME/weights/timing/learned_contacts.safetensors (avgen timing fit)"},
    )
    register(
        "region_contacts", make_region_contacts, params=RegionContactsParams,
        summary="contacts where the most-moving region's motion peaks (repeated frames skipped, camera compensated; "
                "CPU); `avgen timing fit --detector region_contacts` adds a head on motion vectors and local stops where it "
                "cross-validates better",
        card={"fps": 30.0, "input_size": 128, "input": "RGB frames uint8",
              "definition": "score(t) = mean of the strongest 0.3 % of 12 px regions' camera-compensated change from the "
                            "previous distinct frame (per frame) minus the median region; peaks >= threshold x the clip's largest",
              "weights": "none (the prior); or a file from avgen timing fit --detector region_contacts"},
    )


@hookimpl
def register_metrics(register):
    register(
        "av_sync", make_sync, params=SyncParams,
        summary="audio-video offset per clip (onset envelope vs the detector's contact strength): mean |offset| ms, fraction within a frame",
        card={"definition": "per clip, the lag within +-max_offset maximising the correlation of the sound's onset envelope "
                            "with the picture's contact strength; mean |lag| and fraction <= 1 video frame, for real and generated sound",
              "writes": "figures/timeline.png"},
    )


@hookimpl
def events_detector():
    from avgen_timing.onsets import FALLBACK_DETECTOR

    return FALLBACK_DETECTOR


@hookimpl
def sound_of_events(model, video, detector, detector_name, onsets, onsets_out, bank, material, console):
    from avgen_timing.onsets import sound_of_events

    return sound_of_events(model, video, detector, detector_name, onsets, onsets_out, bank, material, console)


@hookimpl
def register_commands(cli):
    from avgen_timing.commands import timing_group

    cli.add_command(timing_group)
