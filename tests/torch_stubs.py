"""Stand-ins that let the real `open_clip` package be imported in tests without torchvision installed.

open_clip imports torchvision at module level only for its image transforms (`open_clip.transform`) and
`FrozenBatchNorm2d` (`open_clip.utils`). Tests use open_clip as a reference for tokenisation and for model
weights, never for image preprocessing, so a stub that satisfies those imports is enough. Every stubbed
class or function raises if it is actually used, so a test can never silently run on the stand-in.
"""
import enum
import importlib.machinery
import sys
import types

_STUB_MARKER = "_elip_jax_torchvision_stub"


class _Unavailable:
    """Base of every stubbed torchvision class: importable and subclassable, but unusable."""

    def __init__(self, *args, **kwargs):
        raise NotImplementedError(
            f"torchvision.{type(self).__name__} is a test stub (tests/torch_stubs.py): torchvision is absent")


def _unavailable_function(name):
    def function(*args, **kwargs):
        raise NotImplementedError(
            f"torchvision.transforms.functional.{name} is a test stub (tests/torch_stubs.py)")
    function.__name__ = name
    return function


class _InterpolationMode(enum.Enum):
    # open_clip reads these members at import time (default arguments), so they must exist.
    NEAREST = "nearest"
    BILINEAR = "bilinear"
    BICUBIC = "bicubic"
    BOX = "box"
    HAMMING = "hamming"
    LANCZOS = "lanczos"


_TRANSFORM_CLASSES = ("Normalize", "Compose", "RandomResizedCrop", "ToTensor", "Resize", "CenterCrop",
                      "ColorJitter", "Grayscale")
_FUNCTIONAL_NAMES = ("resize", "get_dimensions", "pad", "crop", "to_tensor", "center_crop", "normalize")


def install_torchvision_stub() -> bool:
    """Put a minimal `torchvision` into `sys.modules` unless a real one is importable.

    Returns True when the stub is (now or already) installed, False when a real torchvision is used.
    Call it before the first `import open_clip`.
    """
    existing = sys.modules.get("torchvision")
    if existing is not None:
        return getattr(existing, _STUB_MARKER, False)
    try:
        import torchvision  # noqa: F401  (a real install wins over the stub)
        return False
    except ImportError:
        pass

    _remember_torchvision_is_absent_in_transformers()
    torchvision = types.ModuleType("torchvision")
    setattr(torchvision, _STUB_MARKER, True)
    transforms = types.ModuleType("torchvision.transforms")
    functional = types.ModuleType("torchvision.transforms.functional")
    ops = types.ModuleType("torchvision.ops")
    ops_misc = types.ModuleType("torchvision.ops.misc")

    for name in _TRANSFORM_CLASSES:
        setattr(transforms, name, type(name, (_Unavailable,), {}))
    transforms.InterpolationMode = _InterpolationMode
    for name in _FUNCTIONAL_NAMES:
        setattr(functional, name, _unavailable_function(name))
    ops_misc.FrozenBatchNorm2d = type("FrozenBatchNorm2d", (_Unavailable,), {})

    transforms.functional = functional
    ops.misc = ops_misc
    torchvision.transforms = transforms
    torchvision.ops = ops
    # `importlib.util.find_spec` raises on a module whose __spec__ is None; give every stub module one.
    for module in (torchvision, transforms, functional, ops, ops_misc):
        module.__spec__ = importlib.machinery.ModuleSpec(module.__name__, loader=None)
    sys.modules.update({
        "torchvision": torchvision,
        "torchvision.transforms": transforms,
        "torchvision.transforms.functional": functional,
        "torchvision.ops": ops,
        "torchvision.ops.misc": ops_misc,
    })
    return True


def _remember_torchvision_is_absent_in_transformers():
    """Let transformers cache "torchvision is not available" before the stub exists.

    transformers decides once (an lru_cache) whether torchvision is importable; asked after the stub is in
    place it would answer yes and later reach for torchvision features the stub does not have.
    """
    try:
        from transformers.utils import import_utils
    except ImportError:
        return
    import_utils.is_torchvision_available()
