"""The converted SoundNet hears real recordings like SoundNet (slow: fetches sonic-pi-samples with apt-get)."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import pytest

from soundnet_support import converted_home

SCRIPT = Path(__file__).resolve().parents[1] / "docs" / "scripts" / "soundnet_check.py"


def load_check_script():
    spec = importlib.util.spec_from_file_location("soundnet_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
@pytest.mark.network
def test_snare_sounds_like_a_drum_in_a_studio_and_drums_sound_alike(monkeypatch: pytest.MonkeyPatch):
    if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
        pytest.skip("needs apt-get and dpkg-deb to fetch the Debian package sonic-pi-samples")
    monkeypatch.setenv("AVGEN_HOME", str(converted_home()))
    check = load_check_script()
    try:
        samples = check.fetch_sonic_pi_samples()
    except RuntimeError as exc:
        pytest.skip(f"cannot fetch sonic-pi-samples (offline?): {exc}")
    result = check.run_check(samples)

    objects, places = result["classes"]["drum_snare_hard"]
    assert objects[0][0].startswith("drum,"), objects
    assert places[0][0] == "music_studio", places
    crow_objects, crow_places = result["classes"]["misc_crow"]
    assert not any("drum" in name for name, _ in crow_objects)
    for window, d in result["distances"].items():
        assert d["drum_drum_mean"] < d["drum_other_mean"], window
        assert d["drums_nearest_is_drum"] == d["drums"], window  # every drum's nearest recording is a drum
