"""Evaluation metrics (sound classifier, onsets, log-spectral distance), the run report (report.html, report.md)
and `avgen compare`."""

from __future__ import annotations

from avgen import hookimpl

from avgen_eval.classifier import ClassifierParams, make_sound_classifier
from avgen_eval.lsd import LsdParams, make_lsd
from avgen_eval.onset import OnsetParams, make_onset


@hookimpl
def register_metrics(register):
    register(
        "sound_classifier", make_sound_classifier, params=ClassifierParams,
        summary="accuracy of a 5-layer 1-D conv classifier (trained on real audio) on real and generated sound",
        card={"paper": "POCAN (Chen et al. 2018), Sec. 5.2, Table 3", "writes": "figures/confusion_<kind>.png, figures/classifier_per_class.json"},
    )
    register(
        "onset", make_onset, params=OnsetParams,
        summary="onset count accuracy, onset accuracy, AP and F1 of generated vs real audio (spectral flux)",
        card={"paper": "CondFoleyGen (Du et al. 2023), onset transfer evaluation"},
    )
    register(
        "log_spectral_distance", make_lsd, params=LsdParams,
        summary="log-spectral distance between real and generated sound (lower is closer)",
        card={"definition": "mean over frames of RMS over bins of log10 power difference"},
    )


@hookimpl
def register_commands(cli):
    from avgen_eval.compare import compare_command

    cli.add_command(compare_command)


@hookimpl
def render_report(contents):
    """report.html and report.md of the run (``avgen.write_report``, the report stage)."""
    from avgen_eval.report import write_report

    return write_report(contents)
