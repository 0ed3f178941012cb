"""Which class names and prompt templates a zero-shot classifier uses for a TFDS dataset, in TFDS label order.

The data itself lives in `prompt_data.py`; this module only chooses and checks. Every classifier row i is
the class with TFDS label id i, except for ImageNet-A and ImageNet-R: TFDS gives them the 1000-class
ImageNet label space, but only 200 classes occur, and (as their authors and OpenAI do) the classifier holds
just those 200, so `label_to_class` maps TFDS label ids to classifier rows (-1 for ids outside the subset).
"""
from __future__ import annotations

import dataclasses
from typing import Optional, Sequence

import numpy as np

from elip_jax.data.names import BUILTIN_ALIAS as BUILTIN, is_builtin
from elip_jax.evaluate import prompt_data

IMAGENET_1K = ("imagenet2012", "imagenet_v2", "imagenet_sketch")
IMAGENET_200 = {"imagenet_a": prompt_data.IMAGENET_A_LABEL_IDS, "imagenet_r": prompt_data.IMAGENET_R_LABEL_IDS}
# Stanford Dogs is not in OpenAI's prompt set. Its 120 breeds are ImageNet classes, named here by their
# OpenAI ImageNet name (matched by WordNet id), with a prompt in the style of OpenAI's Oxford Pets prompt.
STANFORD_DOGS_TEMPLATES = ("a photo of a {}, a type of dog.",)


@dataclasses.dataclass(frozen=True)
class ZeroShotPrompts:
    """classnames[c] and the templates make classifier row c; label_to_class[tfds_label] = row (or -1)."""

    dataset: str
    classnames: tuple
    templates: tuple
    label_to_class: np.ndarray

    @property
    def num_classes(self) -> int:
        return len(self.classnames)

    def prompts(self) -> list[str]:
        """All prompt texts, class-major: prompts()[c * len(templates) + t] = templates[t] with class c."""
        return [fill_template(template, name) for name in self.classnames for template in self.templates]


PLACEHOLDERS = ("{}", "{c}")  # OpenAI's templates use '{}'; the built-in dataset's use '{c}'


def fill_template(template: str, classname: str) -> str:
    """The template with its placeholder replaced (plain replacement: class names may contain braces)."""
    for placeholder in PLACEHOLDERS:
        if placeholder in template:
            return template.replace(placeholder, classname)
    raise ValueError(f"prompt template {template!r} has no class placeholder ('{{}}' or '{{c}}')")


def base_name(dataset: str) -> str:
    """'eurosat/rgb:2.0.0' -> 'eurosat': the TFDS name without config or version."""
    return dataset.split(":")[0].split("/")[0]


def known_datasets() -> list[str]:
    return sorted(list(prompt_data.CLASSNAMES) + list(IMAGENET_1K) + list(IMAGENET_200)
                  + ["stanford_dogs", BUILTIN])


def zeroshot_prompts(dataset: str, tfds_label_names: Optional[Sequence[str]] = None) -> ZeroShotPrompts:
    """The class names and templates for `dataset` (a TFDS name, or 'builtin' / the built-in dataset's name).

    tfds_label_names: the dataset's label names as its TFDS builder reports them, when known. They are
    checked against the names these prompts were matched to, so a TFDS release that re-orders labels
    fails loudly instead of scoring against the wrong classes. Stanford Dogs needs them (its names are only
    known once the dataset is prepared).
    """
    name = base_name(dataset)
    if is_builtin(dataset):
        from elip_jax.data import shapes_builder
        return _identity(dataset, shapes_builder.builtin_classnames(), shapes_builder.builtin_templates())
    if name in IMAGENET_1K:
        _check_names(dataset, prompt_data.IMAGENET_WNIDS, tfds_label_names)
        return _identity(dataset, prompt_data.IMAGENET_CLASSNAMES, prompt_data.IMAGENET_TEMPLATES)
    if name in IMAGENET_200:
        _check_names(dataset, prompt_data.IMAGENET_WNIDS, tfds_label_names)
        subset = IMAGENET_200[name]
        label_to_class = np.full(len(prompt_data.IMAGENET_WNIDS), -1, np.int32)
        label_to_class[list(subset)] = np.arange(len(subset), dtype=np.int32)
        return ZeroShotPrompts(dataset, tuple(prompt_data.IMAGENET_CLASSNAMES[i] for i in subset),
                               tuple(prompt_data.IMAGENET_TEMPLATES), label_to_class)
    if name == "stanford_dogs":
        return _identity(dataset, stanford_dogs_classnames(tfds_label_names), STANFORD_DOGS_TEMPLATES)
    if name in prompt_data.CLASSNAMES:
        _check_names(dataset, prompt_data.TFDS_LABEL_NAMES[name], tfds_label_names)
        return _identity(dataset, prompt_data.CLASSNAMES[name], prompt_data.TEMPLATES[name])
    raise ValueError(f"no zero-shot class names for dataset {dataset!r}; known datasets: "
                     f"{', '.join(known_datasets())}")


def stanford_dogs_classnames(tfds_label_names: Optional[Sequence[str]]) -> list[str]:
    """TFDS names its labels 'n02085620-chihuahua'; the WordNet id picks the OpenAI ImageNet name."""
    if not tfds_label_names or not all("-" in str(n) for n in tfds_label_names):
        raise ValueError("stanford_dogs class names come from the prepared dataset's label names "
                         "('n02085620-chihuahua', ...); prepare it with TFDS first and pass --data-dir")
    by_wnid = dict(zip(prompt_data.IMAGENET_WNIDS, prompt_data.IMAGENET_CLASSNAMES))
    names = []
    for label in tfds_label_names:
        wnid, breed = str(label).split("-", 1)
        names.append(by_wnid.get(wnid, breed.replace("_", " ")))
    return names


def _identity(dataset: str, classnames, templates) -> ZeroShotPrompts:
    classnames, templates = tuple(classnames), tuple(templates)
    if not classnames or not templates:
        raise ValueError(f"dataset {dataset!r} needs at least one class name and one template")
    bad = [t for t in templates if not any(p in t for p in PLACEHOLDERS)]
    if bad:
        raise ValueError(f"every prompt template must contain '{{}}' or '{{c}}' for the class name; got {bad[:3]}")
    return ZeroShotPrompts(dataset, classnames, templates, np.arange(len(classnames), dtype=np.int32))


def _check_names(dataset: str, expected: Sequence[str], actual: Optional[Sequence[str]]) -> None:
    """Raise when TFDS's label names differ from those the prompts were matched to.

    Unprepared builders report placeholder names ('0', '1', ...): those say nothing and are not checked.
    """
    if actual is None or all(str(n).isdigit() for n in actual):
        return
    actual = [str(n) for n in actual]
    if len(actual) != len(expected):
        raise ValueError(f"{dataset}: TFDS reports {len(actual)} labels, the zero-shot prompts expect "
                         f"{len(expected)}")
    for i, (a, e) in enumerate(zip(actual, expected)):
        if a != e:
            raise ValueError(f"{dataset}: TFDS label {i} is named {a!r} but the zero-shot prompts were matched "
                             f"to {e!r}; this TFDS version orders its labels differently")

