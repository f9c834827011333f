"""Unpickling that never runs code from the file: every global a pickle names is looked up in the reader's allowlist,
which maps it to a plain stand-in, and anything else is refused before it is called.

    data = restricted_load(file, ALLOWED, "an EDM network pickle", "tensors, numbers and NVlabs persistence records")

Readers of particular formats (EDM network pickles, CIFAR-10 batches) raise their own subclass of RefusedPickleError
that is also their domain error (TeacherError, DatasetError), so a stage reports a refused file as bad input.
"""

import pickle

import numpy as np


class RefusedPickleError(pickle.UnpicklingError):
    """The pickle names something outside the reader's allowlist; nothing it names has been run."""


def latin1_bytes(text, encoding):
    """Stands in for `_codecs.encode`, which pickle protocol 2 written by Python 3 uses for bytes."""
    if encoding != "latin1" or not isinstance(text, str):
        raise RefusedPickleError(f"_codecs.encode with encoding {encoding!r} refused: only latin1 bytes are read")
    return text.encode("latin1")


def plain_dtype(spec, align=False, copy=False):
    """Stands in for `numpy.dtype`, refusing object dtypes (an object array can hold anything, code included)."""
    dtype = np.dtype(spec, align=bool(align), copy=bool(copy))
    if dtype.hasobject:
        raise RefusedPickleError(f"numpy dtype {dtype!r} refused: object arrays can hold code")
    return dtype


def plain_ndarray(subtype, shape, dtype):
    """Stands in for numpy's `_reconstruct`: an empty plain array, filled by its pickled `__setstate__`."""
    if subtype is not np.ndarray:
        raise RefusedPickleError(f"array subtype {subtype!r} refused: only plain numpy arrays are read")
    return np.ndarray(shape, plain_dtype(dtype))


NUMPY_ARRAYS = {  # the globals a pickled plain numpy array names (numpy 1.x and 2.x module paths)
    ("numpy.core.multiarray", "_reconstruct"): plain_ndarray,
    ("numpy._core.multiarray", "_reconstruct"): plain_ndarray,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): plain_dtype,
}


class RestrictedUnpickler(pickle.Unpickler):
    """A pickle.Unpickler that resolves only the globals of `allowed` ({(module, name): stand-in}) and no persistent
    ids. `what` names the format ("a CIFAR-10 batch"), `holds` what such a file holds, for the refusal message."""

    def __init__(self, file, allowed, what, holds, **kwargs):
        super().__init__(file, **kwargs)
        self.allowed, self.what, self.holds = allowed, what, holds

    def find_class(self, module, name):
        if (module, name) not in self.allowed:
            raise RefusedPickleError(f"refused global '{module}.{name}': {self.what} holds only {self.holds}, so this "
                                     "file is not one and may run code")
        return self.allowed[(module, name)]

    def persistent_load(self, pid):
        raise RefusedPickleError(f"refused persistent id {pid!r}: {self.what} uses none")


def restricted_load(file, allowed, what, holds, **kwargs):
    """The object the open binary `file` pickles, read by RestrictedUnpickler (kwargs: pickle.Unpickler's, such as
    encoding="bytes" for Python 2 pickles)."""
    return RestrictedUnpickler(file, allowed, what, holds, **kwargs).load()
