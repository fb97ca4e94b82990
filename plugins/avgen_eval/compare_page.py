"""What the compare page shows beyond its tables: relative links to each run's report, a bar chart of the
headline metrics with the baselines, a row of players per test clip (real sound, then each run's raw and
exemplar sound, each with its spectrogram) and the columns plugins add to a run (the ``summary`` of an
``avgen.RunSection``, e.g. the listening test's mean opinion scores).

The chart, sounds and spectrograms are files in ``<page>_files/`` next to the page, linked relatively:
the page already links to the runs' reports, so it is a folder to move or zip as a whole, not a single
file, and separate files keep it small (audio loads when played) instead of a page of base64.

``write_page`` writes the page and its files folder together: the files into a staging folder beside it,
the page to a temporary file, both put in place at the end. A failed write (a full disk) or Ctrl-C leaves
the previous page and folder as they were and none of the new files.
"""

from __future__ import annotations

import html
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable
from urllib.parse import quote

from avgen import (AvgenError, RunSummary, atomic_path, folder_error, named_as, read_json, run_sections, staging_folder,
                   write_text)

from avgen_eval.clips import ExampleClip, example_clips, safe_name, save_spectrograms, spectrogram_panel
from avgen_eval.figures import save_bar_chart

PLAYER_CLIPS = 4  # test clips with players on the page
MARKER = ".avgen-compare"  # marks a files folder this command wrote (and may replace)
# (metric key, bar group label): R@K and the two class accuracies, all fractions
CHART_COLUMNS = [("recall_at_k/R@1", "R@1"), ("recall_at_k/R@5", "R@5"), ("recall_at_k/R@10", "R@10"),
                 ("recall_at_k/video_class_acc", "video cls"), ("sound_classifier/acc_raw", "sound cls (raw)")]
SOUNDS = (("raw", "raw"), ("exemplar", "exemplar"))  # each run's sounds in the players, after the real one


@dataclass
class PageMedia:
    """Everything the page links to, as hrefs relative to the page."""

    links: dict[str, str] = field(default_factory=dict)  # run dir -> its report.html
    chart: str | None = None
    players: str = ""  # the players section (HTML)
    summaries: dict[str, list[RunSummary]] = field(default_factory=dict)  # run dir -> its sections' summaries with cells
    written: list[str] = field(default_factory=list)  # what was written, for the terminal line
    errors: dict[str, list[str]] = field(default_factory=dict)  # summary (or section) name -> the runs' error lines

    def columns(self) -> list[tuple[str, str]]:
        """(summary name, column header) of every summary column, in order of appearance."""
        return list(dict.fromkeys((s.name, header) for summaries in self.summaries.values() for s in summaries
                                  for header in s.cells))

    def notes(self) -> list[str]:
        """The note (HTML) of each summary with columns, once per summary name."""
        notes: dict[str, str] = {}
        for summary in (s for summaries in self.summaries.values() for s in summaries):
            if summary.note and summary.name not in notes:
                notes[summary.name] = summary.note
        return list(notes.values())


def href(target: Path, page_dir: Path) -> str:
    """A relative URL from page_dir to target (both made absolute, so the page works wherever the folder moves)."""
    return quote(Path(os.path.relpath(os.path.abspath(target), os.path.abspath(page_dir))).as_posix())


def files_folder(output: Path) -> Path:
    """``compare_files/`` beside ``compare.html`` (the browsers' 'save page' convention)."""
    return output.with_name(output.stem + "_files")


def is_files_folder(path: Path) -> bool:
    """Whether ``path`` is a files folder an earlier compare wrote (``avgen compare runs/*/`` may name one)."""
    return (Path(path) / MARKER).is_file()


def check_files_folder(output: Path) -> None:
    """The page's files folder may be replaced: missing, or written by avgen compare."""
    folder = files_folder(output)
    if folder.exists() and not is_files_folder(folder):
        raise AvgenError(f"{folder}: exists and was not written by avgen compare; move it or pass another -o")


def write_page(rows: list[dict[str, Any]], output: Path, render: Callable[[PageMedia], str],
               clips: int = PLAYER_CLIPS) -> PageMedia:
    """Write the page ``render(media)`` to ``output`` and its files folder beside it, replacing an earlier
    compare's, all or nothing (see the module's docstring)."""
    output = Path(output)
    check_files_folder(output)
    folder = files_folder(output)
    with staging_folder(folder) as staging, named_as(staging, folder):
        media = write_media(rows, output, clips, into=staging)
        with atomic_path(output) as tmp:
            tmp.write_bytes(render(media).encode("utf-8"))
            _put_in_place(staging, folder)
    return media


