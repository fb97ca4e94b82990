"""A folder of the user's own sounds as an exemplar bank: clips cut around each file's onsets, indexed once.

Files: wav, flac, ogg and mp3, found recursively (names starting with '.' are skipped). An
optional ``library.csv`` at the top (columns ``file``, ``label``, ``licence`` (or ``license``),
``source``; ``file`` relative to the folder) says what each file is and under which terms it may
be used; a file it does not list is labelled by its subfolder and its licence is "unknown".
The index (time-averaged representations and 16-bit clips) is cached under
``$AVGEN_HOME/cache/library/`` by the files' sizes and modification times, library.csv, the
representation and the clip length, so a second run reads it back instead of decoding again.
"""

from __future__ import annotations

import csv
import hashlib
import io
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

import avgen
from avgen_share.folder import read_bank, write_bank

SUFFIXES = (".wav", ".flac", ".ogg", ".mp3")
LIBRARY_CSV = "library.csv"
UNKNOWN_LICENCE = "unknown (not in library.csv)"
VERSION = "1"  # part of the cache key: bump when clips or keys change


@dataclass(frozen=True)
class OnsetSettings:
    """How clips are cut: up to ``max_clips`` per file, each starting ``pre`` seconds before an onset."""

    max_clips: int = 8
    pre: float = 0.1  # seconds of sound before the onset (the Greatest Hits clips start 0.1 s before the hit)
    window_seconds: float = 0.046  # STFT window of the onset detector
    peak_seconds: float = 0.05  # an onset is the largest flux within this distance
    floor: float = 0.1  # and at least this fraction of the file's largest flux


def scan(root: Path) -> list[Path]:
    """Audio files under ``root``, relative to it, sorted."""
    files = [p.relative_to(root) for p in root.rglob("*")
             if p.suffix.lower() in SUFFIXES and p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts)]
    return sorted(files, key=lambda p: p.as_posix())


def read_library_csv(root: Path) -> dict[str, dict[str, str]]:
    """file (relative, posix) -> {label, licence, source} from library.csv; {} without one."""
    path = root / LIBRARY_CSV
    if not path.is_file():
        return {}
    text = path.read_text(encoding="utf-8-sig", errors="replace")
    reader = csv.DictReader(io.StringIO(text))
    columns = {c.strip().lower() for c in reader.fieldnames or []}
    if "file" not in columns:
        raise avgen.AvgenError(f"{path}: no 'file' column; the header must be file,label,licence,source")
    rows: dict[str, dict[str, str]] = {}
    for number, row in enumerate(reader, 2):
        row = {(k or "").strip().lower(): (v or "").strip() for k, v in row.items()}
        name = Path(row["file"]).as_posix()
        if not (root / name).is_file():
            raise avgen.AvgenError(f"{path}: line {number} names '{row['file']}', which is not a file of {root}")
        rows[name] = {"label": row.get("label", ""), "licence": row.get("licence") or row.get("license") or "",
                      "source": row.get("source", "")}
    return rows


def detect_onsets(wave: torch.Tensor, rate: int, settings: OnsetSettings = OnsetSettings()) -> list[tuple[float, float]]:
    """(time in seconds, strength) of the onsets of a mono wave, strongest first: peaks of the
    half-wave rectified spectral flux of the log-compressed magnitude (silence before the file)."""
    n_fft = 1 << max(6, round(torch.log2(torch.tensor(settings.window_seconds * rate)).item()))
    hop = n_fft // 4
    if wave.numel() < 2:
        return [(0.0, 0.0)]
    spec = torch.stft(wave.double(), n_fft, hop, window=torch.hann_window(n_fft, dtype=torch.float64),
                      center=True, pad_mode="constant", return_complex=True).abs()
    logspec = torch.log1p(100.0 * spec)
    previous = torch.cat([torch.zeros_like(logspec[:, :1]), logspec[:, :-1]], dim=1)
    flux = (logspec - previous).clamp_min(0).sum(0)  # [frames]
    if float(flux.max()) <= 0:
        return [(0.0, 0.0)]
    reach = max(1, round(settings.peak_seconds * rate / hop))
    local_max = torch.nn.functional.max_pool1d(flux[None, None], 2 * reach + 1, stride=1, padding=reach)[0, 0]
    peaks = ((flux == local_max) & (flux >= settings.floor * flux.max())).nonzero().flatten()
    found = sorted(((int(i) * hop / rate, float(flux[i])) for i in peaks), key=lambda x: -x[1])
    return found or [(0.0, 0.0)]


def choose_onsets(found: list[tuple[float, float]], clip_seconds: float, max_clips: int) -> list[float]:
    """Up to ``max_clips`` onset times, strongest first, at least half a clip apart; returned in time order."""
    chosen: list[float] = []
    for time, _ in found:
        if all(abs(time - other) >= clip_seconds / 2 for other in chosen):
            chosen.append(time)
        if len(chosen) == max_clips:
            break
    return sorted(chosen)


