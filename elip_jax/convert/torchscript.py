"""Read the tensors of a TorchScript archive (OpenAI's released CLIP `.pt` files) without running it.

`torch.jit.load` would compile and run the archive's code, and `torch.load(weights_only=True)` refuses
TorchScript archives, so this module reads the archive's `data.pkl` with a restricted unpickler instead:
modules become inert attribute bags, tensors are rebuilt with numpy from the raw storage records, and any
other import the pickle asks for is refused before it can run. torch is not needed.
"""
from __future__ import annotations

import pickle
import re
import zipfile
from typing import Any, NamedTuple, Optional

import ml_dtypes
import numpy as np

from elip_jax.convert.errors import ConversionError, UnsafeCheckpointError

STORAGE_DTYPES = {
    "FloatStorage": np.float32, "HalfStorage": np.float16, "DoubleStorage": np.float64,
    "BFloat16Storage": ml_dtypes.bfloat16, "LongStorage": np.int64, "IntStorage": np.int32,
    "ShortStorage": np.int16, "CharStorage": np.int8, "ByteStorage": np.uint8, "BoolStorage": np.bool_,
}


def is_torchscript_zip(names: list[str]) -> bool:
    """TorchScript archives carry compiled code next to the pickled data; torch.save zips do not."""
    return any(n.endswith("/constants.pkl") for n in names) or any("/code/" in n for n in names)


class ScriptObject:
    """Stand-in for a `__torch__.*` class instance: keeps its pickled state, has no behaviour."""

    torch_class = ""  # the archive's qualified class name, e.g. __torch__.torch.nn.modules.activation.GELU

    def __setstate__(self, state):
        self.state = state


class TorchScriptContents(NamedTuple):
    tensors: dict  # dotted attribute path -> numpy array, as in `state_dict()`
    classes: dict  # dotted attribute path of every scripted module -> its qualified class name and state


class StorageType:
    def __init__(self, name: str):
        self.name = name


def _identity(value, *_):
    return value


class _Storage:
    def __init__(self, array: np.ndarray):
        self.array = array


def _rebuild_tensor(storage: _Storage, offset, size, stride, *_unused):
    """torch._utils._rebuild_tensor_v2 done with numpy: a strided view into the storage, copied."""
    flat = storage.array
    size, stride = tuple(int(s) for s in size), tuple(int(s) for s in stride)
    last = offset + sum((n - 1) * s for n, s in zip(size, stride)) if all(size) else offset - 1
    if offset < 0 or last >= flat.size:
        raise ConversionError(f"tensor of shape {size} at offset {offset} reads past the end of its storage "
                              f"({flat.size} elements): the archive is corrupt")
    view = np.lib.stride_tricks.as_strided(flat[offset:], shape=size,
                                           strides=tuple(s * flat.itemsize for s in stride))
    return np.array(view)


# The only callables a TorchScript data.pkl may name. Everything maps to local, side-effect-free code.
_ALLOWED = {
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _identity,
    ("torch.jit._pickle", "restore_type_tag"): _identity,
    ("torch.jit._pickle", "build_intlist"): _identity,
    ("torch.jit._pickle", "build_doublelist"): _identity,
    ("torch.jit._pickle", "build_boollist"): _identity,
    ("torch.jit._pickle", "build_tensorlist"): _identity,
    ("collections", "OrderedDict"): dict,
}


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file, archive: zipfile.ZipFile, prefix: str, byteorder: str):
        super().__init__(file)
        self._archive, self._prefix, self._byteorder = archive, prefix, byteorder
        self._storages: dict[str, _Storage] = {}
        self._script_classes: dict[str, type] = {}

    def find_class(self, module: str, name: str):
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        if module == "torch" and name in STORAGE_DTYPES:
            return StorageType(name)
        if module.startswith("__torch__"):  # a scripted module class: keep its state only
            key = f"{module}.{name}"
            if key not in self._script_classes:
                self._script_classes[key] = type(name, (ScriptObject,), {"torch_class": key})
            return self._script_classes[key]
        raise UnsafeCheckpointError(
            f"refused to load: the TorchScript pickle asks for {module}.{name}, which is not tensor data. "
            "Only tensors and module attributes are read; no code from a checkpoint is ever run")

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) >= 3 and pid[0] == "storage"
                and isinstance(pid[1], StorageType)):
            raise ConversionError(f"unexpected persistent record {pid!r} in the TorchScript archive")
        storage_type, key = pid[1], str(pid[2])
        if key not in self._storages:
            path = f"{self._prefix}data/{key}"
            try:
                raw = self._archive.read(path)
            except KeyError:
                raise ConversionError(f"the TorchScript archive has no storage record {path!r}: it is "
                                      "truncated or corrupt") from None
            dtype = np.dtype(STORAGE_DTYPES[storage_type.name]).newbyteorder(
                "<" if self._byteorder == "little" else ">")
            if len(raw) % dtype.itemsize:
                raise ConversionError(f"storage {path!r} has {len(raw)} bytes, not a whole number of "
                                      f"{dtype.name} elements: the archive is corrupt")
            self._storages[key] = _Storage(np.frombuffer(raw, dtype=dtype).astype(dtype.newbyteorder("=")))
        return self._storages[key]


