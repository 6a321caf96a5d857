"""Procedural stimuli: one coloured, textured shape on a gray background, a caption, a latent.

Coordinates: the visual field spans [-1, 1] on both axes (+x right, +y up); an image of
``image_size`` pixels covers it exactly. A shape of ``size`` s (its diameter as a fraction of the
image width) has radius s in visual-field units; shape outlines are defined on local coordinates
(u, v) = ((X - x) / s, (Y - y) / s), in which every shape fits in the unit disc.

Each category carries a hand-written shape-descriptor vector; its hidden semantic embedding is a
fixed random projection of the (standardised) descriptors plus a small random part, so held-out
categories lie in the same structured space as the seen ones.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd

from mindpipe.io.bids import STIMULI_CONTRACT_COLUMNS
from mindpipe.twin.config import MAX_CATEGORIES, TwinConfig, rng_for

DESCRIPTOR_NAMES = ("n_corners", "curvature", "concavity", "has_hole", "elongation", "top_heavy")

#: category -> shape descriptors (in DESCRIPTOR_NAMES order). The first six are varied on
#: purpose: the tiny profile uses only them.
CATEGORIES: dict[str, tuple[float, ...]] = {
    "circle": (0, 1.0, 0.0, 0, 0.0, 0.0),
    "square": (4, 0.0, 0.0, 0, 0.0, 0.0),
    "triangle": (3, 0.0, 0.0, 0, 0.1, -0.5),
    "star": (10, 0.0, 0.6, 0, 0.0, 0.1),
    "cross": (12, 0.0, 0.5, 0, 0.0, 0.0),
    "ring": (0, 1.0, 0.0, 1, 0.0, 0.0),
    "ellipse": (0, 1.0, 0.0, 0, 0.8, 0.0),
    "rectangle": (4, 0.0, 0.0, 0, 1.0, 0.0),
    "pentagon": (5, 0.0, 0.0, 0, 0.05, -0.1),
    "hexagon": (6, 0.0, 0.0, 0, 0.0, 0.0),
    "diamond": (4, 0.0, 0.0, 0, 0.4, 0.0),
    "crescent": (2, 1.0, 0.7, 0, 0.3, 0.0),
    "octagon": (8, 0.0, 0.0, 0, 0.0, 0.0),
    "trapezoid": (4, 0.0, 0.0, 0, 0.4, -0.3),
    "semicircle": (2, 0.6, 0.0, 0, 0.5, -0.4),
    "heart": (1, 0.8, 0.3, 0, 0.1, 0.3),
}
assert len(CATEGORIES) == MAX_CATEGORIES

COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (0.85, 0.15, 0.15),
    "green": (0.15, 0.70, 0.20),
    "blue": (0.15, 0.30, 0.85),
    "yellow": (0.90, 0.85, 0.15),
    "purple": (0.55, 0.20, 0.75),
    "orange": (0.95, 0.55, 0.10),
}

#: texture -> (patterned, spatial frequency, orientedness): the texture latent is built from it.
TEXTURES: dict[str, tuple[float, float, float]] = {
    "solid": (0.0, 0.0, 0.0),
    "stripes": (1.0, 0.5, 1.0),
    "dots": (1.0, 0.7, 0.0),
    "checker": (1.0, 1.0, 0.5),
}
TEXTURE_WORDS = {"solid": "solid", "stripes": "striped", "dots": "dotted", "checker": "checkered"}
SHADE = 0.35  # pattern pixels are the colour times SHADE
BACKGROUND = 0.5  # gray level of the screen


# ------------------------------------------------------------------------------------------------
# Stimulus table
# ------------------------------------------------------------------------------------------------
def choose_held_out(cfg: TwinConfig, seed: int) -> list[str]:
    """The zero-shot categories: ``n_held_out`` of the first ``n_categories``, in table order."""
    names = list(CATEGORIES)[: cfg.n_categories]
    picked = rng_for(seed, "held_out").choice(cfg.n_categories, cfg.n_held_out, replace=False)
    return [names[i] for i in sorted(picked)]


def sample_stimuli(cfg: TwinConfig, seed: int) -> pd.DataFrame:
    """Draw every stimulus's attributes and caption.

    Returns
    -------
    pandas.DataFrame
        One row per stimulus (``cfg.n_stimuli`` rows, train then val then test), with the
        columns of ``stimuli.tsv`` (``STIMULI_CONTRACT_COLUMNS``). Floats are rounded to 4
        decimals so the table on disk is exactly what the images and responses were computed from.
    """
    rng = rng_for(seed, "stimuli")
    names = list(CATEGORIES)[: cfg.n_categories]
    held = choose_held_out(cfg, seed)
    seen = [c for c in names if c not in held]
    splits = [("train", cfg.n_train, seen), ("val", cfg.n_val, seen), ("test", cfg.n_test, names)]
    category = np.concatenate([balanced(pool, n, rng) for _, n, pool in splits])
    table = _draw_attributes(category, cfg, rng)
    table["split"] = np.repeat([s for s, _, _ in splits], [n for _, n, _ in splits])
    table["held_out"] = np.isin(category, held).astype(np.int64)
    return table[list(STIMULI_CONTRACT_COLUMNS)]


def pretraining_corpus(
    cfg: TwinConfig, seed: int, n: int, caption_detail: float = 1.0
) -> tuple[pd.DataFrame, np.ndarray]:
    """Image-caption pairs from the same generator for pretraining a CLIP (the twin's "LAION").

    Every category appears, held-out ones included: like web data, the corpus covers concepts
    the fMRI experiment never trains on, which is what makes zero-shot decoding possible. It is
    drawn from its own random stream, so no pair coincides with a stimulus by construction.
    ``caption_detail`` < 1 makes the captions terser, as web alt-text is: every caption names the
    shape, and keeps each of its size, colour, texture and position words with that probability
    (drawn from a stream of its own: the images do not change).

    Returns the table (``stim_id``, ``caption``, ``category`` and the attributes) and the
    ``(n, image_size, image_size, 3)`` uint8 images.
    """
    if not 0.0 < caption_detail <= 1.0:
        raise ValueError(f"caption_detail must be in (0, 1]; got {caption_detail}")
    rng = rng_for(seed, "pretraining_corpus")
    category = balanced(list(CATEGORIES)[: cfg.n_categories], n, rng)
    table = _draw_attributes(category, cfg, rng)
    if caption_detail < 1.0:
        keep = rng_for(seed, "pretraining_corpus", "captions").random((n, 4)) < caption_detail
        table["caption"] = [
            caption(r.category, r.colour, r.texture, r.size, r.x, r.y, keep=tuple(k))
            for r, k in zip(table.itertuples(), keep, strict=True)
        ]
    return table, render_table(table, cfg, seed)


def _draw_attributes(
    category: np.ndarray, cfg: TwinConfig, rng: np.random.Generator
) -> pd.DataFrame:
    """Size, position, colour, texture and caption for each given category."""
    n = len(category)
    size = np.round(rng.uniform(*cfg.size_range, n), 4)
    # Keep the whole shape on screen: its centre stays at least one radius (+ margin) from the edge.
    limit = 1.0 - size - 0.02
    x = np.round(rng.uniform(-1.0, 1.0, n) * limit, 4)
    y = np.round(rng.uniform(-1.0, 1.0, n) * limit, 4)
    colour = np.array(list(COLOURS))[rng.integers(len(COLOURS), size=n)]
    texture = np.array(list(TEXTURES))[rng.integers(len(TEXTURES), size=n)]
    table = pd.DataFrame(
        {
            "stim_id": np.arange(n, dtype=np.int64),
            "file": [f"stimuli/images/stim-{i:05d}.png" for i in range(n)],
            "category": category,
            "colour": colour,
            "texture": texture,
            "size": size,
            "x": x,
            "y": y,
        }
    )
    table["caption"] = [
        caption(r.category, r.colour, r.texture, r.size, r.x, r.y) for r in table.itertuples()
    ]
    return table


def balanced(pool: list[str], n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` labels cycling through ``pool`` (counts differ by at most one), shuffled."""
    return rng.permutation(np.resize(np.array(pool), n))


def caption(
    category: str,
    colour: str,
    texture: str,
    size: float,
    x: float,
    y: float,
    keep: tuple[bool, ...] = (True, True, True, True),
) -> str:
    """Caption from the grammar: ``a <size> <colour> <texture> <category> <position>``.

    Example: ``"a large red striped triangle on the left"``. ``keep`` leaves out the size,
    colour, texture or position words (in that order) where False: ``"a red triangle"``.
    """
    size_word = "small" if size < 0.35 else "medium" if size < 0.48 else "large"
    keep_size, keep_colour, keep_texture, keep_position = keep
    words = [
        *([size_word] if keep_size else []),
        *([colour] if keep_colour else []),
        *([TEXTURE_WORDS[texture]] if keep_texture else []),
        category,
        *([position_phrase(x, y)] if keep_position else []),
    ]
    return " ".join(["a", *words])


def position_phrase(x: float, y: float, threshold: float = 0.25) -> str:
    """``"in the centre"``, ``"on the left"``, ``"at the top"``, ``"at the bottom right"``, ..."""
    horizontal = "left" if x < -threshold else "right" if x > threshold else ""
    vertical = "top" if y > threshold else "bottom" if y < -threshold else ""
    if horizontal and vertical:
        return f"at the {vertical} {horizontal}"
    if horizontal:
        return f"on the {horizontal}"
    if vertical:
        return f"at the {vertical}"
    return "in the centre"


def category_table(cfg: TwinConfig, seed: int) -> pd.DataFrame:
    """``categories.tsv``: category, held_out (0/1) and the raw shape descriptors."""
    names = list(CATEGORIES)[: cfg.n_categories]
    held = set(choose_held_out(cfg, seed))
    table = pd.DataFrame([CATEGORIES[c] for c in names], columns=list(DESCRIPTOR_NAMES))
    table.insert(0, "held_out", [int(c in held) for c in names])
    table.insert(0, "category", names)
    return table


# ------------------------------------------------------------------------------------------------
# Semantic latents
# ------------------------------------------------------------------------------------------------
def category_embeddings(cfg: TwinConfig, seed: int) -> np.ndarray:
    """Unit-norm category embeddings, shape (n_categories, category_dim).

    ``(1 - category_random) * P(descriptors) + category_random * noise``, where P is one fixed
    random projection of the standardised descriptors (shared by seen and held-out categories).
    """
    rng = rng_for(seed, "latents", "category")
    names = list(CATEGORIES)[: cfg.n_categories]
    desc = np.array([CATEGORIES[c] for c in names], dtype=np.float64)
    desc[:, 0] = np.log1p(desc[:, 0])  # corner counts: 3 vs 4 matters more than 10 vs 12
    std = desc.std(axis=0)
    desc = (desc - desc.mean(axis=0)) / np.where(std > 0, std, 1.0)
    projection = rng.normal(size=(desc.shape[1], cfg.category_dim))
    structured = _unit_rows(desc @ projection)
    random_part = _unit_rows(rng.normal(size=(len(names), cfg.category_dim)))
    return _unit_rows((1 - cfg.category_random) * structured + cfg.category_random * random_part)


def _attribute_embeddings(table: dict[str, tuple[float, ...]]) -> dict[str, np.ndarray]:
    """Centre descriptor rows over the attribute's values and scale each to unit norm."""
    values = np.array(list(table.values()), dtype=np.float64)
    return dict(zip(table, _unit_rows(values - values.mean(axis=0)), strict=True))


def _colour_descriptors() -> dict[str, tuple[float, ...]]:
    """Colour-opponent coordinates (red-green, yellow-blue, luminance) of each named colour."""
    return {
        name: (r - g, (r + g) / 2 - b, (r + g + b) / 3 - BACKGROUND)
        for name, (r, g, b) in COLOURS.items()
    }


def latent_vectors(
    cfg: TwinConfig,
    seed: int,
    category: np.ndarray,
    colour: np.ndarray,
    texture: np.ndarray,
    size: np.ndarray,
) -> np.ndarray:
    """Stimulus latents z = [w_cat*category, w_col*colour, w_tex*texture, w_size*size].

    Parameters
    ----------
    category, colour, texture : (n,) arrays of names
    size : (n,) float array

    Returns
    -------
    numpy.ndarray
        (n, cfg.n_latent) float32; the size entry is rescaled to [-1, 1] over ``size_range``.
    """
    names = list(CATEGORIES)[: cfg.n_categories]
    cat_emb = category_embeddings(cfg, seed)[[names.index(c) for c in category]]
    col = _attribute_embeddings(_colour_descriptors())
    tex = _attribute_embeddings(TEXTURES)
    lo, hi = cfg.size_range
    size_z = (2 * (np.asarray(size, dtype=np.float64) - lo) / max(hi - lo, 1e-9) - 1)[:, None]
    w_cat, w_col, w_tex, w_size = cfg.latent_weights
    z = np.hstack(
        [
            w_cat * cat_emb,
            w_col * np.array([col[c] for c in colour]),
            w_tex * np.array([tex[t] for t in texture]),
            w_size * size_z,
        ]
    )
    return z.astype(np.float32)


def stimulus_latents(cfg: TwinConfig, seed: int, table: pd.DataFrame) -> np.ndarray:
    """Latents of the stimulus table's rows, shape (n_stimuli, n_latent) float32."""
    return latent_vectors(
        cfg,
        seed,
        table["category"].to_numpy(),
        table["colour"].to_numpy(),
        table["texture"].to_numpy(),
        table["size"].to_numpy(),
    )


def reference_latents(cfg: TwinConfig, seed: int) -> np.ndarray:
    """Latents of every category x colour x texture x (small, mid, large) combination.

    Semantic thresholds are quantiles over this fixed population, so a voxel's tuning does not
    depend on which images happened to be drawn. Shape (n_combinations, n_latent).
    """
    names = list(CATEGORIES)[: cfg.n_categories]
    sizes = np.linspace(*cfg.size_range, 3)
    grid = np.array(
        np.meshgrid(
            np.arange(len(names)),
            np.arange(len(COLOURS)),
            np.arange(len(TEXTURES)),
            np.arange(3),
            indexing="ij",
        )
    ).reshape(4, -1)
    return latent_vectors(
        cfg,
        seed,
        np.array(names)[grid[0]],
        np.array(list(COLOURS))[grid[1]],
        np.array(list(TEXTURES))[grid[2]],
        sizes[grid[3]],
    )


def _unit_rows(a: np.ndarray) -> np.ndarray:
    return a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)