def cut(wave: torch.Tensor, first: int, samples: int) -> torch.Tensor:
    """``samples`` samples of ``wave`` from sample ``first``, zero-padded past its end."""
    piece = wave[first:first + samples]
    return torch.nn.functional.pad(piece, (0, samples - piece.numel()))


def library_key(root: Path, files: list[Path], representation_spec: dict[str, Any], rate: int, clip_seconds: float,
                settings: OnsetSettings) -> str:
    """Cache key: every file's name, size and modification time, library.csv, and how the clips are made."""
    stats = []
    for rel in files:
        stat = (root / rel).stat()
        stats.append([rel.as_posix(), stat.st_size, stat.st_mtime_ns])
    csv_path = root / LIBRARY_CSV
    csv_digest = hashlib.sha256(csv_path.read_bytes()).hexdigest() if csv_path.is_file() else ""
    return avgen.cache_key("avgen_share.library", VERSION, str(root.resolve()), stats, csv_digest, representation_spec,
                           rate, clip_seconds, settings.__dict__, avgen.MEDIA_VERSION)


def index_library(root: Path, representation: Any, representation_spec: dict[str, Any], clip_seconds: float,
                  console: Any = None, settings: OnsetSettings = OnsetSettings()) -> Any:
    """The library as an ``avgen.ExemplarBank`` (from the cache when nothing changed)."""
    root = Path(root)
    files = scan(root)
    if not files:
        raise avgen.AvgenError(f"--library {root}: no {'/'.join(s[1:] for s in SUFFIXES)} files in it or its subfolders")
    described = read_library_csv(root)
    rate = int(representation.sample_rate)
    key = library_key(root, files, representation_spec, rate, clip_seconds, settings)
    cached = avgen.cache_dir() / "library" / f"{key}.safetensors"
    source = f"sound library {root.resolve()}"
    if cached.is_file():
        try:
            bank = read_bank(cached, source)
            _say(console, f"library {root}: {len(bank.entries)} clips from the index cache")
            return bank
        except avgen.AvgenError:
            cached.unlink(missing_ok=True)  # a damaged entry is rebuilt
    samples = round(clip_seconds * rate)
    clips, entries, skipped = [], [], []
    from rich.progress import Progress

    with Progress(console=console, transient=True, disable=console is None) as progress:
        task = progress.add_task(f"index {root.name}", total=len(files))
        for rel in files:
            name = rel.as_posix()
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    wave, _ = avgen.read_audio(root / rel, sample_rate=rate)
            except avgen.AvgenError as exc:
                skipped.append(f"{name}: {exc}")
                progress.advance(task)
                continue
            about = described.get(name) or {"label": rel.parent.as_posix() if rel.parent != Path(".") else "",
                                            "licence": UNKNOWN_LICENCE, "source": ""}
            for onset in choose_onsets(detect_onsets(wave, rate, settings), clip_seconds, settings.max_clips):
                first = max(0, round((onset - settings.pre) * rate))  # whole samples, so offset * rate is exact
                clips.append(cut(wave, first, samples))
                entries.append({"file": name, "offset": round(first / rate, 6), "onset": round(onset, 6), **about})
            progress.advance(task)
    for line in skipped:
        _say(console, f"library: skipped {line}")
    if not clips:
        raise avgen.AvgenError(f"--library {root}: none of its {len(files)} files could be read")
    waves = torch.stack(clips)
    reps = encode_keys(representation, waves)
    bank = avgen.ExemplarBank(reps=reps, waves=waves, entries=entries, source=source)
    cached.parent.mkdir(parents=True, exist_ok=True)
    write_bank(cached, bank)
    _say(console, f"library {root}: indexed {len(entries)} clips from {len(files) - len(skipped)} files "
                  f"({len(skipped)} skipped)")
    return read_bank(cached, source)  # the same 16-bit clips a cached run reads


def encode_keys(representation: Any, waves: torch.Tensor, batch: int = 64) -> torch.Tensor:
    """Time-averaged representations [M, D] of waves [M, T] (the retrieval keys, paper Eq. 8)."""
    tensors = [*representation.buffers(), *representation.parameters()]
    device = tensors[0].device if tensors else torch.device("cpu")
    keys = []
    with torch.no_grad():
        for i in range(0, waves.shape[0], batch):
            keys.append(avgen.time_average(representation.encode(waves[i:i + batch].to(device)).float()).cpu())
    return torch.cat(keys)


def _say(console: Any, text: str) -> None:
    if console is not None:
        console.print(text, markup=False, highlight=False)
