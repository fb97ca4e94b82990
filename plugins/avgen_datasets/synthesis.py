"""Procedural videos of a stick hitting and scratching surfaces, with modal-synthesis sound.

Each material has a look (colour + texture kind; several materials share a colour, so the
texture and motion must be read) and a sound (mode frequencies, decay, noise burst, grains).
Every hit varies in force, pitch and position; the sound starts at the frame of contact.
The hard preset (``HardScene``) gives each material several looks, shares looks between
materials, and varies camera, lighting and occlusion, so the video only partly tells the class.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
import torch

# Shared colours: the groups {carpet, cloth}, {ceramic, drywall, paper}, {dirt, wood},
# {glass, water}, {grass, leaf}, {gravel, metal, rock} and {plastic, plastic-bag}.
RED, WHITE, BROWN, CYAN = (150, 62, 60), (222, 220, 210), (118, 82, 52), (168, 198, 210)
GREEN, GREY, BLUE, BEIGE = (72, 138, 62), (130, 130, 132), (62, 92, 168), (200, 172, 122)


@dataclass(frozen=True)
class Material:
    """How a material looks and sounds."""

    colour: tuple[int, int, int]
    texture: str  # a key of TEXTURES
    modes: tuple[float, ...]  # mode frequencies in Hz
    decay: float  # decay time (s) of the lowest mode; higher modes decay faster
    noise: float  # level of the contact noise burst relative to the modes
    brightness: float  # 0 (dark, low-passed noise) .. 1 (white noise)
    grains: int = 0  # extra micro-impacts after contact (gravel, leaves, bags)
    specular: bool = False


LOOKS_AND_SOUNDS: dict[str, Material] = {
    "carpet": Material(RED, "speckle", (110, 240), 0.02, 0.7, 0.2),
    "ceramic": Material(WHITE, "smooth", (1850, 4150, 6900), 0.25, 0.1, 0.8, specular=True),
    "cloth": Material(RED, "weave", (160,), 0.015, 0.6, 0.35),
    "dirt": Material(BROWN, "blotch", (85, 190), 0.03, 0.8, 0.25, grains=3),
    "drywall": Material(WHITE, "matte", (310, 760, 1320), 0.05, 0.35, 0.45),
    "glass": Material(CYAN, "reflective", (2600, 5300, 8700), 0.4, 0.05, 0.9, specular=True),
    "grass": Material(GREEN, "blades", (210,), 0.02, 0.9, 0.75, grains=6),
    "gravel": Material(GREY, "pebbles", (420, 1150), 0.03, 0.6, 0.6, grains=9),
    "leaf": Material(GREEN, "veins", (260,), 0.02, 0.8, 0.55, grains=4),
    "metal": Material(GREY, "brushed", (920, 2330, 3950, 5450), 0.6, 0.05, 0.85, specular=True),
    "paper": Material(WHITE, "lined", (520,), 0.02, 0.75, 0.85),
    "plastic": Material(BLUE, "smooth", (720, 1630, 2950), 0.08, 0.2, 0.6, specular=True),
    "plastic-bag": Material(BLUE, "wrinkled", (400,), 0.02, 0.9, 0.95, grains=7),
    "rock": Material(GREY, "rocky", (640, 1530), 0.06, 0.3, 0.5),
    "tile": Material(BEIGE, "tiles", (1230, 2790, 4480), 0.12, 0.15, 0.7),
    "water": Material(CYAN, "ripples", (330, 660), 0.05, 0.6, 0.4, grains=5),
    "wood": Material(BROWN, "grain", (360, 820, 1710), 0.09, 0.2, 0.5),
}

STICK = np.array([58, 40, 24], np.float32)
COLOURS = (RED, WHITE, BROWN, CYAN, GREEN, GREY, BLUE, BEIGE)
SPECULAR_TEXTURES = frozenset({"smooth", "reflective", "brushed"})


@dataclass(frozen=True)
class Look:
    """What a surface looks like: a colour, a texture kind and whether it has a highlight."""

    colour: tuple[int, int, int]
    texture: str
    specular: bool = False


@dataclass(frozen=True)
class HardScene:
    """The knobs of the ``difficulty = "hard"`` preset (docs/datasets.md lists them with their effect)."""

    own_looks: int = 2  # looks only this material shows (its easy look and one more)
    shared: float = 0.25  # probability that a segment shows a look it shares with a neighbouring material
    twins: int = 1  # pairs of materials that share every look (they differ only in sound)
    zoom: tuple[float, float] = (0.9, 1.15)  # texture scale (camera distance), uniform per segment
    gain: tuple[float, float] = (0.8, 1.15)  # overall lighting, uniform per segment
    colour_cast: float = 0.04  # per-channel lighting colour, normal sd per segment
    gradient: float = 0.3  # strongest lighting gradient across the frame
    jitter: int = 6  # camera shake bound in pixels (easy: 4)
    occlusion: float = 0.2  # probability that a segment has a foreground occluder at one edge
    occluder_size: tuple[float, float] = (0.1, 0.25)  # its depth into the frame, as a fraction of the width
    out_of_frame: float = 0.2  # fraction of contacts whose point lies just outside the frame
    table_seed: int = 19  # seed of the look table (the same for every dataset seed)


HARD = HardScene()


@lru_cache(maxsize=8)
def look_table(scene: HardScene, materials: tuple[str, ...]) -> dict[str, tuple[tuple[Look, ...], tuple[Look, ...]]]:
    """material -> (own looks, shared looks) of the hard preset; fixed by ``scene.table_seed``.

    The materials form a ring in a seeded order; neighbours on the ring share one look, each
    material has ``own_looks`` looks of its own (the first is its easy look), and ``twins``
    disjoint neighbour pairs pool all their looks, so only their sound tells them apart.
    """
    rng = np.random.default_rng(scene.table_seed)
    kinds = sorted({m.texture for m in LOOKS_AND_SOUNDS.values()})
    used = {(m.colour, m.texture) for m in LOOKS_AND_SOUNDS.values()}

    def new_look() -> Look:
        while True:
            colour, kind = COLOURS[int(rng.integers(len(COLOURS)))], kinds[int(rng.integers(len(kinds)))]
            if (colour, kind) not in used:
                used.add((colour, kind))
                return Look(colour, kind, kind in SPECULAR_TEXTURES)

    ring = [materials[i] for i in rng.permutation(len(materials))]
    own = {}
    for m in ring:
        easy = LOOKS_AND_SOUNDS[m]
        own[m] = [Look(easy.colour, easy.texture, easy.specular)] + [new_look() for _ in range(scene.own_looks - 1)]
    shared: dict[str, list[Look]] = {m: [] for m in ring}
    if len(ring) > 1:
        for i, m in enumerate(ring[: len(ring) if len(ring) > 2 else 1]):
            look, nxt = new_look(), ring[(i + 1) % len(ring)]
            shared[m].append(look)
            shared[nxt].append(look)
    table = {m: (tuple(own[m]), tuple(shared[m])) for m in ring}
    for k in range(min(scene.twins, len(ring) // 2)):
        a, b = ring[2 * k], ring[2 * k + 1]
        pooled = tuple(dict.fromkeys(own[a] + own[b] + shared[a] + shared[b]))
        table[a] = table[b] = (pooled, ())
    return table


def choose_look(scene: HardScene, material: str, materials: tuple[str, ...], rng: np.random.Generator) -> Look:
    """One segment's look: a shared one with probability ``scene.shared`` (when it has any), else one of its own."""
    own, shared = look_table(scene, materials)[material]
    pool = shared if shared and rng.random() < scene.shared else own
    return pool[int(rng.integers(len(pool)))]


