"""Bad input found by trying it (malformed, missing or unwritable on purpose): each case is one line on stderr
and exit code 2, or a warning and a count, never a traceback or a silent wrong result.

Unwritable folders (a run directory, the cache), bad annotation rows of Greatest Hits and VIG,
a misspelled kind in `avgen list`, and an untrained model (train.epochs = 0). A full disk while
`avgen generate` writes its wav is tested in test_generate.py.
"""

from __future__ import annotations

import errno
import os
import pathlib
from pathlib import Path

import pytest

from conftest import avgen_in_process
from test_generate import wide_consoles

TONES = '[run]\nname = "tiny"\n\n[data]\nname = "tones"\nclasses = 2\nclips_per_class = 4\n'


def one_error_line(lines: list[str]) -> str:
    """The run's single 'error:' line, which comes last (a run may print its header line first)."""
    errors = [line for line in lines if line.startswith(("error:", "internal error:"))]
    assert len(errors) == 1 and lines[-1] == errors[0], lines
    return errors[0]


# ---------------------------------------------------------------- folders that cannot be written


def test_an_out_folder_below_a_regular_file_is_one_line_exit_2(tmp_path: Path, avgen_home: Path,
                                                                capsys: pytest.CaptureFixture[str],
                                                                example_plugin: None) -> None:
    """--out below a regular file (ENOTDIR, which stops root too): one line naming the run directory and --out."""
    recipe = tmp_path / "tiny.toml"
    recipe.write_text(TONES)
    (tmp_path / "a_file").write_text("not a folder\n")
    out = tmp_path / "a_file" / "runs"
    code, _, lines = avgen_in_process(capsys, "run", str(recipe), "--out", str(out))
    assert code == 2, lines[-20:]
    line = one_error_line(lines)
    assert line.startswith(f"error: cannot write the run directory {out / 'tiny'}: part of its path is a file, "
                           "not a folder") and "--out" in line
    assert not any("Traceback" in line for line in lines)


def test_a_read_only_file_system_under_out_is_one_line_exit_2(tmp_path: Path, avgen_home: Path,
                                                              capsys: pytest.CaptureFixture[str],
                                                              monkeypatch: pytest.MonkeyPatch,
                                                              example_plugin: None) -> None:
    """EROFS (injected: root writes everywhere else) when the run directory is made: one line, exit 2."""
    recipe = tmp_path / "tiny.toml"
    recipe.write_text(TONES)
    out = tmp_path / "readonly"
    real_mkdir = pathlib.Path.mkdir

    def mkdir(self: Path, *args, **kwargs) -> None:
        if self == out or out in self.parents:
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(self))
        real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(pathlib.Path, "mkdir", mkdir)
    code, _, lines = avgen_in_process(capsys, "run", str(recipe), "--out", str(out))
    monkeypatch.undo()
    assert code == 2, lines
    line = one_error_line(lines)
    assert line.startswith(f"error: cannot write the run directory {out / 'tiny'}: read-only file system "
                           "(Read-only file system); choose a writable folder with --out"), line
    assert not out.exists()


@pytest.mark.parametrize("variable", ["AVGEN_CACHE", "AVGEN_HOME"])
@pytest.mark.parametrize("command", ["run", "cache"])
def test_a_cache_or_home_variable_pointing_at_a_file_is_one_line_exit_2(tmp_path: Path, avgen_home: Path, variable: str,
                                                                       command: str, capsys: pytest.CaptureFixture[str],
                                                                       monkeypatch: pytest.MonkeyPatch,
                                                                       example_plugin: None) -> None:
    """AVGEN_CACHE / AVGEN_HOME naming a regular file (FileExistsError): one line naming the variable and the path."""
    recipe = tmp_path / "tiny.toml"
    recipe.write_text(TONES)
    a_file = tmp_path / "a_file"
    a_file.write_text("not a folder\n")
    args = ("run", str(recipe), "--out", str(tmp_path / "runs")) if command == "run" else ("cache", "info")
    monkeypatch.setenv(variable, str(a_file))  # both are read when a command needs the folder
    code, _, lines = avgen_in_process(capsys, *args)
    assert code == 2, lines[-20:]
    assert len(lines) == 1 and "Traceback" not in lines[0], lines
    what = "the cache folder" if variable == "AVGEN_CACHE" else "the avgen home folder"
    assert lines[0].startswith(f"error: cannot write {what} {a_file}: it is a file, not a folder"), lines
    assert f"{variable} points there" in lines[0]
    assert not (tmp_path / "runs").exists()


