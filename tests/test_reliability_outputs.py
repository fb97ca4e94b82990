"""Outputs that go wrong: an output path that is an input, a folder that cannot be written (below a file,
read-only), a full disk midway, `-o` paths of every kind; and the messages around them (the rerun hint,
long values, NaN onsets, repeated warnings, tables in a log). Each bad case is one line on stderr and
exit code 2, checked before the long work where it can be, and leaves nothing half-written.

Every generate and export here uses the session's tiny trained run (reliability_support.reference_run,
shared with test_reliability_files.py and test_reliability_resume.py) through the real CLI in this process;
the compare cases use run directories written by hand (test_compare_page.write_run): nothing is trained here.
"""

from __future__ import annotations

import io
import json
import os
import pathlib
import shutil
import tempfile
from pathlib import Path

import av
import pytest
import soundfile as sf

from avgen._core.atomic import stale_temp_files
from reliability_support import cli_in_process, reference_run
from test_compare_page import CLIPS, write_run
from test_reliability_files import fail_write
from test_reliability_media import write_mp4


# ---------------------------------------------------------------- shared pieces


@pytest.fixture
def trained(tmp_path_factory: pytest.TempPathFactory, example_plugin: None) -> Path:
    """The session's tiny trained run (trained once per session, by the first test that asks)."""
    return reference_run(tmp_path_factory)


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("AVGEN_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def can_write(folder: Path) -> bool:
    try:
        os.rmdir(tempfile.mkdtemp(dir=folder))
        return True
    except OSError:
        return False


@pytest.fixture
def unwritable(tmp_path: Path):
    """A folder this process cannot write: a chmod 0o555 folder; as root, whom modes do not stop, /sys/kernel
    (sysfs refuses new entries even to root)."""
    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        if not can_write(folder):
            yield folder
            return
        for candidate in (Path("/sys/kernel"), Path("/proc/sys")):
            if candidate.is_dir() and not can_write(candidate):
                yield candidate
                return
        pytest.skip("this user can write everywhere (root without sysfs)")
    finally:
        folder.chmod(0o755)


def listing(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (hidden ones too) and its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def one_error(code: int, lines: list[str], prefix: str = "error: ") -> str:
    """The only stderr line of a refused command (exit 2)."""
    assert code == 2 and len(lines) == 1, (code, lines)
    assert lines[0].startswith(prefix) and "Traceback" not in lines[0], lines
    return lines[0]


def refused_before_loading(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make loading a model fail loudly: a check that must come first is then seen to come first."""
    import avgen
    import avgen._core.loading

    def loaded(*args, **kwargs):
        raise AssertionError("the model was loaded before the bad output path was refused")

    monkeypatch.setattr(avgen._core.loading, "load_trained", loaded)
    monkeypatch.setattr(avgen, "saved_model_of_run", loaded)


# ---------------------------------------------------------------- generate: outputs never replace inputs


def test_generate_never_writes_over_an_input(trained: Path, tmp_path: Path, home: Path, capsys,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    video = write_mp4(tmp_path / "v.mp4")
    before = video.read_bytes()
    (tmp_path / "link.mp4").symlink_to(video)
    (tmp_path / "take.wav").write_bytes(before)  # a video under a sound's name: its .wav output is the input
    onsets = tmp_path / "hits.json"
    onsets.write_text(json.dumps({"onsets": [{"time": 0.5}]}))
    batch = tmp_path / "batch"
    batch.mkdir()
    for name in ("a.mp4", "b.mp4", "a.avgen.mp4"):  # a.avgen.mp4: the output of an earlier run, named as an input
        shutil.copyfile(video, batch / name)
    shutil.copyfile(video, batch / "b.mkv")
    run = ("--run", str(trained))
    refused = [  # (arguments, what the line says)
        ([str(video), "-o", str(video)], f"{video} (the output video) would overwrite the input {video}"),
        ([str(tmp_path / "link.mp4"), "-o", str(video)],  # the same file through a link
         f"{video} (the output video) would overwrite the input {tmp_path / 'link.mp4'}"),
        ([str(tmp_path / "take.wav"), "-o", str(tmp_path / "take.mp4")],  # the .wav written beside the video
         f"{tmp_path / 'take.wav'} (the output sound) would overwrite the input"),
        ([str(video), "--onsets", str(onsets), "-o", str(tmp_path / "hits.mp4")],  # ... and the .json
         f"{onsets} (the output summary) would overwrite the input {onsets}"),
        ([str(batch / "a.mp4"), str(batch / "a.avgen.mp4"), "-o", str(batch)],
         f"{batch / 'a.avgen.mp4'} (the output video of {batch / 'a.mp4'}) would overwrite the input"),
        ([str(batch / "b.mp4"), str(batch / "b.mkv"), "-o", str(batch)],
         f"{batch / 'b.avgen.mp4'} would be written twice, as the output video of {batch / 'b.mp4'} and as the output "
         f"video of {batch / 'b.mkv'}"),
    ]
    refused_before_loading(monkeypatch)
    for args, expected in refused:
        line = one_error(*cli_in_process(capsys, "generate", *args, *run)[:2])
        assert line.startswith(f"error: {expected}") and "give another -o" in line, line
    monkeypatch.undo()
    monkeypatch.setenv("AVGEN_HOME", str(home))
    assert video.read_bytes() == before and not (tmp_path / "v.wav").exists() and not (tmp_path / "v.json").exists()
    assert not (tmp_path / "take.mp4").exists() and onsets.read_text() == json.dumps({"onsets": [{"time": 0.5}]})

    # a folder of videos with -o the same folder: the outputs are new names beside them, the inputs stay
    shutil.rmtree(batch)
    batch.mkdir()
    for name in ("a.mp4", "b.mp4"):
        shutil.copyfile(video, batch / name)
    code, lines, out = cli_in_process(capsys, "generate", str(batch), *run, "-o", str(batch))
    assert code == 0, lines
    assert out.split() == [str(batch / "a.avgen.mp4"), str(batch / "b.avgen.mp4")]
    assert all((batch / n).read_bytes() == before for n in ("a.mp4", "b.mp4"))


def test_generate_o_names_a_folder_a_video_file_or_the_sound_alone(trained: Path, tmp_path: Path, home: Path,
                                                                  capsys) -> None:
    video = write_mp4(tmp_path / "v.mp4")
    run = ("--run", str(trained))
    code, lines, out = cli_in_process(capsys, "generate", str(video), *run, "-o", str(tmp_path / "out.wav"))
    assert code == 0 and out.strip() == str(tmp_path / "out.wav"), lines
    wave, rate = sf.read(tmp_path / "out.wav")
    assert (tmp_path / "out.wav").is_file() and rate == 8000 and abs(len(wave) / rate - 1.0) < 0.1
    assert {p.name for p in tmp_path.iterdir()} - {"home"} == {"out.wav", "v.mp4"}  # no .mp4, .json or folder

    code, lines, _ = cli_in_process(capsys, "generate", str(video), *run, "-o", str(tmp_path / "clip.mkv"))
    assert code == 0, lines
    with av.open(str(tmp_path / "clip.mkv")) as container:
        assert container.format.name.startswith("matroska") and container.streams.audio and container.streams.video
    assert (tmp_path / "clip.wav").is_file() and (tmp_path / "clip.json").is_file()

    (tmp_path / "takes.v2").mkdir()  # an existing folder whose name has a dot is a folder
    code, lines, out = cli_in_process(capsys, "generate", str(video), *run, "-o", str(tmp_path / "takes.v2"))
    assert code == 0 and out.strip() == str(tmp_path / "takes.v2" / "v.avgen.mp4"), lines

    (tmp_path / "notes").write_text("a file, not a folder\n")
    for out_arg, expected in (("out.avi", "avgen generate writes .mp4, .mov, .mkv files"),
                              ("out.txt", "a new folder's name has no suffix"),  # not made a folder named out.txt
                              ("notes", "cannot write the output folder"),
                              ("notes/sub", "part of its path is a file, not a folder")):
        line = one_error(*cli_in_process(capsys, "generate", str(video), *run, "-o", str(tmp_path / out_arg))[:2])
        assert expected in line, line
    line = one_error(*cli_in_process(capsys, "generate", str(video), str(video), *run, "-o", str(tmp_path / "x.wav"))[:2])
    assert "a .wav path takes one video" in line
    assert not any((tmp_path / name).exists() for name in ("out.avi", "out.txt", "x.wav"))
    code, _, out = cli_in_process(capsys, "generate", "--help")
    assert code == 0 and "a path ending in .wav the sound alone" in " ".join(out.split())


# ---------------------------------------------------------------- export, data synth, a data root: unwritable places


def test_export_below_a_file_or_into_a_read_only_folder_is_refused_before_loading(trained: Path, tmp_path: Path,
                                                                                 home: Path, unwritable: Path, capsys,
                                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "some_file").write_text("a file\n")
    before = sorted(os.listdir(unwritable))
    refused_before_loading(monkeypatch)
    line = one_error(*cli_in_process(capsys, "export", str(trained), str(tmp_path / "some_file" / "exp"))[:2])
    assert line.startswith(f"error: cannot write the model folder {tmp_path / 'some_file' / 'exp'}: part of its path "
                           "is a file, not a folder") and "OUT_DIR" in line
    line = one_error(*cli_in_process(capsys, "export", str(trained), str(unwritable / "exp"))[:2])
    assert line.startswith(f"error: cannot write the model folder {unwritable / 'exp'}: ") and "OUT_DIR" in line
    assert sorted(os.listdir(unwritable)) == before


def test_data_synth_into_a_read_only_folder_or_below_a_file_is_one_line(tmp_path: Path, home: Path, unwritable: Path,
                                                                       capsys) -> None:
    (tmp_path / "some_file").write_text("a file\n")
    before = sorted(os.listdir(unwritable))
    for out in (unwritable / "ds", tmp_path / "some_file" / "ds"):
        line = one_error(*cli_in_process(capsys, "data", "synth", str(out), "--videos", "2")[:2])
        assert line.startswith(f"error: cannot write the dataset folder {out}: ") and "OUT" in line, line
    assert sorted(os.listdir(unwritable)) == before and set(os.listdir(tmp_path)) - {"home"} == {"read-only", "some_file"}


@pytest.mark.parametrize("dataset", ["synthetic_hits", "greatest_hits", "vig"])
def test_a_data_root_that_is_a_file_stops_before_the_run_directory(dataset: str, tmp_path: Path, home: Path,
                                                                   capsys, example_plugin: None) -> None:
    (tmp_path / "some_file").write_text("a file\n")
    root = tmp_path / "some_file" if dataset != "vig" else tmp_path / "some_file" / "vig"
    recipe = tmp_path / "r.toml"
    recipe.write_text(f'[run]\nname = "r"\n\n[data]\nname = "{dataset}"\nroot = "{root}"\n')
    line = one_error(*cli_in_process(capsys, "run", str(recipe), "--out", str(tmp_path / "runs"))[:2])
    where = "it is" if root.name == "some_file" else f"'{tmp_path / 'some_file'}' on its path is"
    assert line == f"error: data.root '{root}': {where} a file, not a folder; set data.root to a folder"
    assert not (tmp_path / "runs").exists()


# ---------------------------------------------------------------- compare


@pytest.fixture
def two_runs(tmp_path: Path) -> list[Path]:
    """Two evaluated run directories (written by hand, as `avgen run` leaves them)."""
    return [write_run(tmp_path / "runs", name, CLIPS[:4]) for name in ("owens", "pocan")]


def test_compare_into_a_folder_or_a_read_only_place_is_refused_before_writing(two_runs: list[Path], tmp_path: Path,
                                                                            unwritable: Path, capsys) -> None:
    folder = tmp_path / "existing_folder"
    folder.mkdir()
    runs = [str(r) for r in two_runs]
    line = one_error(*cli_in_process(capsys, "compare", *runs, "-o", str(folder))[:2])
    assert line == f"error: -o {folder}: is a folder; give the HTML file to write, e.g. -o {folder / 'compare.html'}"
    assert list(folder.iterdir()) == [] and not (tmp_path / "existing_folder_files").exists()

    before = sorted(os.listdir(unwritable))
    line = one_error(*cli_in_process(capsys, "compare", *runs, "-o", str(unwritable / "c.html"))[:2])
    assert line.startswith(f"error: cannot write the folder of the compare page {unwritable}: ")
    assert sorted(os.listdir(unwritable)) == before

    report = two_runs[0] / "report.html"
    kept = report.read_bytes()
    line = one_error(*cli_in_process(capsys, "compare", *runs, "-o", str(report))[:2])
    assert "is a file of the run" in line and report.read_bytes() == kept


def test_compare_on_a_full_disk_prints_one_line_and_keeps_the_previous_page(two_runs: list[Path], tmp_path: Path,
                                                                           capsys, monkeypatch: pytest.MonkeyPatch) -> None:
    """The disk fills up when the page itself is written, after its chart, sounds and spectrograms: one line,
    and the previous page and files folder are as they were, none of the new files left."""
    pages = tmp_path / "pages"
    runs = [str(r) for r in two_runs]
    assert cli_in_process(capsys, "compare", *runs, "-o", str(pages / "c.html"))[0] == 0
    before = listing(pages)
    assert len(before) > 20  # the page, its marker, chart, sounds and spectrograms

    writer, calls = fail_write(after=1, name_prefix=".c.html.")
    monkeypatch.setattr(pathlib.Path, "write_bytes", writer)
    code, lines, out = cli_in_process(capsys, "compare", *runs[::-1], "-o", str(pages / "c.html"))
    monkeypatch.undo()
    line = one_error(code, lines)
    assert len(calls) == 1 and out == ""
    assert line.startswith(f"error: cannot write {pages / 'c.html'}: disk full (No space left on device); the previous "
                           "file, if any, is kept") and line.endswith("then rerun the command")
    assert listing(pages) == before and stale_temp_files(pages) == []


def test_compare_skips_its_own_files_folder_and_prints_unwrapped_tables(two_runs: list[Path], tmp_path: Path, capsys,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """`avgen compare runs/*/` once runs/ holds compare_files/ (the README's command after the quickstart)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("COLUMNS", raising=False)  # output to a pipe or a file: rich would wrap at 80 columns
    runs = tmp_path / "runs"
    assert cli_in_process(capsys, "compare", "runs/owens", "-o", "runs/compare.html")[0] == 0
    assert (runs / "compare_files").is_dir()
    code, lines, out = cli_in_process(capsys, "compare", *sorted(f"runs/{p.name}/" for p in runs.iterdir() if p.is_dir()))
    assert code == 0 and lines == [], lines
    table = [line for line in out.splitlines() if line.startswith("│")]
    assert [row.split("│")[1].strip() for row in table[:2]] == ["owens", "pocan"]
    assert any("│ POCAN (res+spec)" in row for row in table)  # not folded into "POCAN (res+sp" / "ec)"
    assert max(map(len, out.splitlines())) > 80 and all(row.count("│") == table[0].count("│") for row in table)


# ---------------------------------------------------------------- messages


def test_write_errors_and_ctrl_c_promise_a_resume_only_in_avgen_run(trained: Path, tmp_path: Path, home: Path, capsys,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from avgen._core.atomic import write_error
    from avgen._core.errors import resumable

    full = OSError(28, "No space left on device")
    assert str(write_error(Path("x"), full)).endswith("then rerun the command")
    with resumable():
        assert str(write_error(Path("x"), full)).endswith("then rerun the same command to resume")

    video = write_mp4(tmp_path / "v.mp4")
    writer, calls = fail_write(after=1, name_prefix=".v.avgen.json.")
    monkeypatch.setattr(pathlib.Path, "write_bytes", writer)
    code, lines, _ = cli_in_process(capsys, "generate", str(video), "--run", str(trained), "-o", str(tmp_path / "out"))
    monkeypatch.undo()
    assert code == 2 and len(calls) == 1
    assert lines[-1].startswith(f"error: cannot write {tmp_path / 'out' / 'v.avgen.json'}: disk full")
    assert lines[-1].endswith("then rerun the command") and "resume" not in " ".join(lines)

    import avgen._core.loading

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(avgen._core.loading, "load_trained", interrupted)
    code, lines, _ = cli_in_process(capsys, "generate", str(video), "--run", str(trained), "-o", str(tmp_path / "out"))
    assert code == 130 and lines[-1] == "interrupted", lines


def test_long_values_are_cut_and_a_nan_onset_is_not_a_number(trained: Path, tmp_path: Path, home: Path, capsys) -> None:
    video = write_mp4(tmp_path / "v.mp4")
    run = ("--run", str(trained), "-o", str(tmp_path / "out"))
    long = "x" * 100_000
    for item, expected in ((f"generator.hidden={long}", "generator.hidden: Input should be a valid integer"),
                           (long, "generate can change only")):
        line = one_error(*cli_in_process(capsys, "generate", str(video), *run, "--set", item)[:2])
        assert expected in line and "... (100000 characters)" in line and len(line) < 500, line[:600]
    onsets = tmp_path / "hits.json"
    onsets.write_text('{"onsets": [{"time": 0.5}, {"time": NaN}]}')
    code, lines, _ = cli_in_process(capsys, "generate", str(video), *run, "--onsets", str(onsets))
    assert code == 2 and lines[-1] == (f"error: --onsets {onsets}: onsets.1.time: nan is not a number "
                                       "(format in docs/timing.md)"), lines


def test_generate_exemplar_prints_none_of_the_runs_stage_lines(trained: Path, tmp_path: Path, home: Path,
                                                               capsys) -> None:
    video = write_mp4(tmp_path / "v.mp4")
    code, lines, _ = cli_in_process(capsys, "generate", str(video), "--run", str(trained), "--exemplar",
                                    "-o", str(tmp_path / "out"))
    assert code == 0, lines
    assert not any(line.startswith(("featurize precision", "train: ")) for line in lines), lines


def test_many_skipped_rows_with_one_reason_are_one_warning() -> None:
    from avgen._core.console import make_console
    from avgen._core.featurize import warn_skipped
    def warnings(messages: list[str], once: bool = False) -> list[str]:
        console = make_console(file=io.StringIO())
        warn_skipped(console, messages, "annotation rows", once=once)
        return console.file.getvalue().splitlines()

    none = [f"line {i} of /d/synth{i:04d}_times.txt: material 'None' is not one of the dataset's classes" for i in range(25)]
    assert warnings(none + ["line 3 of /d/x_times.txt: hit time inf is not a finite number of seconds >= 0"]) == [
        "warning: skipped 25 annotation rows: material 'None' is not one of the dataset's classes "
        "(the first: line 0 of /d/synth0000_times.txt)",
        "warning: skipped line 3 of /d/x_times.txt: hit time inf is not a finite number of seconds >= 0"]
    assert warnings(none[:3]) == [f"warning: skipped {m}" for m in none[:3]]  # a few: each named
    # six different reasons: five named, and the sixth too (not "1 more ... for 1 other reasons"); eight: counted
    each = [f"clip c{i}: audio of v{i}.mp4 ends at 10.000 s, inside the window from {12 + i}.0 s" for i in range(8)]
    assert warnings(each[:6]) == [f"warning: skipped {m}" for m in each[:6]]
    assert warnings(each)[-1] == "warning: skipped 3 more annotation rows for 3 other reasons (see log.txt)"
    # the variants of a recipe prepare the same dataset: its warning once per process, every time in the log
    mine = [message.replace("/d/", f"/d{id(none)}/") for message in none]
    assert len(warnings(mine, once=True)) == 1 and warnings(mine, once=True) == [] and len(warnings(mine)) == 1
