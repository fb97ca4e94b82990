"""`avgen compare` through the real CLI, and compare_runs."""

from __future__ import annotations

import html
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from rich.console import Console

from avgen_eval.compare import OTHER_DATA, PAPER_RESULTS, compare_runs, paper_notes, render_html, rich_tables


def make_run(root: Path, name: str, dataset: str, metrics: dict) -> Path:
    run = root / name
    run.mkdir(parents=True)
    (run / "recipe.toml").write_text(f'[run]\nname = "{name}"\n')
    (run / "dataset.json").write_text(json.dumps({"name": dataset, "class_names": ["a", "b"], "splits": {"train": 4, "test": 2}}))
    (run / "metrics.json").write_text(json.dumps(metrics))
    return run


POCAN = {"recall_at_k": {"R@1": 0.41234, "R@5": 0.6, "R@10": 0.75}, "sound_classifier": {"acc_real": 0.9, "acc_raw": 0.456789},
         "log_spectral_distance": {"lsd_raw": 1.5}}
OWENS = {"recall_at_k": {"R@1": 0.2, "R@5": 0.4, "R@10": 0.5}, "sound_classifier": {"acc_real": 0.9, "acc_raw": 0.25}}


def avgen_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "avgen", *args], capture_output=True, text=True, cwd=cwd, timeout=120)


def test_compare_runs_adds_paper_rows_for_greatest_hits(tmp_path):
    a = make_run(tmp_path, "pocan_ghd", "greatest_hits", POCAN)
    b = make_run(tmp_path, "owens_ghd", "greatest_hits", OWENS)
    rows = compare_runs([a, b])
    assert [r["model"] for r in rows[:2]] == ["pocan_ghd", "owens_ghd"]
    assert rows[0]["metrics"]["recall_at_k/R@1"] == 0.41234 and rows[0]["source"] == "run"
    paper = [r for r in rows if r["source"] == "paper"]
    assert len(paper) == len(PAPER_RESULTS["greatest_hits"]) == 5
    pocan = next(r for r in paper if r["model"].startswith("POCAN"))
    assert pocan["metrics"] == pytest.approx({"recall_at_k/R@1": 0.3302, "recall_at_k/R@5": 0.5719, "recall_at_k/R@10": 0.6553,
                                              "sound_classifier/acc_raw": 0.3632, "sound_classifier/acc_real": 0.5134})


def test_other_datasets_get_the_greatest_hits_rows_marked_as_other_data(tmp_path):
    rows = compare_runs([make_run(tmp_path, "quick", "synthetic_hits", OWENS)])
    assert [r["source"] for r in rows] == ["run"] + [OTHER_DATA] * len(PAPER_RESULTS["greatest_hits"])
    assert "other data" in OTHER_DATA
    page = render_html(rows)
    assert page.count(f"<td>{OTHER_DATA}</td>") == len(PAPER_RESULTS["greatest_hits"])
    vig = compare_runs([make_run(tmp_path, "v", "vig", OWENS)])
    assert [r["model"] for r in vig if r["source"] == "paper"] == [m for m, _ in PAPER_RESULTS["vig"]]
    assert [r["source"] for r in vig if r["dataset"] == "greatest_hits"] == [OTHER_DATA] * 5


def run_main(*args: str) -> int:
    """The CLI entry point in this process (fast); returns its exit code."""
    from avgen._core.cli import main

    try:
        main(list(args))
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