@dataclass
class Action:
    """One contact of the stick with the surface."""

    time: float  # seconds, on a frame boundary (the frame of contact)
    kind: str  # 'hit' or 'scratch'
    reaction: str  # 'static' or 'rebound'
    x: float  # contact point in [0, 1] of the frame
    y: float
    force: float  # 0.4 .. 1
    pitch: float  # frequency factor around 1
    length: float = 0.0  # scratch duration in seconds
    labelled: bool = True  # False: written with material None


@dataclass
class Segment:
    """A stretch of the video looking at one surface."""

    material: str
    start: float
    end: float
    actions: list[Action] = field(default_factory=list)
    look: Look | None = None  # None: the material's own look (the easy preset)


def value_noise(rng: np.random.Generator, size: int, scale_y: float, scale_x: float) -> np.ndarray:
    """Smooth noise in about [-1, 1]: a coarse random grid upsampled bilinearly."""
    gy, gx = max(2, int(size / scale_y) + 2), max(2, int(size / scale_x) + 2)
    grid = torch.from_numpy(rng.standard_normal((1, 1, gy, gx)).astype(np.float32))
    out = torch.nn.functional.interpolate(grid, size=(size, size), mode="bilinear", align_corners=True)[0, 0].numpy()
    return out / (np.abs(out).max() + 1e-6)


