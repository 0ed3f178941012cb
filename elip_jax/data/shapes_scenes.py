"""Rendered scenes of coloured shapes with captions that truly describe them: the built-in offline dataset.

Every scene is a pure function of (seed, split, index), so the dataset is identical on every machine and can be
regenerated instead of downloaded. A scene holds one to three objects in distinct cells of a 3x3 grid; object 0
is the most salient (strictly the largest) and its colour+shape is the classification label. Captions mention
different objects, positions and relations, so which image patches matter depends on the caption (what ELIP's
text-guided pruning is about).
"""
import io
from typing import Dict, List, NamedTuple, Tuple

import numpy as np
from PIL import Image, ImageDraw

IMAGE_SIZE = 96  # larger than the demo model's 64-px input, so training crops come from a bigger image
COLOURS: Dict[str, Tuple[int, int, int]] = {
    "red": (215, 40, 40), "green": (40, 165, 60), "blue": (45, 85, 220), "yellow": (235, 200, 35)}
SHAPES = ("circle", "square", "triangle", "cross")
# Half-extent in pixels of the 96-px image; a grid cell is 32 px, so even a large object stays in its cell.
SIZES: Dict[str, int] = {"small": 7, "medium": 10, "large": 14}
CLASSNAMES = [f"{colour} {shape}" for colour in COLOURS for shape in SHAPES]  # 16 classes
TEMPLATES = [
    "a photo of a {c}.", "a {c}.", "a picture of a {c}.", "a drawing of a {c}.", "a large {c}.",
    "an image showing a {c}.", "there is a {c} in the picture.", "a scene with a {c}.",
]
SPLIT_SIZES = {"train": 24000, "test": 1600}
_SPLIT_IDS = {"train": 0, "test": 1}
_NUMBER_WORDS = {1: "one", 2: "two", 3: "three"}
_CELL = IMAGE_SIZE // 3
_SUPERSAMPLE = 2  # draw at 2x and reduce: anti-aliased edges at little cost


class SceneObject(NamedTuple):
    colour: str
    shape: str
    size: str
    row: int  # 0 top .. 2 bottom
    col: int  # 0 left .. 2 right


class Scene(NamedTuple):
    png: bytes
    captions: List[str]
    label: int
    objects: List[SceneObject]


def position_phrase(row: int, col: int) -> str:
    vertical, horizontal = ("top", "middle", "bottom")[row], ("left", "centre", "right")[col]
    if row == 1 and col == 1:
        return "in the centre"
    if row == 1:
        return f"on the {horizontal}"
    if col == 1:
        return f"at the {vertical}"
    return f"in the {vertical} {horizontal} corner"


def _describe(obj: SceneObject, with_size: bool = False) -> str:
    # No colour or size word starts with a vowel, so the article is always "a".
    return f"a {obj.size + ' ' if with_size else ''}{obj.colour} {obj.shape}"


def _relation(a: SceneObject, b: SceneObject) -> str:
    if a.col != b.col:
        return "to the left of" if a.col < b.col else "to the right of"
    return "above" if a.row < b.row else "below"


def _sample_objects(rng: np.random.Generator) -> List[SceneObject]:
    count = int(rng.choice([1, 2, 3], p=[0.25, 0.4, 0.35]))
    cells = rng.permutation(9)[:count]
    kinds = rng.permutation(len(COLOURS) * len(SHAPES))[:count]  # distinct colour+shape: captions stay unambiguous
    colours, size_names = list(COLOURS), list(SIZES)
    main_size = int(rng.integers(1, 3))  # salient object is medium or large, every other object strictly smaller
    objects = []
    for i, (cell, kind) in enumerate(zip(cells, kinds)):
        size = main_size if i == 0 else int(rng.integers(0, main_size))
        objects.append(SceneObject(colours[kind // len(SHAPES)], SHAPES[kind % len(SHAPES)], size_names[size],
                                   int(cell // 3), int(cell % 3)))
    return objects


def _draw(objects: List[SceneObject], rng: np.random.Generator) -> Image.Image:
    scale = _SUPERSAMPLE
    # A random light two-colour gradient background: the colour of a patch alone does not identify an object.
    top, bottom = rng.integers(140, 250, size=(2, 3))
    ramp = np.linspace(0.0, 1.0, IMAGE_SIZE * scale)[:, None, None]
    gradient = (top * (1 - ramp) + bottom * ramp).astype(np.uint8)
    image = Image.fromarray(np.broadcast_to(gradient, (IMAGE_SIZE * scale, IMAGE_SIZE * scale, 3)).copy())
    draw = ImageDraw.Draw(image)
    for obj in objects:
        radius = SIZES[obj.size]
        slack = _CELL // 2 - radius - 1
        cx = obj.col * _CELL + _CELL // 2 + int(rng.integers(-slack, slack + 1))
        cy = obj.row * _CELL + _CELL // 2 + int(rng.integers(-slack, slack + 1))
        x0, y0, x1, y1 = [v * scale for v in (cx - radius, cy - radius, cx + radius, cy + radius)]
        fill = COLOURS[obj.colour]
        if obj.shape == "circle":
            draw.ellipse((x0, y0, x1, y1), fill=fill)
        elif obj.shape == "square":
            draw.rectangle((x0, y0, x1, y1), fill=fill)
        elif obj.shape == "triangle":
            draw.polygon([((x0 + x1) // 2, y0), (x1, y1), (x0, y1)], fill=fill)
        else:  # cross: two bars a third of the extent wide
            third = (x1 - x0) // 3
            draw.rectangle((x0 + third, y0, x1 - third, y1), fill=fill)
            draw.rectangle((x0, y0 + third, x1, y1 - third), fill=fill)
    return image.reduce(scale)


def _captions(objects: List[SceneObject], rng: np.random.Generator) -> List[str]:
    main = objects[0]
    others = objects[1:]
    listed = [_describe(o, with_size=True) for o in objects]
    count_word = _NUMBER_WORDS[len(objects)]
    captions = [
        f"{_describe(main, with_size=True)} {position_phrase(main.row, main.col)}",
        f"{count_word} object{'s' if len(objects) > 1 else ''}: " + " and ".join(listed),
        f"a photo of {_describe(main)}",
    ]
    if others:
        other = others[int(rng.integers(len(others)))]
        captions.append(f"{_describe(main)} {_relation(main, other)} {_describe(other)}")
        captions.append(f"there is {_describe(other, with_size=True)} {position_phrase(other.row, other.col)}")
    else:
        captions.append(f"a single {main.colour} {main.shape} {position_phrase(main.row, main.col)}")
        captions.append(f"only {_describe(main)} on a plain background")
    return captions


def render_scene(seed: int, split: str, index: int) -> Scene:
    """The scene `index` of `split`; a pure function of its arguments."""
    if split not in _SPLIT_IDS:
        raise ValueError(f"split must be one of {sorted(_SPLIT_IDS)}; got {split!r}")
    rng = np.random.default_rng([seed, _SPLIT_IDS[split], index])
    objects = _sample_objects(rng)
    image = _draw(objects, rng)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=1)  # fast; size is not a concern offline
    main = objects[0]
    label = list(COLOURS).index(main.colour) * len(SHAPES) + SHAPES.index(main.shape)
    return Scene(buffer.getvalue(), _captions(objects, rng), label, objects)
