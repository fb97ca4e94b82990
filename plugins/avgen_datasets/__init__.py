"""Datasets: greatest_hits, vig (AudioSet-style), folder, synthetic_hits, synthetic_stream; and `avgen data synth`."""

from __future__ import annotations

from avgen import hookimpl

from avgen_datasets.folder import FolderParams, make_folder
from avgen_datasets.greatest_hits import GreatestHitsParams, make_greatest_hits
from avgen_datasets.materials import MATERIALS
from avgen_datasets.synthetic_hits import SyntheticHitsParams, make_synthetic_hits
from avgen_datasets.synthetic_stream import SyntheticStreamParams, make_synthetic_stream
from avgen_datasets.vig import VigParams, make_vig

GHD_CARD = {
    "paper": "Owens et al., Visually Indicated Sounds, CVPR 2016",
    "url": "http://vis.csail.mit.edu",
    "classes": len(MATERIALS),
    "clip_seconds": 0.5,
    "sample_rate": 22050,
    "license": "see the dataset's terms (not redistributed)",
}


@hookimpl
def register_datasets(register):
    register("greatest_hits", make_greatest_hits, params=GreatestHitsParams,
             summary="Greatest Hits (Owens et al. 2016): one 0.5 s clip per annotated hit, 17 materials",
             card=GHD_CARD)
    register("vig", make_vig, params=VigParams,
             summary="AudioSet-style clip folder with a label CSV (the paper's VIG subset), 10 s at 8 kHz",
             card={"paper": "Chen et al., POCAN, ACCV 2018 (VIG: AudioSet subset)", "clip_seconds": 10.0, "sample_rate": 8000})
    register("folder", make_folder, params=FolderParams,
             summary="your own videos in root/class_name/*.mp4, split by seeded fractions per class",
             card={"license": "yours"})
    register("synthetic_hits", make_synthetic_hits, params=SyntheticHitsParams,
             summary="seeded procedural stick-hitting videos written in the Greatest Hits layout (the default)",
             card={"classes": len(MATERIALS), "clip_seconds": 0.5, "sample_rate": 22050, "license": "generated (MIT)"})
    register("synthetic_stream", make_synthetic_stream, params=SyntheticStreamParams,
             summary="synthetic_hits-style clips rendered on demand, no files (VIG-sized by default: 16 000 x 10 s at 8 kHz)",
             card={"classes": len(MATERIALS), "clip_seconds": 10.0, "sample_rate": 8000, "license": "generated (MIT)"})


@hookimpl
def register_commands(cli):
    from avgen_datasets.commands import data_group

    cli.add_command(data_group)
