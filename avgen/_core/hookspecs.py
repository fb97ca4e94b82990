"""Hook specifications: one hook per component kind, plus one for CLI commands.

A plugin is a module with functions decorated by ``avgen.hookimpl`` and an entry point in
the ``avgen`` group. Each ``register`` hook receives a callable::

    register(name, factory, params=Params, summary="...", card={...}, version="1")

``factory(params, context)`` builds the component from its validated ``Params``
instance and an ``avgen.BuildContext`` (see ``avgen/_core/components.py``).
"""

from __future__ import annotations

import pluggy

hookspec = pluggy.HookspecMarker("avgen")
hookimpl = pluggy.HookimplMarker("avgen")


@hookspec
def register_encoders(register):
    """Register visual encoders: frames [N, H, W, 3] uint8 -> features [N, dim]."""


@hookspec
def register_representations(register):
    """Register audio representations: waveform [B, T] <-> representation [B, D, F]."""


@hookspec
def register_generators(register):
    """Register generators: visual feature sequences -> audio representations."""


@hookspec
def register_losses(register):
    """Register training losses: (outputs, batch) -> scalar tensor."""


@hookspec
def register_datasets(register):
    """Register datasets: clips with frames, waveform, class and id, plus splits."""


@hookspec
def register_metrics(register):
    """Register evaluation metrics: EvalContext -> {name: number}."""


@hookspec
def register_detectors(register):
    """Register visual event detectors: frames [N, H, W, 3] uint8 -> event times (e.g. contacts) with confidences."""


@hookspec
def register_indexes(register):
    """Register retrieval indexes: ``build(bank [M, D])``, then ``search(query [N, D], k)`` -> the nearest rows by cosine."""


@hookspec
def register_commands(cli):
    """Add subcommands to the ``avgen`` CLI; ``cli`` is the root ``click.Group``."""


@hookspec(firstresult=True)
def open_model(path):
    """Read the model folder ``path`` (not a run directory) for ``avgen generate --model``.

    Return an ``avgen.SavedModel``, or None when the folder is not in this plugin's format;
    raise ``avgen.AvgenError`` (one line) for a folder of this format that is damaged or incomplete.
    """


@hookspec(firstresult=True)
def open_library(path, representation, representation_spec, clip_seconds, console):
    """Index the folder of sounds ``path`` for ``avgen generate --library``: an ``avgen.ExemplarBank``.

    Each row is a clip of ``clip_seconds`` at ``representation.sample_rate``, its key the time
    average of ``representation.encode``; ``representation_spec`` (the recipe's section) names
    the representation for caches. Return None when this plugin does not read such folders.
    """


@hookspec(firstresult=True)
def events_detector():
    """The name of the detector component that finds events for a model that keeps none (``avgen generate
    --mode events`` or ``--onsets-out`` without ``--detector``); it must need no training. None: no default."""


@hookspec(firstresult=True)
def sound_of_events(model, video, detector, detector_name, onsets, onsets_out, bank, material, console):
    """Make the sound of ``video`` by events, one sound per event and silence elsewhere (``SoundModel.events``,
    ``avgen generate --mode events``, ``--onsets``, ``--onsets-out``).

    ``model``: the ``avgen.SoundModel``; ``video``: a ``pathlib.Path``; ``detector``: the ``avgen.Detector``
    that finds the events (None with ``onsets``), ``detector_name`` what to call it in the summary and the
    events file (None: the summary has no ``detector`` key); ``onsets``: a file of events to place instead of
    detecting them (``--onsets``), ``onsets_out``: where to write the events found (``--onsets-out``), both
    None for ``SoundModel.events``; ``bank``: an ``avgen.ExemplarBank`` for exemplar sounds, or None for the
    raw ones; ``material``: a class index forcing every event's class, or None; ``console``: a rich console
    for one line on the events, or None for silence. Return ``(wave, summary)``: the sound, float [T] at
    ``model.sample_rate`` and as long as the video (the core scales it into [-1, 1] when it peaks above 1), and a JSON-able dict written as the output's
    summary (``video``, ``seconds``, ``sample_rate``, ``onsets``: how many; from a detector also ``mode``:
    "events" and ``contacts``). Raise ``avgen.AvgenError`` (one line) for a bad events file. A plugin that
    answers it decides the events file's format.
    """


@hookspec
def run_sections(run_dir):
    """Tables about the run directory ``run_dir`` (a ``pathlib.Path``) that this plugin keeps: a list of
    ``avgen.RunSection`` ([] when it has none). The run's report shows each under its title; ``avgen compare``
    shows each one's ``summary`` (an ``avgen.RunSummary``) as columns. Raise nothing for a damaged file of
    yours: return a section whose ``error`` says so in one line."""


@hookspec(firstresult=True)
def render_report(contents, run_dir):
    """Write the report of ``run_dir`` from ``contents`` (an ``avgen.RunContents``, what ``avgen.write_report``
    read from the run directory): return the paths it wrote, ``(report.html, report.md)``, or None when this
    plugin does not render reports."""