def lowpass_noise(rng: np.random.Generator, n: int, alpha: float) -> np.ndarray:
    """White noise through a one-pole low-pass y[t] = a x[t] + (1 - a) y[t-1] (applied in the frequency domain), peak 1."""
    spectrum = np.fft.rfft(rng.standard_normal(n))
    omega = np.linspace(0, np.pi, spectrum.size)
    spectrum *= alpha / (1 - (1 - alpha) * np.exp(-1j * omega))
    noise = np.fft.irfft(spectrum, n).astype(np.float32)
    return noise / (np.abs(noise).max() + 1e-6)


def texture(kind: str, rng: np.random.Generator, size: int) -> np.ndarray:
    """Brightness pattern of a texture kind around 0: float32 [size, size]."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    pixel = rng.standard_normal((size, size)).astype(np.float32)
    if kind == "speckle":
        p = 0.28 * pixel + 0.1 * value_noise(rng, size, 8, 8)
    elif kind == "weave":
        p = 0.22 * np.sign(np.sin(np.pi * xx / 3) * np.sin(np.pi * yy / 3)) + 0.05 * value_noise(rng, size, 16, 16)
    elif kind == "smooth":
        p = 0.04 * value_noise(rng, size, 32, 32)
    elif kind == "blotch":
        p = 0.3 * value_noise(rng, size, 6, 6) + 0.12 * value_noise(rng, size, 2, 2)
    elif kind == "matte":
        p = 0.04 * pixel + 0.05 * value_noise(rng, size, 24, 24)
    elif kind == "reflective":
        band = np.exp(-(((xx + yy) - size * rng.uniform(0.6, 1.4)) / 9.0) ** 2)
        p = 0.45 * band + 0.03 * value_noise(rng, size, 20, 20)
    elif kind == "blades":
        p = 0.38 * value_noise(rng, size, 22, 1.5)
    elif kind == "pebbles":
        p = 0.32 * np.tanh(3 * value_noise(rng, size, 4, 4))
    elif kind == "veins":
        p = 0.2 * value_noise(rng, size, 20, 20) - 0.25 * (np.abs(np.sin((xx + 0.5 * yy) / 5)) < 0.12)
    elif kind == "brushed":
        p = 0.16 * value_noise(rng, size, 1, 30)
    elif kind == "lined":
        p = -0.18 * (yy % 10 < 1.2) + 0.03 * pixel
    elif kind == "wrinkled":
        warp = 8 * value_noise(rng, size, 16, 16)
        p = 0.3 * np.sin((xx + warp) / 3.0) * value_noise(rng, size, 12, 12)
    elif kind == "rocky":
        p = 0.26 * value_noise(rng, size, 16, 16) + 0.12 * value_noise(rng, size, 4, 4)
    elif kind == "tiles":
        offset = rng.integers(0, 32)
        p = -0.42 * (((xx + offset) % 32 < 2) | ((yy + offset) % 32 < 2)) + 0.03 * value_noise(rng, size, 8, 8)
    elif kind == "ripples":
        p = 0.05 * value_noise(rng, size, 20, 20)  # the moving waves are added per frame
    elif kind == "grain":
        warp = 7 * value_noise(rng, size, 24, 24)
        p = 0.22 * np.sin(2 * np.pi * (xx + warp) / 9.0) + 0.05 * pixel
    else:
        raise ValueError(f"unknown texture kind {kind!r}")
    return np.rot90(p, k=int(rng.integers(0, 4))).astype(np.float32)


class SceneRenderer:
    """Renders frames of one video: surface per segment, lighting, camera jitter, noise, the stick."""

    def __init__(self, segments: list[Segment], size: int, fps: int, rng: np.random.Generator,
                 scene: HardScene | None = None) -> None:
        self.size, self.fps, self.rng, self.scene = size, fps, rng, scene
        self.margin = scene.jitter if scene is not None else 4
        self.segments = segments
        full = size + 2 * self.margin
        self.surfaces = [self._surface(seg.material, full) if scene is None else self._hard_surface(seg, full, scene)
                         for seg in segments]
        self.noise_bank = rng.normal(0, 3.0, (8, size, size, 3)).astype(np.float32)
        self.yy, self.xx = np.mgrid[0:size, 0:size].astype(np.float32)

    def _surface(self, material: str, full: int) -> dict:
        rng = self.rng
        look = LOOKS_AND_SOUNDS[material]
        colour = np.array(look.colour, np.float32) * (1 + rng.normal(0, 0.06, 3)).astype(np.float32)
        pattern = texture(look.texture, rng, full)
        image = colour[None, None, :] * (1 + pattern[..., None])
        angle = rng.uniform(0, 2 * np.pi)
        yy, xx = np.mgrid[0:full, 0:full].astype(np.float32) / full - 0.5
        gradient = 1 + rng.uniform(0, 0.2) * (np.cos(angle) * xx + np.sin(angle) * yy)
        image = image * gradient[..., None] * rng.uniform(0.75, 1.25)
        if look.specular:
            cy, cx = rng.uniform(0.2, 0.8, 2) * full
            blob = np.exp(-(((yy + 0.5) * full - cy) ** 2 + ((xx + 0.5) * full - cx) ** 2) / (2 * (full / 10) ** 2))
            image = image + 90 * blob[..., None]
        return {
            "image": image.astype(np.float32),
            "ripples": look.texture == "ripples",
            "flicker": (rng.uniform(0.01, 0.04), rng.uniform(0.3, 2.0), rng.uniform(0, 2 * np.pi)),
            "rest": (rng.uniform(0.25, 0.75), rng.uniform(0.25, 0.75)),
            "handle": (rng.uniform(-0.3, 0.1), rng.uniform(0.9, 1.3)),  # (y, x): above right
            "occluder": None,
        }

    def _hard_surface(self, seg: Segment, full: int, scene: HardScene) -> dict:
        """A surface of the hard preset: the segment's look, zoomed, lit and coloured per segment, maybe occluded."""
        rng = self.rng
        look = seg.look or Look(LOOKS_AND_SOUNDS[seg.material].colour, LOOKS_AND_SOUNDS[seg.material].texture)
        cast = 1 + rng.normal(0, scene.colour_cast, 3)
        colour = np.array(look.colour, np.float32) * cast.astype(np.float32)
        zoom = rng.uniform(*scene.zoom)
        pattern = zoomed_texture(look.texture, rng, full, zoom)
        image = colour[None, None, :] * (1 + pattern[..., None])
        angle = rng.uniform(0, 2 * np.pi)
        yy, xx = np.mgrid[0:full, 0:full].astype(np.float32) / full - 0.5
        gradient = 1 + rng.uniform(0, scene.gradient) * (np.cos(angle) * xx + np.sin(angle) * yy)
        image = image * gradient[..., None] * rng.uniform(*scene.gain)
        if look.specular:
            cy, cx = rng.uniform(0.2, 0.8, 2) * full
            blob = np.exp(-(((yy + 0.5) * full - cy) ** 2 + ((xx + 0.5) * full - cx) ** 2) / (2 * (full / 10) ** 2))
            image = image + 90 * blob[..., None]
        occluder = None
        if rng.random() < scene.occlusion:
            cover = COLOURS[int(rng.integers(len(COLOURS)))]
            shade = np.array(cover, np.float32) * rng.uniform(0.3, 0.7)
            side, depth = int(rng.integers(4)), rng.uniform(*scene.occluder_size)
            occluder = (shade * (1 + 0.1 * value_noise(rng, self.size, 12, 12))[..., None], side, depth)
        return {
            "image": image.astype(np.float32),
            "ripples": look.texture == "ripples",
            "flicker": (rng.uniform(0.02, 0.08), rng.uniform(0.3, 2.0), rng.uniform(0, 2 * np.pi)),
            "rest": (rng.uniform(0.25, 0.75), rng.uniform(0.25, 0.75)),
            "handle": (rng.uniform(-0.3, 0.1), rng.uniform(0.9, 1.3)),
            "occluder": occluder,
        }

    def _occlude(self, image: np.ndarray, occluder: tuple[np.ndarray, int, float]) -> None:
        """Cover one edge of the frame (left, right, top, bottom) to ``depth`` with a foreground object."""
        cover, side, depth = occluder
        d = depth * self.size
        edge = (self.xx, self.size - 1 - self.xx, self.yy, self.size - 1 - self.yy)[side]
        wave = 0.08 * self.size * np.sin((self.yy if side < 2 else self.xx) / 9.0)  # an uneven edge
        mask = np.clip(d + wave - edge, 0, 1)[..., None]
        image *= 1 - mask
        image += mask * cover

    def frames(self, num_frames: int):
        """Yield uint8 [size, size, 3] frames."""
        jitter = np.zeros(2)
        for index in range(num_frames):
            t = index / self.fps
            which = self._segment_at(t)
            seg, surface = self.segments[which], self.surfaces[which]
            jitter = np.clip(0.85 * jitter + self.rng.normal(0, 0.8, 2), -self.margin, self.margin)
            oy, ox = (self.margin + jitter).round().astype(int)
            image = surface["image"][oy : oy + self.size, ox : ox + self.size].copy()
            if surface["ripples"]:
                waves = np.sin((self.xx * 0.8 + self.yy * 0.6) / 2.5 - 6.0 * t) * 0.12
                image *= 1 + waves[..., None]
            depth, flicker_hz, phase = surface["flicker"]
            image *= 1 + depth * np.sin(2 * np.pi * flicker_hz * t + phase)
            self._draw_stick(image, seg, surface, t)
            if surface["occluder"] is not None:
                self._occlude(image, surface["occluder"])
            image += self.noise_bank[index % len(self.noise_bank)]
            yield np.clip(image, 0, 255).astype(np.uint8)

    def _segment_at(self, t: float) -> int:
        for i, seg in enumerate(self.segments):
            if t < seg.end:
                return i
        return len(self.segments) - 1

    def _draw_stick(self, image: np.ndarray, seg: Segment, surface: dict, t: float) -> None:
        """The stick as a dark rod from a handle (top right) to its tip, with a shadow at the contact point."""
        (tip_y, tip_x), height = self._tip(seg, surface, t)
        size = self.size
        ty, tx = tip_y * size, tip_x * size
        lift = height * 0.22 * size  # a raised tip appears up and to the right
        py, px = ty - lift, tx + 0.5 * lift
        hy, hx = surface["handle"][0] * size, surface["handle"][1] * size
        # Shadow: only a window around the contact point is affected.
        radius = 2.0 + 6 * height
        y0, y1, x0, x1 = _window(ty - 3 * radius, ty + 3 * radius, tx - 3 * radius, tx + 3 * radius, size)
        if y1 > y0 and x1 > x0:
            yy, xx = self.yy[y0:y1, x0:x1], self.xx[y0:y1, x0:x1]
            shadow = np.exp(-((yy - ty) ** 2 + (xx - tx) ** 2) / (2 * radius**2))
            image[y0:y1, x0:x1] *= (1 - 0.45 * (1 - min(height, 1.0)) * shadow)[..., None]
        # Rod: distance of each pixel in its bounding box to the segment tip -> handle.
        y0, y1, x0, x1 = _window(min(py, hy) - 3, max(py, hy) + 3, min(px, hx) - 3, max(px, hx) + 3, size)
        if y1 <= y0 or x1 <= x0:
            return
        yy, xx = self.yy[y0:y1, x0:x1], self.xx[y0:y1, x0:x1]
        dy, dx = hy - py, hx - px
        length2 = dy * dy + dx * dx + 1e-6
        along = np.clip(((yy - py) * dy + (xx - px) * dx) / length2, 0, 1)
        dist2 = (yy - py - along * dy) ** 2 + (xx - px - along * dx) ** 2
        rod = np.clip(2.6 - np.sqrt(dist2), 0, 1)[..., None]
        patch = image[y0:y1, x0:x1]
        patch *= 1 - rod
        patch += rod * STICK * (0.8 + 0.4 * along)[..., None]

    def _tip(self, seg: Segment, surface: dict, t: float) -> tuple[tuple[float, float], float]:
        """Tip position (y, x) in [0, 1] and height above the surface (0 = touching)."""
        rest_y, rest_x = surface["rest"]
        approach, lifted = 0.2, 1.0
        for action in seg.actions:
            before = action.time - t
            if 0 < before <= approach:  # coming down onto the contact point
                f = before / approach
                return (action.y * (1 - f) + rest_y * f, action.x * (1 - f) + rest_x * f), lifted * f
            after = t - action.time
            if action.kind == "scratch" and 0 <= after <= action.length:
                f = after / action.length
                return (action.y + 0.05 * f, action.x + 0.18 * f), 0.0
            hold = action.length if action.kind == "scratch" else (0.12 if action.reaction == "static" else 0.0)
            end_y = action.y + (0.05 if action.kind == "scratch" else 0.0)
            end_x = action.x + (0.18 if action.kind == "scratch" else 0.0)
            if action.kind == "hit" and 0 <= after <= hold:
                return (action.y, action.x), 0.0
            up = 0.12 if action.reaction == "rebound" else 0.25
            if hold <= after <= hold + up:
                f = (after - hold) / up
                return (end_y * (1 - f) + rest_y * f, end_x * (1 - f) + rest_x * f), lifted * f
        sway = 0.03 * np.sin(2.1 * t)
        return (rest_y + sway, rest_x - sway), lifted


