import io
import os
import pickle

import numpy as np
import pytest

from ctm import safe_pickle
from ctm.safe_pickle import NUMPY_ARRAYS, RefusedPickleError, latin1_bytes, restricted_load

ARRAYS = {**NUMPY_ARRAYS, ("_codecs", "encode"): latin1_bytes}


def load(obj, allowed=ARRAYS, protocol=2):
    return restricted_load(io.BytesIO(pickle.dumps(obj, protocol=protocol)), allowed, "a test file", "plain arrays")


class RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("protocol", [2, 4])  # protocol 5 pickles arrays through _frombuffer, not allowed
def test_plain_arrays_and_bytes_come_back_exactly(protocol):
    data = {"x": np.arange(12, dtype=np.uint8).reshape(3, 4), "b": b"\x00\xff", "n": [1, 2.5, "s"]}
    back = load(data, protocol=protocol)
    assert back["x"].dtype == np.uint8 and back["x"].tolist() == data["x"].tolist()
    assert back["b"] == b"\x00\xff" and back["n"] == [1, 2.5, "s"]


def test_a_global_outside_the_allowlist_is_refused_before_it_runs(tmp_path):
    marker = tmp_path / "ran"
    with pytest.raises(RefusedPickleError, match="refused global 'posix.system': a test file holds only plain arrays"):
        load({"x": RunsCode(marker)})
    assert not marker.exists()


def test_object_arrays_subclasses_and_other_encodings_are_refused():
    with pytest.raises(RefusedPickleError, match="object arrays can hold code"):
        load(np.array([print, 1], dtype=object))
    with pytest.raises(RefusedPickleError, match="subtype"):
        safe_pickle.plain_ndarray(np.matrix, (1,), "u1")
    with pytest.raises(RefusedPickleError, match="only latin1"):
        latin1_bytes("x", "utf-16")


def test_persistent_ids_are_refused():
    class WithId(pickle.Pickler):
        def persistent_id(self, obj):
            return "storage" if obj == "mark" else None

    buffer = io.BytesIO()
    WithId(buffer, protocol=2).dump(["mark"])
    buffer.seek(0)
    with pytest.raises(RefusedPickleError, match="refused persistent id 'storage': a test file uses none"):
        restricted_load(buffer, ARRAYS, "a test file", "plain arrays")


def test_reader_errors_are_refusals_and_their_domain_errors():
    from ctm.teachers import TeacherError
    from ctm.teachers.edm import RefusedPickleError as RefusedTeacher
    from pipeline.datasets import DatasetError, RefusedPickleError as RefusedDataset
    assert issubclass(RefusedTeacher, TeacherError) and issubclass(RefusedTeacher, RefusedPickleError)
    assert issubclass(RefusedDataset, DatasetError) and issubclass(RefusedDataset, RefusedPickleError)