# ------------------------------------------------------------------------------------------------
# Rendering
# ------------------------------------------------------------------------------------------------
def _regular_polygon(n: int, phase: float) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    """Inside test of a regular n-gon with circumradius 1 and a vertex at angle ``phase``."""

    def inside(u: np.ndarray, v: np.ndarray) -> np.ndarray:
        sector = 2 * np.pi / n
        theta = np.mod(np.arctan2(v, u) - phase, sector) - sector / 2
        return np.hypot(u, v) * np.cos(theta) <= np.cos(np.pi / n)

    return inside


def _polygon(vertices: np.ndarray) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    """Inside test of an arbitrary polygon (even-odd rule), vertices (k, 2)."""

    def inside(u: np.ndarray, v: np.ndarray) -> np.ndarray:
        result = np.zeros(u.shape, dtype=bool)
        for (x0, y0), (x1, y1) in zip(vertices, np.roll(vertices, -1, axis=0), strict=True):
            crosses = (y0 > v) != (y1 > v)
            with np.errstate(divide="ignore", invalid="ignore"):
                x_at = x0 + (v - y0) * (x1 - x0) / (y1 - y0)
            result ^= crosses & (u < x_at)
        return result

    return inside


def _star_vertices(points: int = 5, inner: float = 0.42) -> np.ndarray:
    angles = np.pi / 2 + np.arange(2 * points) * np.pi / points
    radii = np.where(np.arange(2 * points) % 2 == 0, 1.0, inner)
    return np.column_stack([radii * np.cos(angles), radii * np.sin(angles)])


