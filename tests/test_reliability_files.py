"""Files that go wrong: a corrupt feature cache, concurrent runs on one cache, unsafe pickles, a full disk.

The run-directory lock (a second process on the same run dir is refused with one line) is
tested in test_run.py (test_second_process_on_the_same_run_dir_is_refused); a SoundNet weights
file whose SHA-256 does not match in test_soundnet_weights.py (test_a_changed_weights_file_is_refused).
"""

from __future__ import annotations

import ast
import errno
import json
import os
import pathlib
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import avgen
from avgen._core.atomic import atomic_path, stale_temp_files, write_bytes
from avgen._core.cache import FeatureCache
from avgen._core.checkpoint import load_checkpoint
from avgen._core.errors import AvgenError
from avgen._core.tensorfile import read_verified
from conftest import REPO
from reliability_support import (
    CHECKPOINTS, assert_same_result, cli_in_process, history_without_times, ledger, reference_run, run_args, start_cli,
    write_recipe,
)


def entries(cache_root: Path) -> list[Path]:
    return sorted(cache_root.glob("*/*.safetensors"))


def flip_last_byte(path: Path) -> None:
    """Change one bit of the last tensor byte: the file still parses, its values are wrong."""
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01
    path.write_bytes(bytes(data))


# ---------------------------------------------------------------- the feature cache


def test_corrupt_cache_entries_are_rebuilt_and_the_run_matches_a_clean_one(tmp_path, tmp_path_factory, capsys, monkeypatch,
                                                                          one_thread, example_plugin):
    reference = reference_run(tmp_path_factory)
    home = tmp_path / "home"
    shutil.copytree(reference.parents[1] / "home" / "cache", home / "cache")
    found = entries(home / "cache")
    whole_splits = [p for p in found if load_file(p)["wave"].dim() == 2]  # one entry per split
    clips = [p for p in found if p not in whole_splits]
    assert len(whole_splits) == 3 and len(clips) == 60
    damaged = {whole_splits[0]: "truncated", whole_splits[1]: "empty", whole_splits[2]: "one bit flipped",
               clips[0]: "truncated", clips[1]: "empty", clips[2]: "one bit flipped"}
    before = {path: {k: v.clone() for k, v in load_file(path).items()} for path in damaged}  # copies: the files are mapped
    for path, how in damaged.items():
        if how == "truncated":
            path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
        elif how == "empty":
            path.write_bytes(b"")
        else:
            flip_last_byte(path)
    leftover = clips[3].parent / f".{clips[3].name}.k2j4l1.tmp"  # a writer killed before its rename
    leftover.write_bytes(clips[3].read_bytes()[:100])

    monkeypatch.setenv("AVGEN_HOME", str(home))
    code, lines, _ = cli_in_process(capsys, *run_args(write_recipe(tmp_path), tmp_path / "runs"))
    assert code == 0, lines[-20:]
    featurize = ledger(tmp_path / "runs" / "tiny")["featurize"]
    assert sum(featurize[s]["encoded"] for s in ("train", "val", "test")) == 3  # the three damaged clips only
    for path, tensors in before.items():
        rebuilt, _ = read_verified(path)
        assert rebuilt.keys() == tensors.keys(), damaged[path]
        assert all(torch.equal(rebuilt[k], tensors[k]) for k in tensors), damaged[path]
    assert_same_result(tmp_path / "runs" / "tiny", reference)

    code, _, printed = cli_in_process(capsys, "cache", "info", "--json")
    info = json.loads(printed)
    assert info["entries"] == 63 and info["temp_files"] == 1
    assert cli_in_process(capsys, "cache", "clear", "--yes")[0] == 0
    assert not leftover.exists() and entries(home / "cache") == []