def _put_in_place(staging: Path, folder: Path) -> None:
    """Rename ``staging`` to ``folder``, replacing an earlier compare's folder there (restored if the rename fails)."""
    old = folder.with_name(f".{folder.name}.old-{os.getpid()}") if folder.exists() else None
    try:
        if old is not None:
            os.replace(folder, old)
        try:
            os.replace(staging, folder)
        except OSError:
            if old is not None:
                os.replace(old, folder)
                old = None
            raise
    except OSError as exc:
        raise folder_error(folder, "the compare page's files folder", exc, "free space or pass another -o") from exc
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def write_media(rows: list[dict[str, Any]], output: Path, clips: int = PLAYER_CLIPS, into: Path | None = None) -> PageMedia:
    """Write the chart, sounds and spectrograms for the page ``output`` into ``into`` (a staging folder that becomes
    the page's files folder; by default the files folder itself, replacing what an earlier compare wrote there)
    and collect links and the runs' section summaries for ``render_html``."""
    output = Path(output)
    page_dir = output.parent
    folder = files_folder(output)
    if into is None:
        check_files_folder(output)
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        into = folder
    write_text(into / MARKER, "written by avgen compare; replaced on the next run\n")

    def link(path: Path) -> str:  # a file written in ``into``, as the page will find it in ``folder``
        return href(folder / path.relative_to(into), page_dir)

    media = PageMedia()
    runs = [r for r in rows if r["source"] == "run"]
    for row in runs:
        for run_dir in row["runs"]:
            report = Path(run_dir) / "report.html"
            if report.is_file():
                media.links[run_dir] = href(report, page_dir)
            for section in run_sections(run_dir):  # a damaged file of a section loses its columns, not the page
                if section.error:
                    name = section.summary.name if section.summary is not None else section.name
                    media.errors.setdefault(name, []).append(section.error)
                elif section.summary is not None and section.summary.cells:
                    media.summaries.setdefault(run_dir, []).append(section.summary)
    chart = write_chart(rows, into / "metrics.png")
    if chart is not None:
        media.chart = link(chart)
        media.written.append("bar chart")
    media.players, shown = write_players(runs, into, link, clips)
    if shown:
        media.written.append(f"players for {shown} clips")
    return media


def write_chart(rows: list[dict[str, Any]], path: Path) -> Path | None:
    """The headline metrics of the runs and their baselines as grouped bars (std as error bars); None when no row has one."""
    shown = [r for r in rows if r["source"] in ("run", "baseline")]
    columns = [(key, label) for key, label in CHART_COLUMNS if any(key in r["metrics"] for r in shown)]
    if not columns:
        return None
    bars = [(r["model"], [r["metrics"].get(key) for key, _ in columns], [r["std"].get(key) for key, _ in columns],
             r["source"] == "baseline") for r in shown]
    return save_bar_chart(path, [label for _, label in columns], bars, ylabel="fraction",
                          title="headline metrics (runs: mean ± std over seeds; grey: reference baselines)")


def shared_clips(run_dirs: list[str], count: int) -> list[str]:
    """Up to ``count`` test clips every run generated raw or exemplar sound for, with the real sound in one of
    them: the first run's examples first (spread over classes), then its other clips in order."""
    per_run = [{c.id: c for c in example_clips(Path(d), _clip_ids(d))} for d in run_dirs]
    first = per_run[0]
    examples = [c.id for c in example_clips(Path(run_dirs[0]))]
    order = list(dict.fromkeys(examples + list(first)))
    return [i for i in order
            if all(i in clips and ({"raw", "exemplar"} & set(clips[i].sounds)) for clips in per_run)
            and any("real" in clips[i].sounds for clips in per_run)][:count]


def _clip_ids(run_dir: str) -> list[str]:
    """Every test clip the run generated sound for (generated/index.json)."""
    index = read_json(Path(run_dir) / "generated" / "index.json")
    clips = index.get("clips") if isinstance(index, dict) else None
    return [str(c["id"]) for c in clips if isinstance(c, dict) and "id" in c] if isinstance(clips, list) else []