def _heart(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    x, y = 1.25 * u, 1.25 * v + 0.15
    return (x**2 + y**2 - 1) ** 3 - x**2 * y**3 <= 0


SHAPES: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "circle": lambda u, v: u**2 + v**2 <= 1,
    "square": lambda u, v: (np.abs(u) <= 0.7) & (np.abs(v) <= 0.7),
    "triangle": _regular_polygon(3, np.pi / 2),
    "star": _polygon(_star_vertices()),
    "cross": lambda u, v: (
        ((np.abs(u) <= 0.3) & (np.abs(v) <= 0.95)) | ((np.abs(v) <= 0.3) & (np.abs(u) <= 0.95))
    ),
    "ring": lambda u, v: (u**2 + v**2 <= 1) & (u**2 + v**2 >= 0.55**2),
    "ellipse": lambda u, v: u**2 + (v / 0.55) ** 2 <= 1,
    "rectangle": lambda u, v: (np.abs(u) <= 0.88) & (np.abs(v) <= 0.46),
    "pentagon": _regular_polygon(5, np.pi / 2),
    "hexagon": _regular_polygon(6, 0.0),
    "diamond": lambda u, v: np.abs(u) / 0.65 + np.abs(v) <= 1,
    "crescent": lambda u, v: (u**2 + v**2 <= 1) & ((u - 0.45) ** 2 + (v - 0.15) ** 2 > 0.8**2),
    "octagon": _regular_polygon(8, np.pi / 8),
    "trapezoid": _polygon(np.array([[-0.85, -0.5], [0.85, -0.5], [0.45, 0.5], [-0.45, 0.5]])),
    "semicircle": lambda u, v: (u**2 + (v + 0.3) ** 2 <= 0.95**2) & (v + 0.3 >= 0),
    "heart": _heart,
}
assert set(SHAPES) == set(CATEGORIES)  # every outline fits in the unit disc