def test_a_cache_entry_with_changed_values_is_a_miss_and_is_removed(tmp_path):
    cache = FeatureCache(tmp_path)
    cache.put("ab" * 32, {"wave": torch.arange(10.0)})
    flip_last_byte(cache.path("ab" * 32))
    assert load_file(cache.path("ab" * 32))["wave"][-1] != 9.0  # safetensors alone reads the wrong value
    assert cache.get("ab" * 32) is None and cache.misses == 1
    assert not cache.path("ab" * 32).exists()


def test_two_runs_sharing_one_cache_at_once_both_finish_with_the_same_result(tmp_path, tmp_path_factory, example_plugin):
    """Two processes featurize into one empty cache at the same time (different run dirs); both finish alike."""
    reference_home = reference_run(tmp_path_factory).parents[1] / "home"
    recipe, out, home = write_recipe(tmp_path), tmp_path / "runs", tmp_path / "home"
    procs = {name: start_cli(run_args(recipe, out, f"run.name={name}", "train.epochs=1"), home, tmp_path / f"{name}.err")
             for name in ("first", "second")}
    for name, proc in procs.items():
        assert proc.wait(timeout=600) == 0, (tmp_path / f"{name}.err").read_text()[-3000:]
    first, second = out / "first", out / "second"
    for stem in CHECKPOINTS:
        a, b = load_file(first / "checkpoints" / f"{stem}.safetensors"), load_file(second / "checkpoints" / f"{stem}.safetensors")
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), stem
    assert history_without_times(first) == history_without_times(second)
    assert json.loads((first / "metrics.json").read_text()) == json.loads((second / "metrics.json").read_text())
    found = entries(home / "cache")
    assert len(found) == len(entries(reference_home / "cache")) == 63
    for path in found:  # every entry is complete and holds what a lone clean run computed
        tensors, _ = read_verified(path)
        clean = load_file(reference_home / "cache" / path.parent.name / path.name)
        assert tensors.keys() == clean.keys() and all(torch.equal(tensors[k], clean[k]) for k in clean)
    assert stale_temp_files(home / "cache") == []


# ---------------------------------------------------------------- loading only what cannot run code