def test_avgen_compare_cli(tmp_path, capsys):
    a = make_run(tmp_path, "pocan_ghd", "greatest_hits", POCAN)
    b = make_run(tmp_path, "owens_ghd", "greatest_hits", OWENS)
    out = tmp_path / "table.html"
    proc = avgen_cli("compare", str(a), str(b), "-o", str(out), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    for text in ("pocan_ghd", "owens_ghd", "POCAN (res+spec)", "0.4123", "45.68", "0.3302", "36.32", "51.34"):
        assert text in proc.stdout, text
    assert "log_spectral_distance/lsd_raw" in proc.stdout
    caption = " ".join(proc.stdout.split())  # the table says what its columns are
    assert "R@K: a test clip's generated sound retrieves a training clip of its class" in caption
    assert "acc %: a sound classifier's accuracy on the generated raw sound" in caption
    page = out.read_text()
    assert page.startswith("<!DOCTYPE html>") and "0.4123" in page and "45.68" in page and "0.5719" in page
    assert "log_spectral_distance/lsd_raw" in page and "1.5000" in page

    capsys.readouterr()
    assert run_main("compare", str(a), str(tmp_path / "nope"), "-o", str(out)) == 2  # in-process: no second start-up
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "nope" in lines[0] and "Traceback" not in err


def test_compare_json_default_output_help_and_errors(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    a = make_run(tmp_path, "pocan_ghd", "greatest_hits", POCAN)
    assert run_main("compare", str(a), "--json") == 0
    assert json.loads(capsys.readouterr().out)[0]["metrics"]["sound_classifier/acc_raw"] == 0.456789
    assert (tmp_path / "compare.html").is_file()  # the default output

    empty = tmp_path / "not_evaluated"
    empty.mkdir()
    assert run_main("compare", str(empty)) == 2
    err = capsys.readouterr().err
    assert "metrics.json" in err and len(err.strip().splitlines()) == 1

    assert run_main("compare", "--help") == 0
    assert "Table 2/3" in capsys.readouterr().out
    assert run_main("compare") == 2  # RUN_DIRS is required


def seeded_run(root: Path, folder: str, seed: int, generator: str, recall: dict, out: str) -> Path:
    run = root / folder
    run.mkdir(parents=True)
    (run / "recipe.toml").write_text(f'[run]\nname = "pocan"\nseed = {seed}\nout = "{out}"\n\n'
                                     f'[data]\nname = "synthetic_hits"\n\n[generator]\nname = "{generator}"\n')
    (run / "dataset.json").write_text(json.dumps({"name": "synthetic_hits", "class_names": ["a", "b"]}))
    (run / "metrics.json").write_text(json.dumps({"recall_at_k": recall, "log_spectral_distance": {"lsd_raw": 1.0 + seed}}))
    return run


BASE = {"chance.R@1": 0.0588, "visual_nn.R@1": 0.7, "train_mean.R@1": 0.05, "oracle.R@1": 0.9}


def test_runs_that_differ_only_in_seed_fold_into_mean_and_std(tmp_path):
    r1 = [0.41, 0.45, 0.52]
    dirs = [seeded_run(tmp_path, f"s{seed}", seed, "can_lstm", {"R@1": r, **BASE}, f"runs/s{seed}")
            for seed, r in zip((0, 1, 2), r1)]
    other = seeded_run(tmp_path, "owens", 0, "owens_lstm", {"R@1": 0.06, **{**BASE, "visual_nn.R@1": 0.5}}, "runs/o")
    rows = compare_runs([*dirs, other])
    runs = [r for r in rows if r["source"] == "run"]
    assert [r["model"] for r in runs] == ["pocan (3 seeds)", "pocan"]
    folded = runs[0]
    assert folded["seeds"] == [0, 1, 2] and folded["runs"] == [str(d) for d in dirs]
    assert folded["metrics"]["recall_at_k/R@1"] == pytest.approx(np.mean(r1))
    assert folded["std"]["recall_at_k/R@1"] == pytest.approx(np.std(r1, ddof=1))
    assert folded["std"]["log_spectral_distance/lsd_raw"] == pytest.approx(1.0)
    assert "recall_at_k/R@1" not in runs[1]["std"]
    # the baselines the runs computed: one row per baseline and distinct value, labelled, with R@1 as video cls
    baselines = [r for r in rows if r["source"] == "baseline"]
    assert [r["model"] for r in baselines] == [
        "chance (random training clips)", "visual nearest neighbour (as in pocan (3 seeds))", "training-mean spectrogram",
        "oracle (the true test sound)", "visual nearest neighbour (as in pocan)"]
    assert baselines[1]["metrics"] == pytest.approx({"recall_at_k/R@1": 0.7, "recall_at_k/video_class_acc": 0.7})
    assert baselines[1]["std"] == {"recall_at_k/R@1": 0.0, "recall_at_k/video_class_acc": 0.0}
    page = render_html(rows)
    assert f"{np.mean(r1):.4f} ± {np.std(r1, ddof=1):.4f}" in page
    assert page.count('<tr class="baseline">') == 5
    assert "visual_nn" not in page.split('id="other-metrics"')[1]  # baselines are rows, not other metrics


def test_runs_the_report_flagged_as_collapsed_are_marked(tmp_path):
    def flag(run: Path, warnings: list[str]) -> None:
        (run / "stages.json").write_text(json.dumps({"stages": {"report": {"status": "done", "collapse_warnings": warnings}}}))

    seeds = [seeded_run(tmp_path, f"s{seed}", seed, "owens_lstm", {"R@1": 0.06}, f"runs/s{seed}") for seed in (0, 1, 2)]
    flag(seeds[0], ["74 of 74 test clips get the same exemplar (training clip x)"])
    flag(seeds[1], [])
    single = seeded_run(tmp_path, "can", 0, "can_lstm", {"R@1": 0.06}, "runs/c")
    flag(single, ["recall_at_k: R@1 0.0600 (chance 0.0610) not above chance"])
    fine = seeded_run(tmp_path, "pocan", 0, "pocan_lstm", {"R@1": 0.9}, "runs/p")
    rows = [r for r in compare_runs([*seeds, single, fine]) if r["source"] == "run"]
    assert [r["model"] for r in rows] == ["pocan (3 seeds) [collapsed? 1 of 3 seeds]", "pocan [collapsed?]", "pocan"]
    # the terminal table prints the marks (rich would take a bare [collapsed?] for markup and drop it)
    console = Console(width=200, record=True)
    for table in rich_tables(compare_runs([*seeds, single, fine])):
        console.print(table)
    text = console.export_text()
    assert "pocan (3 seeds) [collapsed? 1 of 3 seeds]" in text and "pocan [collapsed?]" in text


def test_runs_of_one_seed_fold_as_runs_not_seeds(tmp_path):
    """Two runs of seed 0 (e.g. one alone with 2 threads, one beside others with 1) differ by rounding only: the row
    says '2 runs, 1 seed', not '2 seeds'."""
    dirs = [seeded_run(tmp_path, f"r{k}", 0, "can_lstm", {"R@1": r, **BASE}, f"runs/r{k}") for k, r in enumerate((0.4, 0.5))]
    dirs.append(seeded_run(tmp_path, "r2", 1, "can_lstm", {"R@1": 0.45, **BASE}, "runs/r2"))
    assert [r["model"] for r in compare_runs(dirs) if r["source"] == "run"] == ["pocan (3 runs, 2 seeds)"]
    assert [r["model"] for r in compare_runs(dirs[:2]) if r["source"] == "run"] == ["pocan (2 runs, 1 seed)"]


def test_a_collapsed_row_of_runs_sharing_a_seed_counts_runs_and_the_caption_keeps_its_mark(tmp_path):
    """Two runs of one seed, both flagged: '[collapsed? 2 of 2 runs]' (not seeds), and the terminal caption naming the
    rows on stand-in data keeps the bracketed mark (rich took it for markup and dropped it)."""
    dirs = [seeded_run(tmp_path, f"r{k}", 0, "owens_lstm", {"R@1": 0.06}, f"runs/r{k}") for k in range(2)]
    for run in dirs:
        (run / "stages.json").write_text(json.dumps({"stages": {"report": {"collapse_warnings": ["not above chance"]}}}))
        dataset = json.loads((run / "dataset.json").read_text())
        (run / "dataset.json").write_text(json.dumps({**dataset, "name": "greatest_hits", "provenance": "stand-in"}))
    rows = compare_runs(dirs)
    assert [r["model"] for r in rows if r["source"] == "run"] == ["pocan (2 runs, 1 seed) [collapsed? 2 of 2 runs]"]
    console = Console(width=400, record=True)
    for table in rich_tables(rows):
        console.print(table)
    assert "pocan (2 runs, 1 seed) [collapsed? 2 of 2 runs] is on stand-in" in " ".join(console.export_text().split())


def test_stand_in_data_and_other_encoders_are_said_beside_the_papers_rows(tmp_path):
    """Synthetic hits in the Greatest Hits layout are read by the greatest_hits loader, which records their
    provenance: the paper's rows are then other data, and the features the runs used are named."""
    synth = make_run(tmp_path, "can_ghd", "greatest_hits", POCAN)
    dataset = json.loads((synth / "dataset.json").read_text())
    (synth / "dataset.json").write_text(json.dumps({**dataset, "provenance": "synthetic hits written by avgen data synth"}))
    (synth / "recipe.toml").write_text('[run]\nname = "can_ghd"\n[encoder]\nname = "efficientnet_lite0"\n')
    rows = compare_runs([synth])
    assert {r["source"] for r in rows if r["dataset"] == "greatest_hits" and r["run_dir"] is None} == {OTHER_DATA}
    notes = paper_notes(rows)
    assert notes[0] == "the paper's numbers are on the real Greatest Hits; can_ghd is on synthetic hits written by avgen data synth"
    assert notes[1] == "the paper's rows used ResNet-200 and AlexNet features; runs here used efficientnet_lite0"
    assert all(html.escape(note[1:]) in render_html(rows) for note in notes)
    real = make_run(tmp_path, "pocan_ghd", "greatest_hits", POCAN)
    (real / "recipe.toml").write_text('[run]\nname = "pocan_ghd"\n[encoder]\nname = "resnet200d"\n')
    rows = compare_runs([real])
    assert [r["source"] for r in rows if r["run_dir"] is None and r["dataset"] == "greatest_hits"][-5:] == ["paper"] * 5
    assert paper_notes(rows) == []


def test_a_folder_of_runs_stands_for_its_runs(tmp_path, capsys):
    """`avgen compare runs/*` where runs/quickstart holds the runs of a recipe with variants."""
    group = tmp_path / "runs" / "quickstart"
    make_run(group, "owens", "synthetic_hits", OWENS)
    make_run(group, "pocan", "synthetic_hits", POCAN)
    alone = make_run(tmp_path / "runs", "can", "synthetic_hits", POCAN)
    code = run_main("compare", str(alone), str(group), "-o", str(tmp_path / "c.html"), "--json")
    assert code == 0, capsys.readouterr().err
    rows = json.loads(capsys.readouterr().out)
    assert [r["model"] for r in rows if r["source"] == "run"] == ["can", "owens", "pocan"]
