"""The 17 material classes of the Greatest Hits dataset (Owens et al., CVPR 2016), in one place."""

from __future__ import annotations

# Alphabetical; the class index of a material is its position here.
MATERIALS: tuple[str, ...] = (
    "carpet",
    "ceramic",
    "cloth",
    "dirt",
    "drywall",
    "glass",
    "grass",
    "gravel",
    "leaf",
    "metal",
    "paper",
    "plastic",
    "plastic-bag",
    "rock",
    "tile",
    "water",
    "wood",
)


def normalize_material(name: str) -> str:
    """Canonical spelling of a material label: lower case, '-' between words ('Plastic bag' -> 'plastic-bag')."""
    return "-".join(name.strip().lower().replace("_", " ").split())