class MakesAFile:
    """Unpickling this calls pathlib.Path.touch(marker): code that runs on torch.load(weights_only=False)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return pathlib.Path.touch, (self.marker,)


def evil_pickle(path: Path, marker: Path) -> Path:
    torch.save({"conv1.weight": torch.zeros(1), "fc.weight": MakesAFile(marker)}, path)
    return path


def test_the_evil_pickle_really_runs_code_when_unpickled_unsafely(tmp_path):
    """The control for the tests below: without weights_only the marker file appears."""
    marker = tmp_path / "control-marker"
    torch.load(evil_pickle(tmp_path / "evil.pth", marker), weights_only=False)
    assert marker.exists()


def test_encoder_weights_that_are_a_pickle_with_code_are_refused_without_running_it(tmp_path):
    marker = tmp_path / "marker"
    evil = evil_pickle(tmp_path / "evil.pth", marker)
    with pytest.raises(AvgenError) as refused:
        avgen.create("encoder", "resnet18", weights=str(evil), input_size=32)
    message = str(refused.value)
    assert "\n" not in message and f"cannot read weights file '{evil}'" in message
    assert not marker.exists()


def test_a_checkpoint_replaced_by_a_pickle_is_refused_by_generate(tmp_path, tmp_path_factory, capsys, example_plugin):
    run_dir = tmp_path / "run"
    shutil.copytree(reference_run(tmp_path_factory), run_dir)
    marker = tmp_path / "marker"
    evil_pickle(run_dir / "checkpoints" / "best.safetensors", marker)
    video = tmp_path / "any.mp4"
    video.write_bytes(b"\x00" * 64)  # the checkpoint is read before the video
    code, lines, _ = cli_in_process(capsys, "generate", str(video), "--run", str(run_dir), "-o", str(tmp_path / "out"))
    assert code == 2 and len(lines) == 1, lines
    assert lines[0].startswith(f"error: checkpoint {run_dir / 'checkpoints' / 'best.safetensors'} is not a valid avgen checkpoint")
    assert not marker.exists()


@pytest.mark.parametrize("damage", ["pickle", "one bit flipped", "truncated"])
def test_a_damaged_last_checkpoint_is_refused_on_resume(damage, tmp_path, tmp_path_factory, capsys, monkeypatch, example_plugin):
    """A run stopped during fit whose last.safetensors was replaced or damaged: one line, exit 2, --fresh named."""
    monkeypatch.setenv("AVGEN_HOME", str(tmp_path / "home"))
    recipe, out = write_recipe(tmp_path), tmp_path / "runs"
    run_dir = out / "tiny"
    shutil.copytree(reference_run(tmp_path_factory), run_dir)
    stages = json.loads((run_dir / "stages.json").read_text())
    stages["stages"] = {k: v for k, v in stages["stages"].items() if k in ("prepare", "featurize")}
    stages.pop("recipe_id")  # the copy lives under another --out
    (run_dir / "stages.json").write_text(json.dumps(stages))
    last, marker = run_dir / "checkpoints" / "last.safetensors", tmp_path / "marker"
    if damage == "pickle":
        evil_pickle(last, marker)
    elif damage == "truncated":
        last.write_bytes(last.read_bytes()[:-7])
    else:
        flip_last_byte(last)
    code, lines, _ = cli_in_process(capsys, *run_args(recipe, out))
    assert code == 2 and "Traceback" not in "\n".join(lines), lines
    assert lines[-1].startswith(f"error: checkpoint {last} is not a valid avgen checkpoint (") and "--fresh" in lines[-1]
    if damage == "one bit flipped":
        assert "do not match the SHA-256 recorded in it" in lines[-1]
    assert not marker.exists()


LOADERS_THAT_CAN_RUN_CODE = {
    ("pickle", "load"), ("pickle", "loads"), ("pickle", "Unpickler"), ("dill", "load"), ("dill", "loads"),
    ("joblib", "load"), ("marshal", "loads"), ("yaml", "load"), ("cloudpickle", "load"), ("cloudpickle", "loads"),
}
# The one reviewed exception: an Unpickler subclass whose find_class admits numpy arrays only (see its test).
ALLOWED = {("plugins/avgen_soundnet/convert.py", "pickle.Unpickler")}


def unsafe_loads(source: str, rel: str) -> list[str]:
    """Calls in Python source that could unpickle code: torch.load without weights_only=True, pickle.*, ..."""
    found = []
    for node in ast.walk(ast.parse(source, rel)):
        if isinstance(node, ast.Attribute):  # pickle.loads(...), class X(pickle.Unpickler), ...
            owner = node.value.attr if isinstance(node.value, ast.Attribute) else getattr(node.value, "id", "")
            if (owner, node.attr) in LOADERS_THAT_CAN_RUN_CODE and (rel, f"{owner}.{node.attr}") not in ALLOWED:
                found.append(f"{rel}:{node.lineno} {owner}.{node.attr}")
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
            continue
        func = node.func
        owner = func.value.attr if isinstance(func.value, ast.Attribute) else getattr(func.value, "id", "")
        keywords = {k.arg: k.value for k in node.keywords}
        trusted = isinstance(keywords.get("weights_only"), ast.Constant) and keywords["weights_only"].value is True
        pickled = isinstance(keywords.get("allow_pickle"), ast.Constant) and keywords["allow_pickle"].value is True
        if func.attr in ("load", "load_state_dict_from_url") and owner in ("torch", "hub") and not trusted:
            found.append(f"{rel}:{node.lineno} {owner}.{func.attr} without weights_only=True")
        elif owner in ("np", "numpy") and func.attr == "load" and pickled:
            found.append(f"{rel}:{node.lineno} {owner}.load(allow_pickle=True)")
    return found


def test_no_source_file_loads_anything_that_can_run_code():
    folders = [REPO / "avgen", REPO / "plugins", REPO / "examples", REPO / "benchmarks"]
    files = [p for folder in folders for p in folder.rglob("*.py")]
    assert len(files) > 40
    problems = [problem for path in files for problem in unsafe_loads(path.read_text(), path.relative_to(REPO).as_posix())]
    assert problems == []


def test_the_source_scan_finds_each_unsafe_pattern():
    """The scan's own control: every pattern it must catch, and the safe forms it must let through."""
    sample = (
        "import pickle, torch, numpy as np\n"
        "torch.load('a.pth')\n"
        "torch.load('b.pth', weights_only=False)\n"
        "np.load('c.npy', allow_pickle=True)\n"
        "pickle.loads(b'')\n"
        "torch.hub.load_state_dict_from_url('u')\n"
        "torch.load('ok.pth', weights_only=True)\n"
        "np.load('ok.npy')\n"
    )
    found = unsafe_loads(sample, "plugins/sample.py")
    assert sorted(int(line.split(" ", 1)[0].rsplit(":", 1)[1]) for line in found) == [2, 3, 4, 5, 6], found


