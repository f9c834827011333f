"""Load NVlabs EDM network pickles (Karras et al. 2022) without NVlabs' code and without running anything they hold.

EDM saves `{'ema': net, ...}` with plain `pickle.dump`. Every class decorated with `@persistence.persistent_class`
pickles as a call `torch_utils.persistence._reconstruct_persistent_obj(meta)`, whose `meta` carries the class's source
text and the object's `__dict__` (`_init_kwargs`, `_parameters`, `_buffers`, `_modules`, ...). A restricted
unpickler turns those calls into plain records, refuses every global outside a short allowlist, and the weights are
then copied into this project's own EDM network built from the recorded constructor arguments.
"""

import hashlib
import io
from collections import OrderedDict

import numpy as np
import torch

from ctm import safe_pickle
from ctm.networks import build_edm_network

from .errors import TeacherError, check_finite


class RefusedPickleError(TeacherError, safe_pickle.RefusedPickleError):
    """The pickle asks for something an EDM network pickle never holds; nothing it names has been run."""


class PersistentObject:
    """An NVlabs `persistent_class` instance kept as data: its class name and its `__dict__` (`state`)."""

    def __init__(self, class_name, state):
        self.class_name = class_name
        self.state = state

    def __repr__(self):
        return f"PersistentObject({self.class_name!r})"


class TorchModuleDict:
    """A `torch.nn.ModuleDict` (a plain torch class in EDM's networks) pickled the usual way, kept as data: its `__dict__`."""

    def __setstate__(self, state):
        if not isinstance(state, dict):
            raise RefusedPickleError(f"torch.nn.ModuleDict state is {type(state).__name__}, expected a dict")
        self.state = state


def _persistent_object(meta):
    """Stands in for `torch_utils.persistence._reconstruct_persistent_obj`; `meta['module_src']` is never run."""
    if not isinstance(meta, dict) or meta.get("type") != "class" or not isinstance(meta.get("class_name"), str):
        raise RefusedPickleError("malformed torch_utils.persistence record: expected meta with type='class' and a class_name")
    if not isinstance(meta.get("state"), dict):
        raise RefusedPickleError(f"persistent {meta['class_name']} has no state dict")
    return PersistentObject(meta["class_name"], meta["state"])


def _load_storage(data):
    """Stands in for `torch.storage._load_from_bytes`: the bytes are a legacy `torch.save` of one storage."""
    if not isinstance(data, bytes):
        raise RefusedPickleError(f"tensor storage given as {type(data).__name__}, expected bytes")
    try:
        storage = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as e:
        raise RefusedPickleError(f"a tensor storage could not be loaded with weights_only=True: {e}") from e
    if not isinstance(storage, torch.storage.TypedStorage):
        raise RefusedPickleError(f"a tensor storage holds {type(storage).__name__}, expected a storage")
    return storage


def _numpy_scalar(dtype, data):
    """Stands in for numpy's scalar reconstruction (e.g. skip_scale = np.sqrt(0.5)), refusing object dtypes."""
    if not isinstance(dtype, np.dtype) or dtype.hasobject or not isinstance(data, bytes):
        raise RefusedPickleError(f"numpy scalar of dtype {dtype!r} refused: only plain numeric scalars are read")
    return np.frombuffer(data, dtype=dtype)[0]


# Every global an EDM network pickle names (protocols 2-5), and what it becomes here.
ALLOWED_GLOBALS = {
    ("torch_utils.persistence", "_reconstruct_persistent_obj"): _persistent_object,
    ("dnnlib.util", "EasyDict"): dict,
    ("collections", "OrderedDict"): OrderedDict,
    ("builtins", "set"): set,
    ("__builtin__", "set"): set,
    ("_codecs", "encode"): safe_pickle.latin1_bytes,
    ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): torch._utils._rebuild_parameter,
    ("torch.storage", "_load_from_bytes"): _load_storage,
    ("numpy", "dtype"): safe_pickle.plain_dtype,
    ("numpy.core.multiarray", "scalar"): _numpy_scalar,
    ("numpy._core.multiarray", "scalar"): _numpy_scalar,
    ("torch.nn.modules.container", "ModuleDict"): TorchModuleDict,
}