PATTERNS: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "solid": lambda u, v: np.zeros(u.shape, dtype=bool),
    "stripes": lambda u, v: np.floor((u + v) / 0.45) % 2 == 1,
    "dots": lambda u, v: (np.mod(u, 0.45) - 0.225) ** 2 + (np.mod(v, 0.45) - 0.225) ** 2 < 0.13**2,
    "checker": lambda u, v: (np.floor(u / 0.4) + np.floor(v / 0.4)) % 2 == 1,
}


def background(cfg: TwinConfig, seed: int) -> np.ndarray:
    """The fixed noisy gray screen shared by every image, (image_size, image_size, 3) in [0, 1]."""
    rng = rng_for(seed, "background")
    noise = rng.normal(0.0, cfg.background_noise, (cfg.image_size, cfg.image_size, 1))
    return np.clip(BACKGROUND + noise, 0.0, 1.0).repeat(3, axis=2)


def render(
    category: str,
    colour: str,
    texture: str,
    size: float,
    x: float,
    y: float,
    cfg: TwinConfig,
    screen: np.ndarray,
) -> np.ndarray:
    """Render one stimulus as uint8 RGB, shape (image_size, image_size, 3).

    The shape is drawn at ``supersample`` x resolution and box-filtered down (anti-aliasing);
    only the background keeps the fixed noise of ``screen``.
    """
    side, k = cfg.image_size, cfg.supersample
    # Only the shape's bounding box needs the supersampled grid; the rest is screen.
    cols = _pixel_range(x - size, x + size, side)
    rows = _pixel_range(-(y + size), -(y - size), side)  # rows count downwards
    sub_x = (np.arange(cols.start * k, cols.stop * k) + 0.5) / (side * k) * 2 - 1
    sub_y = -((np.arange(rows.start * k, rows.stop * k) + 0.5) / (side * k) * 2 - 1)
    grid_x, grid_y = np.meshgrid(sub_x, sub_y)
    u, v = (grid_x - x) / size, (grid_y - y) / size
    inside = SHAPES[category](u, v)
    shaded = inside & PATTERNS[texture](u, v)
    rgb = np.asarray(COLOURS[colour])
    fill = np.where(shaded[..., None], SHADE * rgb, rgb) * inside[..., None]
    n_rows, n_cols = rows.stop - rows.start, cols.stop - cols.start
    coverage = inside.reshape(n_rows, k, n_cols, k).mean(axis=(1, 3))[..., None]
    fill = fill.reshape(n_rows, k, n_cols, k, 3).mean(axis=(1, 3))
    image = screen.copy()
    image[rows, cols] = fill + (1 - coverage) * screen[rows, cols]
    return np.round(np.clip(image, 0.0, 1.0) * 255).astype(np.uint8)