# ---------------------------------------------------------------- file modes

WRITE_EVERY_KIND = """
import sys
from pathlib import Path

import torch

import avgen
from avgen._core.report import write_report
from avgen._core.splits import _SplitRows
from avgen_datasets.synthetic_hits import SynthesisParams, synthesize

out = Path(sys.argv[1])
synthesize(out / "data", SynthesisParams(videos=2, classes=2, fps=8, size=32, video_seconds=2.0))
write_report(out / "run")
wav = avgen.write_wav(out / "run" / "a.avgen.wav", torch.zeros(22050), 22050)
avgen.mux_audio(out / "data" / "synth0000_denoised.mp4", wav, out / "run" / "a.avgen.mp4")
rows = _SplitRows(out / "cache" / "ab" / "split.safetensors", out / "cache", 1, 4, publish=True)
rows.put(0, torch.zeros(4), None)
rows.finish({})
rows.close()
"""


@pytest.mark.parametrize("umask", [0o022, 0o077], ids=["022", "077"])
def test_written_files_and_folders_follow_the_umask(tmp_path, umask):
    """Reports, wavs, mp4s, cache entries and the synthetic data folder get the modes any tool's output gets."""
    out = tmp_path / "out"
    out.mkdir()
    proc = subprocess.run([sys.executable, "-c", WRITE_EVERY_KIND, str(out)], capture_output=True, text=True,
                          timeout=300, umask=umask)
    assert proc.returncode == 0, proc.stderr[-3000:]
    written = sorted(out.rglob("*"))
    names = {p.relative_to(out).as_posix() for p in written}
    assert {"data", "data/synth0000_denoised.mp4", "data/train.txt", "run/report.html", "run/a.avgen.wav",
            "run/a.avgen.mp4", "cache/ab/split.safetensors"} <= names
    modes = {p.relative_to(out).as_posix(): oct(stat.S_IMODE(p.stat().st_mode)) for p in written}
    expected = {name: oct((0o777 if (out / name).is_dir() else 0o666) & ~umask) for name in modes}
    assert modes == expected


# ---------------------------------------------------------------- a full disk


def fail_write(after: int, name_prefix: str):
    """A Path.write_bytes that, on the ``after``-th temp file named like ``name_prefix``, writes half and hits ENOSPC."""
    real = pathlib.Path.write_bytes
    calls = []

    def write_bytes(self: Path, data: bytes) -> int:
        if self.name.startswith(name_prefix):
            calls.append(self)
            if len(calls) == after:
                with open(self, "wb") as f:
                    f.write(data[: len(data) // 2])
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self))
        return real(self, data)

    return write_bytes, calls