def read_edm_pickle(path):
    """The contents of an EDM pickle as plain data (tensors, dicts, numbers, `PersistentObject` and `TorchModuleDict`
    records); a file that is no pickle, or names a refused global, is an error."""
    with open(path, "rb") as f:
        try:
            return safe_pickle.restricted_load(f, ALLOWED_GLOBALS, "an EDM network pickle",
                                               "tensors, numbers and NVlabs persistence records")
        except safe_pickle.RefusedPickleError as e:
            raise RefusedPickleError(f"{path}: {e}") from e
        except Exception as e:
            raise TeacherError(f"{path} could not be read as a pickle ({type(e).__name__}: {e}); "
                               f"expected an NVlabs EDM network pickle such as edm-cifar10-32x32-uncond-vp.pkl") from e


def _describe(obj):
    if isinstance(obj, PersistentObject):
        return f"a persistent {obj.class_name}"
    return "a torch.nn.ModuleDict" if isinstance(obj, TorchModuleDict) else f"a {type(obj).__name__}"


def _module_state(obj, where):
    state = obj.state if isinstance(obj, (PersistentObject, TorchModuleDict)) else {}
    if not all(isinstance(state.get(k), dict) for k in ("_parameters", "_buffers", "_modules")):
        raise ValueError(f"{where} is {_describe(obj)}, expected a pickled torch.nn.Module")
    return state


def flat_state_dict(obj, prefix=""):
    """The state dict of a pickled module record: its `_parameters`, persistent `_buffers` and `_modules`, recursively."""
    state = _module_state(obj, prefix.rstrip(".") or "the network")
    non_persistent = state.get("_non_persistent_buffers_set", set())
    tensors = {**state["_parameters"], **{k: v for k, v in state["_buffers"].items() if k not in non_persistent}}
    out = {}
    for name, tensor in tensors.items():
        if tensor is None:
            continue
        if not isinstance(tensor, torch.Tensor):
            raise ValueError(f"{prefix}{name} is {type(tensor).__name__}, expected a tensor")
        out[prefix + name] = tensor
    for name, child in state["_modules"].items():
        if child is not None:
            out.update(flat_state_dict(child, f"{prefix}{name}."))
    return out


def load_edm(path, key="ema"):
    """The EDMPrecond network stored under `key` of an NVlabs EDM pickle, as this project's module: eval mode, frozen.

    The constructor arguments recorded in the pickle are kept as `module.edm_init_kwargs`.
    """
    data = read_edm_pickle(path)
    if not isinstance(data, dict):
        raise TeacherError(f"{path}: not an EDM network pickle: it holds {_describe(data)}, "
                           f"expected a dict with the network under {key!r}")
    if key not in data:
        raise TeacherError(f"{path}: not an EDM network pickle: no entry {key!r}; entries present: "
                           f"{sorted(map(str, data))}")
    net = data[key]
    if not isinstance(net, PersistentObject) or net.class_name != "EDMPrecond":
        raise TeacherError(f"{path}: not an EDM network pickle: entry {key!r} is {_describe(net)}, "
                           f"expected a persistent EDMPrecond")
    init_args, init_kwargs = net.state.get("_init_args", ()), net.state.get("_init_kwargs")
    if init_args or not isinstance(init_kwargs, dict):
        raise TeacherError(f"{path}: EDMPrecond in {key!r} records constructor arguments {init_args!r}, "
                           f"{init_kwargs!r}; expected keyword arguments only")
    try:
        module = build_edm_network(**init_kwargs)
    except TypeError as e:
        raise TeacherError(f"{path}: EDMPrecond arguments {init_kwargs} are not supported by build_edm_network: "
                           f"{e}") from e
    try:
        state = flat_state_dict(net)
    except ValueError as e:
        raise TeacherError(f"{path}: entry {key!r}: {e}") from None
    check_finite(state, f"{path} (entry {key!r})")
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise TeacherError(f"{path}: the weights of entry {key!r} do not fit the network its constructor arguments "
                           f"describe ({' '.join(str(e).split())})") from None
    module.eval().requires_grad_(False)
    module.edm_init_kwargs = dict(init_kwargs)
    return module


def weights_digest(module):
    """sha256 over the state dict in key order: each key, dtype, shape and raw bytes. Names a teacher for caching."""
    h = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        tensor = tensor.detach().cpu().contiguous()
        h.update(f"{name} {tensor.dtype} {tuple(tensor.shape)}\n".encode())
        h.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()
