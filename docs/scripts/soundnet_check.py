"""Does the converted SoundNet behave like SoundNet on real recordings? (output in docs/soundnet.md)

Uses CC0 recordings from the Debian package sonic-pi-samples (fetched with `apt-get download`
and unpacked with `dpkg-deb -x`, never installed) and the weights from `avgen weights fetch soundnet`.

    python docs/scripts/soundnet_check.py [--samples DIR]
"""

from __future__ import annotations

import argparse
import itertools
import os
import subprocess
import sys
from pathlib import Path

import soundfile as sf
import torch

DRUMS = ["drum_snare_hard", "drum_tom_hi_hard", "drum_tom_hi_soft", "drum_tom_mid_hard", "drum_tom_mid_soft",
         "drum_tom_lo_hard", "drum_tom_lo_soft"]
OTHERS = ["misc_crow", "ambi_glass_rub"]
EXTRA = ["perc_impact1"]  # an impact, reported but in neither group
SAMPLES = DRUMS + EXTRA + OTHERS
WINDOWS = {"0.5 s": 0.5, "1 s": 1.0}  # from the start of each recording, zero-padded; conv7 averaged over time


def test_cache() -> Path:
    """``$AVGEN_TEST_CACHE`` or ``~/.cache/avgen-test``: where fetched test media are kept between runs."""
    return Path(os.environ.get("AVGEN_TEST_CACHE") or Path.home() / ".cache" / "avgen-test").expanduser()


def fetch_sonic_pi_samples(cache: Path | None = None) -> Path:
    """The samples folder of sonic-pi-samples, downloaded and unpacked once into the cache (RuntimeError offline)."""
    root = (cache or test_cache()) / "sonic-pi-samples"
    samples = root / "x" / "usr" / "share" / "sonic-pi" / "samples"
    if all((samples / f"{name}.flac").is_file() for name in SAMPLES):
        return samples
    root.mkdir(parents=True, exist_ok=True)
    got = subprocess.run(["apt-get", "download", "sonic-pi-samples"], cwd=root, capture_output=True, text=True)
    debs = sorted(root.glob("sonic-pi-samples_*.deb"))
    if got.returncode != 0 or not debs:
        raise RuntimeError(f"apt-get download sonic-pi-samples failed: {(got.stderr or got.stdout).strip()[-300:]}")
    subprocess.run(["dpkg-deb", "-x", str(debs[-1]), str(root / "x")], check=True)
    return samples


def load_22k(path: Path) -> torch.Tensor:
    """A recording as a mono float waveform [T] at 22 050 Hz."""
    import torchaudio.functional as AF

    data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    return AF.resample(torch.from_numpy(data.mean(axis=1)), rate, 22050)


def window(wave: torch.Tensor, seconds: float) -> torch.Tensor:
    """The first ``seconds`` of a 22 050 Hz waveform, zero-padded."""
    out = torch.zeros(round(seconds * 22050))
    out[: min(len(out), len(wave))] = wave[: len(out)]
    return out


def run_check(samples: Path, model=None) -> dict:
    """Top classes per recording and conv7 distances (drum-drum vs drum-crow/glass) per window."""
    from avgen_soundnet import load_soundnet8
    from avgen_soundnet.classify import top_classes

    model = model or load_soundnet8()
    waves = {name: load_22k(samples / f"{name}.flac") for name in SAMPLES}
    classes = {name: top_classes(model, wave, k=3) for name, wave in waves.items()}
    distances = {}
    with torch.no_grad():
        for label, seconds in WINDOWS.items():
            feats = {n: model.features(window(w, seconds)[None], "conv7")[0].mean(dim=-1) for n, w in waves.items()}
            dist = {(a, b): float((feats[a] - feats[b]).norm()) for a, b in itertools.permutations(SAMPLES, 2)}
            drum_drum = [dist[a, b] for a, b in itertools.combinations(DRUMS, 2)]
            drum_other = [dist[a, b] for a in DRUMS for b in OTHERS]
            nearest = {a: min((b for b in DRUMS + OTHERS if b != a), key=lambda b: dist[a, b]) for a in DRUMS}
            distances[label] = {
                "drum_drum_mean": sum(drum_drum) / len(drum_drum), "drum_drum_max": max(drum_drum),
                "drum_other_mean": sum(drum_other) / len(drum_other), "drum_other_min": min(drum_other),
                "drums_nearest_is_drum": sum(nearest[a] in DRUMS for a in DRUMS), "drums": len(DRUMS),
                "pairs": dist,
            }
    return {"classes": classes, "distances": distances, "seconds": {n: len(w) / 22050 for n, w in waves.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=Path, help="a folder holding the sonic-pi-samples .flac files")
    args = parser.parse_args()
    try:
        samples = args.samples or fetch_sonic_pi_samples()
    except RuntimeError as exc:
        sys.exit(f"cannot fetch the recordings: {exc}")
    result = run_check(samples)
    print("| recording | seconds | top objects (conv8, ImageNet) | top scenes (conv8_2, Places) |")
    print("|---|---|---|---|")
    for name, (objects, places) in result["classes"].items():
        obj = "; ".join(f"{n.split(',')[0]} {p:.3f}" for n, p in objects)
        plc = "; ".join(f"{n} {p:.3f}" for n, p in places)
        print(f"| {name} | {result['seconds'][name]:.2f} | {obj} | {plc} |")
    print()
    print("| window | drum-drum mean | drum-drum max | drum-crow/glass mean | drum-crow/glass min | drums whose nearest is a drum |")
    print("|---|---|---|---|---|---|")
    for label, d in result["distances"].items():
        print(f"| {label} | {d['drum_drum_mean']:.3f} | {d['drum_drum_max']:.3f} | {d['drum_other_mean']:.3f} | "
              f"{d['drum_other_min']:.3f} | {d['drums_nearest_is_drum']}/{d['drums']} |")


if __name__ == "__main__":
    main()
