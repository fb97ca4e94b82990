"""The run report: a real run directory in tmp_path -> report.html / report.md."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from html.parser import HTMLParser
from pathlib import Path

import librosa
import numpy as np
import pytest
import soundfile as sf
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

import avgen
from avgen import EvalContext, write_report
from avgen_eval.clips import spectrogram_db
from avgen_eval.figures import save_confusion_matrix
from avgen_eval.report import format_number

RATE = 8000
CLASSES = ["wood", "metal", "glass"]


def hit(freq: float, at: float, rng: np.random.Generator, seconds: float = 0.5) -> np.ndarray:
    t = np.arange(int(seconds * RATE)) / RATE
    local = np.clip(t - at, 0, None)
    wave = np.where(t >= at, np.exp(-local / 0.05) * np.sin(2 * np.pi * freq * local), 0.0)
    return (0.5 * wave + 0.003 * rng.standard_normal(len(t))).astype(np.float32)


def make_run_dir(root: Path) -> Path:
    """A run directory as the runner writes it: recipe, dataset, generated wavs, metrics computed
    by the real metrics on those wavs, a loss-curve PNG and a confusion-matrix PNG."""
    rng = np.random.default_rng(0)
    run = root / "pocan_fake"
    (run / "figures").mkdir(parents=True)
    (run / "recipe.toml").write_text('[run]\nname = "pocan_fake"\nseed = 0\n\n[data]\nname = "synthetic_hits"\n')
    (run / "environment.json").write_text(json.dumps({"python": "3.11", "torch": torch.__version__, "device": "cpu"}))
    (run / "dataset.json").write_text(json.dumps({"name": "synthetic_hits", "class_names": CLASSES, "splits": {"train": 30, "test": 3}}))
    ids, labels = ["vid1_hit0", "vid2_hit3", "vid3_hit1"], [0, 1, 2]
    real = np.stack([hit(300 * (1 + c), 0.15, rng) for c in labels])
    raw = np.stack([hit(300 * (1 + c), 0.17, rng) * 0.7 for c in labels])
    exemplar = np.stack([hit(300 * (1 + (c + 1) % 3), 0.2, rng) for c in labels])
    clips = []
    for i, clip_id in enumerate(ids):
        for kind, waves in (("raw", raw), ("exemplar", exemplar), ("real", real)):
            if kind == "real" and i == 2:
                continue  # only example clips keep their real audio
            path = run / "generated" / kind / f"{clip_id}.wav"
            path.parent.mkdir(parents=True, exist_ok=True)
            sf.write(str(path), waves[i], RATE, subtype="PCM_16")
        clips.append({"id": clip_id, "label": labels[i], "class": CLASSES[labels[i]], "predicted": (labels[i] + 1) % 3,
                      "exemplar_id": f"train_{i}", "retrieved": [f"train_{i}", "train_9"],
                      "raw": f"generated/raw/{clip_id}.wav", "exemplar": f"generated/exemplar/{clip_id}.wav"})
    (run / "generated" / "index.json").write_text(json.dumps({"clips": clips, "examples": ids[:2], "sample_rate": RATE}))

    ctx = EvalContext(run_dir=run, sample_rate=RATE, class_names=CLASSES, test_ids=ids,
                      test_labels=torch.tensor(labels), real_waves=torch.from_numpy(real),
                      train_labels=torch.tensor([0, 1, 2, 0]), retrieved=torch.tensor([[0, 3], [2, 1], [1, 0]]),
                      generated={"raw": torch.from_numpy(raw), "exemplar": torch.from_numpy(exemplar)})
    metrics = {name: avgen.create("metric", name).compute(ctx) for name in ("recall_at_k", "onset", "log_spectral_distance")}
    metrics["sound_classifier"] = {"acc_real": 0.666667, "acc_raw": 1 / 3, "acc_exemplar": 0.0}  # full precision on purpose
    (run / "metrics.json").write_text(json.dumps(metrics, indent=2))
    (run / "history.json").write_text(json.dumps([{"epoch": e, "loss": 1.0 / e} for e in range(1, 6)]))

    fig = Figure(figsize=(5, 3))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.plot(range(1, 6), [1.0 / e for e in range(1, 6)], color="tab:red", linewidth=3)
    ax.set_title("loss")
    fig.savefig(run / "figures" / "loss_curve.png")
    save_confusion_matrix(run / "figures" / "confusion_raw.png", torch.tensor([[1, 1, 0], [0, 0, 1], [1, 0, 0]]), CLASSES)
    return run


class Cells(HTMLParser):
    """Collects the text of <td data-key=...> cells and every src attribute."""

    def __init__(self) -> None:
        super().__init__()
        self.cells: dict[str, str] = {}
        self.sources: list[tuple[str, str]] = []
        self._key: str | None = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "td" and "data-key" in attrs:
            self._key = attrs["data-key"]
            self.cells[self._key] = ""
        if "src" in attrs:
            self.sources.append((tag, attrs["src"]))

    def handle_data(self, data):
        if self._key is not None:
            self.cells[self._key] += data

    def handle_endtag(self, tag):
        if tag == "td":
            self._key = None


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    run = make_run_dir(tmp_path_factory.mktemp("runs"))
    html_path, md_path = write_report(run)
    return run, html_path, md_path


def flat_metrics(run: Path) -> dict[str, float]:
    metrics = json.loads((run / "metrics.json").read_text())
    return {f"{comp}/{key}": value for comp, values in metrics.items() for key, value in values.items()}


def test_every_metric_number_is_in_the_html_exactly(report):
    run, html_path, _ = report
    parser = Cells()
    parser.feed(html_path.read_text())
    expected = flat_metrics(run)
    assert len(expected) >= 15
    assert set(parser.cells) == set(expected)
    for key, value in expected.items():
        assert float(parser.cells[key]) == value, key  # parses back to exactly the metrics.json number
    assert "0.3333333333333333" in parser.cells["sound_classifier/acc_raw"]


def test_every_metric_number_is_in_the_markdown_exactly(report):
    run, _, md_path = report
    rows = {}
    for line in md_path.read_text().splitlines():
        m = re.fullmatch(r"\| (\S+) \| (\S+) \| (\S+) \|", line)
        if m and m.group(1) not in ("metric", "class"):
            rows[f"{m.group(1)}/{m.group(2)}"] = m.group(3)
    expected = flat_metrics(run)
    assert set(rows) == set(expected)
    assert all(float(rows[k]) == v for k, v in expected.items())


def test_html_is_self_contained(report):
    run, html_path, _ = report
    parser = Cells()
    text = html_path.read_text()
    parser.feed(text)
    images = [s for tag, s in parser.sources if tag == "img"]
    audio = [s for tag, s in parser.sources if tag == "audio"]
    assert all(s.startswith("data:image/png;base64,") for s in images)
    assert all(s.startswith("data:audio/wav;base64,") for s in audio)
    assert len(images) == 2 + 2  # loss curve, confusion matrix, two example spectrograms
    assert len(audio) == 2 * 3  # ground truth, raw, exemplar per example clip
    assert images[0] == "data:image/png;base64," + __import__("base64").b64encode((run / "figures/loss_curve.png").read_bytes()).decode()
    assert "http://" not in text and "https://" not in text
    for word in ("pocan_fake", "synthetic_hits", "vid1_hit0", "predicted class: metal", "[run]", "wood"):
        assert word in text


def test_markdown_links_are_relative_and_exist(report):
    run, _, md_path = report
    links = re.findall(r"\]\(([^)]+)\)", md_path.read_text()) + re.findall(r'src="([^"]+)"', md_path.read_text())
    assert any(link.startswith("figures/examples/") for link in links)
    assert any(link == "figures/loss_curve.png" for link in links)
    for link in links:
        assert not Path(link).is_absolute() and (run / link).is_file(), link


def test_spectrogram_matches_librosa():
    wave = np.random.default_rng(0).standard_normal(4000).astype(np.float32)
    ours = spectrogram_db(wave)
    ref = 20 * np.log10(np.maximum(np.abs(librosa.stft(wave, n_fft=1024, hop_length=256, center=True, pad_mode="constant")), 1e-6))
    np.testing.assert_allclose(ours, ref, atol=1e-3)


def test_missing_parts(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    html_path, md_path = write_report(empty)
    assert "No metrics yet" in html_path.read_text() and "No metrics yet" in md_path.read_text()

    bare = tmp_path / "no_generator"
    bare.mkdir()
    (bare / "recipe.toml").write_text('[run]\nname = "features_only"\n')
    (bare / "metrics.json").write_text(json.dumps({"onset": {"onsets_per_clip_real": 1.5}}))
    html_path, md_path = write_report(bare)
    text = html_path.read_text()
    assert "features_only" in text and 'data-key="onset/onsets_per_clip_real">1.5<' in text
    assert "Example clips" not in text and "<img" not in text
    assert "| onset | onsets_per_clip_real | 1.5 |" in md_path.read_text()


def test_format_number_round_trips():
    for value in (0.1, 1 / 3, 1e-7, 123456.789, 2.0, 0.0):
        assert float(format_number(value)) == value
    assert format_number(3) == "3" and format_number(float("nan")) == "nan"


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install -y chromium)")
def test_report_renders_in_headless_chromium(report, tmp_path):
    from PIL import Image

    _, html_path, _ = report
    shot = tmp_path / "shot.png"
    started = time.perf_counter()
    proc = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}", "--window-size=1200,2000",
         "--hide-scrollbars", html_path.resolve().as_uri()],
        capture_output=True, text=True, timeout=120,
    )
    elapsed = time.perf_counter() - started
    assert shot.is_file(), proc.stderr[-2000:]
    image = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    assert image.shape == (2000, 1200, 3)
    not_white = (image.min(axis=2) < 240).mean()
    assert not_white > 0.02, f"screenshot is blank ({not_white:.4f} non-white)"
    # text is grey; only the figures (loss curve, confusion matrix, spectrograms) put colour on the page
    colourful = (image.max(axis=2) - image.min(axis=2) > 80).mean()
    assert colourful > 0.005, f"no figure visible ({colourful:.4f} coloured)"
    print(f"chromium screenshot in {elapsed:.1f} s: {not_white:.3f} non-white, {colourful:.3f} coloured")


class TimingSections:
    """A plugin of this test with a section of its own: the report and the compare page show it without knowing it."""

    def __init__(self, broken: set[str]) -> None:
        self.broken = broken

    @avgen.hookimpl
    def run_sections(self, run_dir):
        if Path(run_dir).name in self.broken:
            return [avgen.RunSection("drift", "Clock drift", "from timing.json", error=f"{run_dir}/timing.json: damaged",
                                     summary=avgen.RunSummary("drift"))]
        return [avgen.RunSection("drift", "Clock drift", "Offsets | per clip.", columns=("clip", "offset ms"),
                                 rows=(("a|b", "3.5"), ("c", "-1.0")),
                                 summary=avgen.RunSummary("drift", {"drift ms": "2.2"}, "<i>drift</i>: mean offset"))]


@pytest.fixture
def timing_sections():
    from avgen._core.plugins import get_plugins, reset

    broken: set[str] = set()
    get_plugins().pm.register(TimingSections(broken), name="test_timing_sections")
    yield broken
    reset()  # the next access reloads the plugins without it


def test_a_plugin_section_is_in_the_report_and_the_compare_page(timing_sections, tmp_path, capsys, monkeypatch):
    from avgen._core.report import run_sections
    from conftest import avgen_in_process

    run = make_run_dir(tmp_path)
    assert [s.title for s in run_sections(run)] == ["Clock drift"]
    html_path, md_path = write_report(run)
    page, markdown = html_path.read_text(), md_path.read_text()
    assert ("<h2>Clock drift</h2><p>Offsets | per clip.</p><table id=\"drift\"><tr><th>clip</th><th>offset ms</th></tr>"
            "<tr><td>a|b</td><td>3.5</td></tr><tr><td>c</td><td>-1.0</td></tr></table>") in page
    assert page.index("Clock drift") < page.index("<h2>Figures</h2>")
    assert ("## Clock drift\n\nOffsets | per clip.\n\n| clip | offset ms |\n|---|---:|\n| a\\|b | 3.5 |\n| c | -1.0 |\n"
            in markdown)

    other = shutil.copytree(run, tmp_path / "other")
    timing_sections.add("other")
    assert "<p class=\"warning\">" + f"{other}/timing.json: damaged</p>" in write_report(other)[0].read_text()
    monkeypatch.chdir(tmp_path)
    code, _, lines = avgen_in_process(capsys, "compare", str(run), str(other), "-o", "page.html")
    assert code == 0, lines
    compare = (tmp_path / "page.html").read_text()
    assert "<p><i>drift</i>: mean offset</p>" in compare and "<th>drift ms</th>" in compare
    assert f'<p id="drift-errors" class="warning">{other}/timing.json: damaged</p>' in compare
    run_row = next(r for r in compare.split("<tr") if "pocan_fake (2 runs, 1 seed)</td>" in r)  # the copy folds in
    assert run_row.count('<td class="num drift">2.2</td>') == 1


def test_no_report_without_a_plugin_that_renders_it(tmp_path, monkeypatch):
    from avgen._core.plugins import reset

    run = make_run_dir(tmp_path)
    monkeypatch.setenv("AVGEN_LOAD_PLUGINS", "")  # no plugin at all: nothing renders reports
    reset()
    try:
        with pytest.raises(avgen.AvgenError, match="^no plugin renders run reports .*AVGEN_LOAD_PLUGINS$"):
            write_report(run)
        assert not (run / "report.html").exists()
    finally:
        monkeypatch.delenv("AVGEN_LOAD_PLUGINS")
        reset()