def zoomed_texture(kind: str, rng: np.random.Generator, size: int, zoom: float) -> np.ndarray:
    """``texture(kind)`` seen from closer (zoom > 1: larger pattern) or further away (zoom < 1)."""
    source = max(8, int(round(size / zoom)))
    pattern = torch.from_numpy(np.ascontiguousarray(texture(kind, rng, source)))[None, None]
    out = torch.nn.functional.interpolate(pattern, size=(size, size), mode="bilinear", align_corners=False,
                                          antialias=zoom < 1)
    return out[0, 0].numpy()


def _window(top: float, bottom: float, left: float, right: float, size: int) -> tuple[int, int, int, int]:
    """Integer pixel window [y0, y1) x [x0, x1) clipped to the frame."""
    return max(0, int(top)), min(size, int(bottom) + 1), max(0, int(left)), min(size, int(right) + 1)


def impact(material: str, action: Action, sample_rate: int, rng: np.random.Generator, seconds: float = 0.5) -> np.ndarray:
    """Modal synthesis of one contact: damped modes plus a filtered noise burst and grains."""
    look = LOOKS_AND_SOUNDS[material]
    n = int(seconds * sample_rate)
    t = np.arange(n, dtype=np.float32) / sample_rate
    wave = np.zeros(n, np.float32)
    for k, freq in enumerate(look.modes):
        f = freq * action.pitch * rng.uniform(0.99, 1.01)
        if f >= sample_rate / 2:
            continue
        amplitude = rng.uniform(0.5, 1.5) * (0.8 ** k) * (0.5 + action.x)  # position changes the mix of modes
        tau = look.decay * rng.uniform(0.85, 1.15) / (1 + 0.5 * k)
        wave += amplitude * np.sin(2 * np.pi * f * t + rng.uniform(0, 2 * np.pi)) * np.exp(-t / tau)
    wave /= max(len(look.modes), 1)
    burst_len = 0.004 + 0.02 * (1 - look.brightness)
    alpha = 0.15 + 0.8 * look.brightness * (0.7 + 0.3 * action.force)  # harder hits sound brighter
    noise = lowpass_noise(rng, n, alpha)
    wave += look.noise * noise * np.exp(-t / burst_len)
    for _ in range(look.grains):
        start = int(rng.uniform(0.002, 0.08) * sample_rate)
        grain = noise[: n - start] * np.exp(-t[: n - start] / 0.003) * rng.uniform(0.1, 0.4) * look.noise
        wave[start:] += grain
    return action.force * 0.6 * wave