def _pixel_range(lo: float, hi: float, side: int) -> slice:
    """Pixels whose area meets the visual-field interval [lo, hi] (field spans [-1, 1])."""
    start = int(np.floor((lo + 1) / 2 * side))
    stop = int(np.ceil((hi + 1) / 2 * side))
    return slice(max(start, 0), min(stop, side))


def render_table(table: pd.DataFrame, cfg: TwinConfig, seed: int) -> np.ndarray:
    """Render every row of the stimulus table, (n_stimuli, image_size, image_size, 3) uint8."""
    screen = background(cfg, seed)
    return np.stack(
        [
            render(r.category, r.colour, r.texture, r.size, r.x, r.y, cfg, screen)
            for r in table.itertuples()
        ]
    )


def contrast_energy(images: np.ndarray, cfg: TwinConfig) -> np.ndarray:
    """Local contrast energy that drives retinotopic voxels.

    ``(L - 0.5)^2 + colour_weight * chroma^2 + edge_weight * |grad L|^2 * image_size^2 / 64``:
    luminance contrast, colour-opponent contrast, and an edge channel so textures matter (the
    gradient is taken per pixel, then rescaled so the channel does not depend on the resolution).

    Parameters
    ----------
    images : (n, H, W, 3) uint8

    Returns
    -------
    numpy.ndarray
        (n, H * W) float32, C-order pixels (row 0 = top of the image).
    """
    rgb = images.astype(np.float64) / 255.0  # float64 for machine-independent bytes (BLAS)
    lum = rgb @ np.array([0.299, 0.587, 0.114])
    red_green = rgb[..., 0] - rgb[..., 1]
    yellow_blue = (rgb[..., 0] + rgb[..., 1]) / 2 - rgb[..., 2]
    grad_y, grad_x = np.gradient(lum, axis=(1, 2))
    edge = (grad_x**2 + grad_y**2) * (images.shape[1] / 8.0) ** 2
    energy = (
        (lum - BACKGROUND) ** 2
        + cfg.colour_weight * (red_green**2 + yellow_blue**2)
        + cfg.edge_weight * edge
    )
    return energy.reshape(len(images), -1).astype(np.float32)
