"""Real recorded sounds for the sound-library tests: Debian's sonic-pi-samples (fetched, never installed)."""

from __future__ import annotations

import csv
import fnmatch
import shutil
import subprocess
from pathlib import Path

PACKAGE = "sonic-pi-samples"
SAMPLES = Path("usr/share/sonic-pi/samples")
COPYRIGHT = Path("usr/share/doc/sonic-pi-samples/copyright")


def fetch_sonic_pi(folder: Path) -> Path | None:
    """The package's samples folder, extracted under ``folder`` (apt-get download + dpkg-deb -x); None when offline."""
    if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
        return None
    folder.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(["apt-get", "download", PACKAGE], cwd=folder, capture_output=True, text=True, timeout=300)
    debs = sorted(folder.glob(f"{PACKAGE}_*.deb"))
    if proc.returncode != 0 or not debs:
        return None
    subprocess.run(["dpkg-deb", "-x", str(debs[0]), str(folder / "x")], check=True, timeout=300)
    return folder / "x"


def copyright_paragraphs(text: str) -> list[dict[str, str]]:
    """The paragraphs of a machine-readable Debian copyright file (DEP-5), fields joined into one line each."""
    paragraphs, current, field = [], {}, None
    for line in text.splitlines() + [""]:
        if not line.strip():
            if current:
                paragraphs.append(current)
            current, field = {}, None
        elif line[0] in " \t" and field:
            current[field] = (current[field] + " " + line.strip()).strip()
        elif ":" in line:
            field, value = line.split(":", 1)
            current[field] = value.strip()
    return paragraphs


def write_library(extracted: Path, library: Path) -> int:
    """Copy the samples into ``library`` with a library.csv whose licence and source come from the package's
    copyright file (DEP-5: the last paragraph whose Files pattern matches wins); the number of files."""
    paragraphs = [p for p in copyright_paragraphs((extracted / COPYRIGHT).read_text(encoding="utf-8")) if "Files" in p]
    shutil.copytree(extracted / SAMPLES, library)
    rows = []
    for path in sorted(library.glob("*.flac")):
        upstream = f"etc/samples/{path.name}"
        match = [p for p in paragraphs if any(fnmatch.fnmatchcase(upstream, pattern) for pattern in p["Files"].split())][-1]
        rows.append({"file": path.name, "label": path.stem.split("_")[0], "licence": match.get("License", ""),
                     "source": match.get("Source", f"Debian package {PACKAGE}")})
    with open(library / "library.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=["file", "label", "licence", "source"])
        writer.writeheader()
        writer.writerows(rows)
    return len(rows)