def test_a_file_where_the_default_cache_folder_goes_is_one_line(tmp_path: Path, avgen_home: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    """No AVGEN_CACHE, but $AVGEN_HOME/cache is a regular file: the line names it and AVGEN_CACHE."""
    avgen_home.mkdir(parents=True)
    (avgen_home / "cache").write_text("not a folder\n")
    code, _, lines = avgen_in_process(capsys, "cache", "info")
    assert code == 2
    assert lines == [
        f"error: cannot write the cache folder {avgen_home / 'cache'}: it is a file, not a folder (File exists); "
        "it is $AVGEN_HOME/cache: make it a writable folder or set AVGEN_CACHE to one"]


# ---------------------------------------------------------------- annotation rows with a bad time


@pytest.mark.parametrize("bad", [["inf"], ["nan", "-0.500000"]], ids=["inf", "nan_or_negative"])
def test_greatest_hits_rows_with_time_inf_nan_or_negative_are_skipped_warned_and_counted(tmp_path: Path, avgen_home: Path,
                                                                                         bad: list[str],
                                                                                         capsys: pytest.CaptureFixture[str],
                                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """A hit time of inf (was an OverflowError), nan or below 0 (were silently clips at t = 0): each row is
    skipped with a warning naming the file and line, listed in skipped.txt and counted in stages.json."""
    import html
    import json

    import soundfile as sf

    from test_datasets import clicks, write_video

    root = tmp_path / "ghd"
    root.mkdir()
    rows = {"2015-01-01-10-00-00": ["0.500000 wood hit static", *(f"{t} metal hit static" for t in bad),
                                    "1.000000 tile hit static"],
            "2015-01-02-09-00-00": ["0.400000 wood hit static", f"{bad[-1]} glass hit static"]}
    for vid in rows:
        write_video(root / f"{vid}_denoised.mp4", seconds=2.0)
        sf.write(root / f"{vid}_denoised.wav", clicks([0.5, 1.0], 2.0, 16000), 16000)
        (root / f"{vid}_times.txt").write_text("\n".join(rows[vid]) + "\n")
    (root / "train.txt").write_text("2015-01-01-10-00-00\n")
    (root / "test.txt").write_text("2015-01-02-09-00-00\n")
    recipe = tmp_path / "ghd.toml"
    recipe.write_text(f'[run]\nname = "ghd"\n\n[data]\nname = "greatest_hits"\nroot = "{root}"\n'
                      "val_fraction = 0\nsample_rate = 8000\n")
    out = tmp_path / "runs"

    wide_consoles(monkeypatch)
    code, _, lines = avgen_in_process(capsys, "run", str(recipe), "--out", str(out))
    assert code == 0, lines[-20:]
    train, test = root / "2015-01-01-10-00-00_times.txt", root / "2015-01-02-09-00-00_times.txt"
    why = "is not a finite number of seconds >= 0"
    expected = [f"train\tline {i + 2} of {train}: hit time {float(t)!r} {why}" for i, t in enumerate(bad)]
    expected.append(f"test\tline 2 of {test}: hit time {float(bad[-1])!r} {why}")
    assert (out / "ghd" / "skipped.txt").read_text().splitlines() == expected
    warnings = [line for line in lines if line.startswith("warning: skipped line")]
    assert warnings == ["warning: skipped " + line.split("\t", 1)[1] for line in expected]
    prepare = json.loads((out / "ghd" / "stages.json").read_text())["stages"]["prepare"]
    assert prepare["skipped_rows"] == {"train": len(bad), "test": 1}
    assert prepare["clips"] == {"train": 2, "val": 0, "test": 1}
    # the count and the reasons reach stages.json, the log and the report
    reasons = {f"hit time {float(t)!r} {why}": n for t, n in
               ((t, bad.count(t) + (t == bad[-1])) for t in dict.fromkeys(bad))}
    assert prepare["skipped_reasons"] == reasons
    total = len(bad) + 1
    assert f"annotation rows dropped: {total} (train {len(bad)}, test 1)" in (out / "ghd" / "log.txt").read_text()
    report = html.unescape((out / "ghd" / "report.html").read_text())
    assert f"annotation rows dropped: {total} (train {len(bad)}, test 1): " in report
    assert all(f"{why_text} {n}" in report for why_text, n in reasons.items())


def test_vig_rows_with_start_or_end_inf_nan_or_negative_are_skipped_and_counted(tmp_path: Path) -> None:
    """VIG's start/end seconds: inf (was an OverflowError), nan or negative rows are left out of their split and
    reported by skipped_rows (the runner warns and writes skipped.txt); their labels make no class."""
    import avgen

    from test_datasets import write_video, write_vig_lists

    root = tmp_path / "vig"
    root.mkdir()
    for stem in ("aaaaaaaaaaa_30", "bbbbbbbbbbb_10", "ccccccccccc_-5", "ddddddddddd_5"):
        write_video(root / f"{stem}.mp4", 1.0)
    write_vig_lists(root, "# YTID, start_seconds, end_seconds, positive_labels\n"
                          "aaaaaaaaaaa, 30.000, 40.000, dog\n"
                          "bbbbbbbbbbb, 10.000, inf, cat\n"
                          "ccccccccccc, -5, 5.000, dog\n"
                          "eeeeeeeeeee, nan, 10.000, dog\n"
                          "ddddddddddd, 5.000, 15.000, hammer\n",
                    ["aaaaaaaaaaa_30", "bbbbbbbbbbb", "ccccccccccc_-5", "eeeeeeeeeee"], ["ddddddddddd_5"])
    ds = avgen.create("dataset", "vig", root=root, clip_seconds=1.0, val_fraction=0)
    assert [c.id for c in ds.clips("train")] == ["aaaaaaaaaaa_30"]
    assert ds.class_names == ["dog", "hammer"]
    labels = root / "labels.csv"
    assert ds.skipped_rows("train") == [
        f"line 3 of {labels}: start/end seconds '10.000', 'inf' are not finite numbers >= 0",
        f"line 4 of {labels}: start/end seconds '-5', '5.000' are not finite numbers >= 0",
        f"line 5 of {labels}: start/end seconds 'nan', '10.000' are not finite numbers >= 0",
    ]
    assert ds.skipped_rows("test") == [] and [c.id for c in ds.clips("test")] == ["ddddddddddd_5"]


# ---------------------------------------------------------------- an untrained model


def test_train_epochs_0_warns_and_marks_the_report_and_the_ledger_untrained(tmp_path: Path, example_plugin: None,
                                                                            capsys: pytest.CaptureFixture[str],
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """--set train.epochs=0 used to write a full report of an untrained model without a word."""
    import json

    from reliability_support import run_args, write_recipe

    recipe, out, home = write_recipe(tmp_path), tmp_path / "runs", tmp_path / "home"
    monkeypatch.setenv("AVGEN_HOME", str(home))  # run and compare in this process: no interpreter start-up
    wide_consoles(monkeypatch)
    code, _, lines = avgen_in_process(capsys, *run_args(recipe, out, "train.epochs=0"))
    assert code == 0, lines[-20:]
    assert ("warning: train.epochs = 0: the model is untrained; generate and evaluate use its initial random weights "
            "and the report is marked UNTRAINED") in lines
    run_dir = out / "tiny"
    fit = json.loads((run_dir / "stages.json").read_text())["stages"]["fit"]
    assert fit["untrained"] is True and fit["epochs"] == 0
    banner = "UNTRAINED: train.epochs = 0, the generator was never trained"
    md = (run_dir / "report.md").read_text().splitlines()
    assert md[0] == "# avgen run: tiny (untrained)" and md[2].startswith(f"**{banner}")
    page = (run_dir / "report.html").read_text()
    assert "<title>avgen run: tiny (untrained)</title>" in page and '<p id="untrained"' in page and banner in page

    code, printed, lines = avgen_in_process(capsys, "compare", str(run_dir), "-o", str(tmp_path / "compare.html"), "--json")
    assert code == 0, lines[-20:]
    row = json.loads(printed)[0]
    # untrained, and flagged as collapsed when its report said so (an untrained model is at chance)
    assert row["model"] == "tiny (untrained)" + (" [collapsed?]" if any(row["collapsed"]) else "")


def test_an_empty_validation_split_is_said_with_what_it_costs(tmp_path: Path) -> None:
    """A folder of 3-4 videos per class with val_fraction 0.1 gives no validation clip: said, not silent."""
    import io

    from rich.console import Console

    from avgen import Clip, Dataset
    from avgen._core.runner import prepare

    class Few(Dataset):
        class_names, sample_rate, clip_seconds = ["a", "b"], 8000, 0.5

        def clips(self, split):
            return [] if split == "val" else [Clip(id=f"{split}{k}", video=None, audio=None, label=k % 2, start=0.0,
                                                   duration=0.5) for k in range(4)]

        def load_frames(self, clip, fps, size):
            raise NotImplementedError

        def load_audio(self, clip):
            raise NotImplementedError

    out = io.StringIO()
    info = prepare(Few(), "few", tmp_path, Console(file=out, width=300), {})
    assert info["clips"] == {"train": 4, "val": 0, "test": 4}
    assert "warning: the val split has no clips: the fit keeps the epoch of the lowest training loss" in out.getvalue()
    out = io.StringIO()
    Few.clips = lambda self, split: [Clip(id=f"{split}0", video=None, audio=None, label=0, start=0.0, duration=0.5)]
    prepare(Few(), "few", tmp_path, Console(file=out, width=300), {})
    assert "val split" not in out.getvalue()