def scratch(material: str, action: Action, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    """A scratch: many small contacts along the drag plus filtered friction noise."""
    look = LOOKS_AND_SOUNDS[material]
    n = int((action.length + 0.3) * sample_rate)
    wave = np.zeros(n, np.float32)
    drag = int(action.length * sample_rate)
    for _ in range(int(action.length * 40)):
        small = Action(0.0, "hit", "static", action.x, action.y, action.force * rng.uniform(0.15, 0.35), action.pitch)
        start = int(rng.uniform(0, drag))
        piece = impact(material, small, sample_rate, rng, seconds=0.3)
        end = min(n, start + piece.size)
        wave[start:end] += piece[: end - start]
    alpha = 0.1 + 0.8 * look.brightness
    friction = lowpass_noise(rng, drag, alpha)
    envelope = np.sin(np.pi * np.arange(drag) / drag) * (1 + 0.5 * np.sin(2 * np.pi * 25 * np.arange(drag) / sample_rate))
    wave[:drag] += 0.12 * action.force * friction * envelope
    return wave


def render_audio(segments: list[Segment], seconds: float, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    """The soundtrack: room noise plus every action's sound starting at its contact sample."""
    n = int(round(seconds * sample_rate))
    wave = rng.normal(0, 0.002, n).astype(np.float32)
    for seg in segments:
        for action in seg.actions:
            sound = scratch(seg.material, action, sample_rate, rng) if action.kind == "scratch" else impact(seg.material, action, sample_rate, rng)
            start = int(round(action.time * sample_rate))
            end = min(n, start + sound.size)
            wave[start:end] += sound[: end - start]
    peak = np.abs(wave).max()
    return wave * (0.95 / peak) if peak > 0.95 else wave