def fail_file_write(name_prefix: str):
    """A builtins.open whose files named like ``name_prefix``, opened for writing, hit ENOSPC once half of
    what the first such file was to hold (its first 64 KiB of writes) is written: a disk that fills up mid-file."""
    import builtins

    real = builtins.open
    calls = []

    class Filling:
        def __init__(self, f):
            self.f, self.written = f, 0

        def write(self, data):
            if self.written + len(data) > 1 << 16:
                self.f.write(bytes(data)[: max(0, (1 << 16) - self.written)])
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), self.f.name)
            self.written += len(data)
            return self.f.write(data)

        def __getattr__(self, name):
            return getattr(self.f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    def fake_open(file, mode="r", *args, **kwargs):
        f = real(file, mode, *args, **kwargs)
        if "w" in mode and Path(str(file)).name.startswith(name_prefix):
            calls.append(file)
            return Filling(f)
        return f

    return fake_open, calls


def test_disk_full_while_writing_a_checkpoint_keeps_the_previous_one(tmp_path, tmp_path_factory, capsys, monkeypatch,
                                                                     one_thread, example_plugin):
    """The 4th write of last.safetensors (epoch 3 of 16) fails halfway: exit 2, one line, epoch 2 kept, resume matches."""
    reference = reference_run(tmp_path_factory)
    monkeypatch.setenv("AVGEN_HOME", str(tmp_path / "home"))
    writer, calls = fail_write(after=4, name_prefix=".last.safetensors.")
    monkeypatch.setattr(pathlib.Path, "write_bytes", writer)
    recipe, out = write_recipe(tmp_path), tmp_path / "runs"
    last = out / "tiny" / "checkpoints" / "last.safetensors"
    code, lines, _ = cli_in_process(capsys, *run_args(recipe, out))
    monkeypatch.undo()
    assert len(calls) == 4 and code == 2, lines
    assert lines[-1].startswith(f"error: cannot write {last}: disk full (No space left on device); the previous file")
    assert stale_temp_files(out / "tiny") == []
    weights, state = load_checkpoint(last)
    assert state["epoch"] == 2 and all(torch.isfinite(v).all() for v in weights.values())
    assert "fit" not in ledger(out / "tiny")

    monkeypatch.setenv("AVGEN_HOME", str(tmp_path / "home"))
    code, lines, _ = cli_in_process(capsys, *run_args(recipe, out))
    assert code == 0 and "(epoch 2)" in " ".join(lines), lines[-20:]
    assert_same_result(out / "tiny", reference)


def test_disk_full_in_the_cache_keeps_the_old_entry_and_no_temp_file(tmp_path, monkeypatch):
    cache = FeatureCache(tmp_path)
    key = "cd" * 32
    cache.put(key, {"wave": torch.ones(4)})
    writer, _ = fail_write(after=1, name_prefix=f".{key}.")
    monkeypatch.setattr(pathlib.Path, "write_bytes", writer)
    with pytest.raises(AvgenError, match=rf"cannot write {cache.path(key)}: disk full"):
        cache.put(key, {"wave": torch.zeros(4)})
    monkeypatch.undo()
    assert torch.equal(cache.get(key)["wave"], torch.ones(4))
    assert stale_temp_files(tmp_path) == []


def test_a_read_error_inside_an_atomic_write_is_not_reported_as_a_write_error(tmp_path):
    missing = tmp_path / "input.wav"
    with pytest.raises(FileNotFoundError):
        with atomic_path(tmp_path / "out.bin") as tmp:
            tmp.write_bytes(missing.read_bytes())
    assert list(tmp_path.iterdir()) == []


def test_a_read_only_folder_is_one_clear_error(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        if os.access(folder, os.W_OK):
            pytest.skip("running as a user that can write to read-only folders (root)")
        with pytest.raises(AvgenError, match=rf"cannot write {folder / 'x.json'}: permission denied"):
            write_bytes(folder / "x.json", b"{}")
    finally:
        folder.chmod(0o700)
