"""Cache entries that several processes want at once are each made by one of them (avgen.make_each)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from avgen import make_each, make_once
from avgen._core.cache import lock_path

WORKER = textwrap.dedent("""
    import os, sys, time
    from pathlib import Path
    from avgen import make_each

    folder, log = Path(sys.argv[1]), Path(sys.argv[2])
    while not (folder / "go").is_file():  # both processes start making at the same moment
        time.sleep(0.005)

    def make(i, tmp):
        with open(log, "a", encoding="utf-8") as out:
            out.write(f"{i} {os.getpid()}\\n")
        time.sleep(0.05)
        tmp.write_text(f"entry {i}")

    make_each([folder / f"{i}.txt" for i in range(12)], make)
    print(sorted(p.read_text() for p in folder.glob("*.txt")) == sorted(f"entry {i}" for i in range(12)))
""")


def test_two_processes_make_each_entry_once_and_both_get_all(tmp_path):
    folder, log = tmp_path / "cache", tmp_path / "made.log"
    folder.mkdir()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, str(folder), str(log)], stdout=subprocess.PIPE, text=True,
                              env=env) for _ in range(2)]
    (folder / "go").write_text("")
    outputs = [p.communicate(timeout=120)[0].strip() for p in procs]
    assert [p.returncode for p in procs] == [0, 0]
    assert outputs == ["True", "True"]  # each saw every entry when it returned
    made = [line.split()[0] for line in log.read_text().splitlines()]
    assert sorted(made, key=int) == [str(i) for i in range(12)]  # every entry made exactly once
    assert not list(folder.glob("*.lock"))


def test_an_entry_another_process_is_making_is_waited_for_not_made_again(tmp_path):
    paths = [tmp_path / f"{i}.txt" for i in range(3)]
    lock_path(paths[1]).write_text(f"{socket.gethostname()} {os.getpid()}")  # held by a live process (this one)

    def other_maker() -> None:
        time.sleep(0.3)
        paths[1].write_text("made by the other")
        lock_path(paths[1]).unlink()

    thread = threading.Thread(target=other_maker)
    thread.start()
    made = []
    make_each(paths, lambda i, tmp: (made.append(i), tmp.write_text(f"entry {i}")))
    thread.join()
    assert made == [0, 2]
    assert paths[1].read_text() == "made by the other"


def test_the_lock_of_a_process_that_is_gone_is_taken_over(tmp_path):
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True).stdout.strip()
    path = tmp_path / "entry.txt"
    lock_path(path).write_text(f"{socket.gethostname()} {gone}")
    make_once(path, lambda tmp: tmp.write_text("made"))
    assert path.read_text() == "made" and not lock_path(path).exists()


def test_an_entry_whose_maker_failed_is_made_by_the_waiter(tmp_path):
    path = tmp_path / "entry.txt"
    lock_path(path).write_text(f"{socket.gethostname()} {os.getpid()}")
    thread = threading.Timer(0.2, lambda: lock_path(path).unlink())  # the other maker gives up without the file
    thread.start()
    make_once(path, lambda tmp: tmp.write_text("made here"))
    thread.join()
    assert path.read_text() == "made here"


def test_a_make_that_fails_leaves_neither_entry_nor_lock(tmp_path):
    path = tmp_path / "entry.txt"

    def make(tmp: Path) -> None:
        tmp.write_text("half")
        raise ValueError("broken input")

    with pytest.raises(ValueError, match="broken input"):
        make_once(path, make)
    assert list(tmp_path.iterdir()) == []


def test_a_long_making_keeps_its_lock_fresh_and_an_untouched_lock_is_taken_over(tmp_path, monkeypatch):
    import avgen._core.cache as cache

    monkeypatch.setattr(cache, "HEARTBEAT_SECONDS", 0.05)
    path = tmp_path / "entry.txt"
    lock = lock_path(path)
    ages = []

    def slow(tmp: Path) -> None:
        os.utime(lock, (0, 0))  # as if untouched for decades: the heartbeat must freshen it
        deadline = time.monotonic() + 60  # (it beats every 0.05 s here; the deadline only keeps a failure finite)
        while time.time() - lock.stat().st_mtime > 60 and time.monotonic() < deadline:
            time.sleep(0.01)
        ages.append(time.time() - lock.stat().st_mtime)
        tmp.write_text("made")

    make_once(path, slow)
    assert ages[0] < 60 and path.read_text() == "made" and not lock.exists()

    other = tmp_path / "other.txt"  # a lock of a live process (this one) untouched for longer than the limit
    lock_path(other).write_text(f"{socket.gethostname()} {os.getpid()}")
    os.utime(lock_path(other), (time.time() - cache.OLD_LOCK_SECONDS - 10,) * 2)
    make_once(other, lambda tmp: tmp.write_text("taken over"))
    assert other.read_text() == "taken over"


def test_a_folder_where_no_lock_can_be_made_says_why_the_entry_cannot_be_written(tmp_path, monkeypatch):
    import avgen
    import avgen._core.cache as cache

    real_open = os.open

    def no_locks(path, flags, *args):
        if str(path).endswith(".lock"):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, flags, *args)

    monkeypatch.setattr(cache.os, "open", no_locks)
    path = tmp_path / "entry.txt"
    make_once(path, lambda tmp: tmp.write_text("made without a lock"))  # a writable folder: made all the same
    assert path.read_text() == "made without a lock"
    (tmp_path / "file.txt").write_text("a file where a folder would go")
    with pytest.raises(avgen.AvgenError, match="cannot write"):  # an unwritable place: the write's own line
        make_once(tmp_path / "file.txt" / "below-a-file.txt", lambda tmp: tmp.write_text("x"))