def read_torchscript(archive: zipfile.ZipFile) -> TorchScriptContents:
    """The archive's module tensors as a flat `state_dict`-style dict (dotted attribute paths), and the
    classes of its modules (which is how an archive states its activation: see `stated_activation`)."""
    names = archive.namelist()
    data_pkl = [n for n in names if n.endswith("/data.pkl") and n.count("/") == 1]
    if not data_pkl:
        raise ConversionError(f"TorchScript archive without a top-level data.pkl; entries: {names[:8]}")
    prefix = data_pkl[0][: -len("data.pkl")]
    byteorder = "little"
    if f"{prefix}byteorder" in names:
        byteorder = archive.read(f"{prefix}byteorder").decode().strip()
    with archive.open(data_pkl[0]) as f:
        root = _RestrictedUnpickler(f, archive, prefix, byteorder).load()
    tensors: dict[str, np.ndarray] = {}
    classes: dict[str, tuple] = {}
    _collect(root, "", tensors, classes)
    if not tensors:
        raise ConversionError("the TorchScript archive holds no tensors")
    for path, (torch_class, state) in classes.items():
        if torch_class.rsplit(".", 1)[-1] == "GELU":
            classes[path] = (torch_class, {**state, **_gelu_constants(archive, prefix, torch_class)})
    return TorchScriptContents(tensors, classes)


def _gelu_constants(archive: zipfile.ZipFile, prefix: str, torch_class: str) -> dict:
    """{'approximate': ...} as the archive's code for a GELU class declares it (a constant there, not part of
    the pickled state). The code is read as text, never run."""
    module, name = torch_class.rsplit(".", 1)
    try:
        code = archive.read(f"{prefix}code/{module.replace('.', '/')}.py").decode("utf-8", "replace")
    except KeyError:
        return {}
    body = re.search(rf"^class {re.escape(name)}\(Module\):\n(.*?)(?=^class |\Z)", code, re.S | re.M)
    found = body and re.search(r'^\s+approximate\s*:\s*Final\[str\]\s*=\s*"(\w+)"', body.group(1), re.M)
    return {"approximate": found.group(1)} if found else {}


def _collect(obj: Any, path: str, out: dict, classes: dict):
    """Walks module attributes depth-first; tensors land under their dotted path, as in `state_dict()`."""
    if isinstance(obj, np.ndarray):
        out[path] = obj
    elif isinstance(obj, ScriptObject):
        state = getattr(obj, "state", None)
        classes[path] = (obj.torch_class, state if isinstance(state, dict) else {})
        _collect(state, path, out, classes)
    elif isinstance(obj, dict):
        for name, value in obj.items():
            if isinstance(name, str):
                _collect(value, f"{path}.{name}" if path else name, out, classes)


def stated_activation(classes: dict) -> Optional[tuple[str, str]]:
    """(activation, where) as the archive's own MLP activation modules state it, or None if it has none.

    A TorchScript archive holds its modules as objects of their classes: OpenAI's releases name theirs
    `__torch__.multimodal.model.multimodal_transformer.<mangle>.QuickGELU`, a scripted open_clip model
    `...open_clip.transformer.QuickGELU` or torch's `...torch.nn.modules.activation.GELU`. The class is the
    code the archive runs, so it is a statement, not a guess."""
    found = {}
    for path, (torch_class, state) in classes.items():
        name = torch_class.rsplit(".", 1)[-1]
        if name == "QuickGELU":
            found.setdefault("quick_gelu", path)
        elif name == "GELU" and ".torch.nn.modules.activation" in torch_class:
            approximate = state.get("approximate", "none")
            if approximate != "none":
                raise ConversionError(f"the TorchScript archive's activation {path} is GELU(approximate="
                                      f"{approximate!r}); elip_jax implements exact GELU and QuickGELU only")
            found.setdefault("gelu", path)
    if len(found) > 1:
        raise ConversionError(f"the TorchScript archive mixes activations ({found}); elip_jax uses one "
                              "activation for both towers")
    if not found:
        return None
    (activation, path), = found.items()
    kind = "QuickGELU" if activation == "quick_gelu" else "GELU"
    return activation, f"TorchScript archive (its activation modules, e.g. {path}, are {kind})"