def write_players(runs: list[dict[str, Any]], folder: Path, link: Callable[[Path], str], count: int) -> tuple[str, int]:
    """The players section: one row per shared test clip (the first run of each folded row), else each run's own
    examples, its files written into ``folder`` and named in the page by ``link``; returns its HTML and how many
    clips it shows."""
    e = html.escape
    sources = [(row, row["runs"][0]) for row in runs if _clip_ids(row["runs"][0])]
    if not sources:
        return "", 0
    note = ("" if all(len(row["runs"]) == 1 for row, _ in sources)
            else " Rows folded over seeds play their first seed's run.")
    ids = shared_clips([d for _, d in sources], count)
    parts = ["<h2 id=\"players\">Listen</h2>"]
    if ids:
        parts.append(f"<p>The same {len(ids)} test clips for every run: the real sound, then each run's raw sound "
                     "(decoded from its predicted spectrogram) and exemplar sound (the training clip it retrieved). "
                     "Spectrograms in one row share one colour scale (80 dB)." + note + "</p>")
        head = ["clip", "real"] + [f"{row['model']} {title}" for row, _ in sources for _, title in SOUNDS]
        body = []
        for clip_id in ids:
            clips = [example_clips(Path(d), [clip_id])[0] for _, d in sources]
            real = next((Path(d) / c.sounds["real"] for (_, d), c in zip(sources, clips) if "real" in c.sounds))
            cells = [("real", real)] + [
                (f"{row['model']} {title}", Path(d) / c.sounds[kind]) if kind in c.sounds else (None, None)
                for (row, d), c in zip(sources, clips) for kind, title in SOUNDS]
            body.append(f"<tr><td>{e(clip_id)}<br><small>{e(_clip_text(clips[0]))}</small></td>"
                        + _sound_cells(cells, folder / safe_name(clip_id), link) + "</tr>")
        parts.append("<div style=\"overflow-x:auto\"><table id=\"players-table\"><tr>"
                     + "".join(f"<th>{e(h)}</th>" for h in head) + "</tr>" + "".join(body) + "</table></div>")
        return "\n".join(parts), len(ids)
    parts.append("<p id=\"no-shared-clips\">The runs share no test clips (different data or splits), so each run "
                  "shows its own examples: real, raw and exemplar sound." + note + "</p>")
    shown = 0
    for k, (row, d) in enumerate(sources):
        rows_html = []
        for clip in example_clips(Path(d))[:count]:
            cells = [(title, Path(d) / clip.sounds[kind]) if kind in clip.sounds else (None, None)
                     for kind, title in (("real", "real"), *SOUNDS)]
            rows_html.append(f"<tr><td>{e(clip.id)}<br><small>{e(_clip_text(clip))}</small></td>"
                             + _sound_cells(cells, folder / f"{k}-{safe_name(clip.id)}", link) + "</tr>")
            shown += 1
        if rows_html:
            parts.append(f"<h3>{e(row['model'])}</h3><div style=\"overflow-x:auto\"><table class=\"players-own\">"
                         "<tr><th>clip</th><th>real</th><th>raw</th><th>exemplar</th></tr>" + "".join(rows_html)
                         + "</table></div>")
    return "\n".join(parts), shown


def _sound_cells(cells: list[tuple[str | None, Path | None]], stem: Path, link: Callable[[Path], str]) -> str:
    """One table cell per sound: its player over its spectrogram (copied into the files folder as stem-N.wav/png),
    all on the colour scale of the loudest sound in the row; an empty cell for a missing one."""
    panels = [spectrogram_panel(title, wav) if wav is not None else None for title, wav in cells]
    top = max(float(p[1].max()) for p in panels if p is not None)
    out = []
    for n, ((title, wav), panel) in enumerate(zip(cells, panels)):
        if wav is None or panel is None:
            out.append("<td></td>")
            continue
        copy, image = stem.with_name(f"{stem.name}-{n}.wav"), stem.with_name(f"{stem.name}-{n}.png")
        with atomic_path(copy) as tmp:  # a full disk is one line naming the file, as for every other write
            shutil.copyfile(wav, tmp)
        save_spectrograms(image, [panel], top=top, width=3.2)
        alt = html.escape(f"spectrogram: {title}")
        out.append(f"<td><audio controls preload=\"none\" src=\"{link(copy)}\"></audio><br>"
                   f"<img src=\"{link(image)}\" alt=\"{alt}\" width=\"256\"></td>")
    return "".join(out)


def _clip_text(clip: ExampleClip) -> str:
    return f"class {clip.label}"


def summary_cell(row: dict[str, Any], media: PageMedia | None, name: str, header: str) -> str:
    """The cell of a summary column for the row's runs (joined by '; ' over seeds, e.g. '72.1 ± 4.3 (n=12)'); ''
    when none has one."""
    if media is None:
        return ""
    parts = []
    for run_dir in row.get("runs") or []:
        cell = next((s.cells.get(header, "") for s in media.summaries.get(run_dir, []) if s.name == name), "")
        if cell:
            parts.append(cell)
    return "; ".join(parts)
