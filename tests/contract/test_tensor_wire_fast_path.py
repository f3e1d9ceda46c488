"""The hand-written .npz writer and the cached-header .npy reader of contract/tensors.py give what numpy's own
np.savez/np.load give, and refuse what np.load refuses."""

from __future__ import annotations

import io
import zipfile

import numpy as np
import pytest

from edgefleet.contract.errors import TensorError
from edgefleet.contract.messages import CONTENT_NPY
from edgefleet.contract.tensors import decode_npz, decode_tensors, encode_npz

ARRAYS = {
    "f32": np.random.default_rng(0).random((2, 10), dtype=np.float32),
    "big_endian": np.arange(12, dtype=">i4").reshape(3, 4),
    "fortran": np.asfortranarray(np.random.default_rng(1).random((3, 5))),
    "empty": np.zeros((0, 3), np.int8),
    "scalar": np.array(3.5),
    "bools": np.array([True, False, True]),
    "complex": np.array([1 + 2j], np.complex64),
    "text": np.array(["ab", "c"]),
    "record": np.zeros(2, dtype=[("x", "<i4"), ("y", "<f4")]),
}


def npy(array: np.ndarray, version: tuple[int, int] | None = None) -> bytes:
    buffer = io.BytesIO()
    np.lib.format.write_array(buffer, array, version=version, allow_pickle=False)
    return buffer.getvalue()


def test_encode_npz_is_a_valid_zip_that_numpy_reads_back() -> None:
    for _ in range(2):  # the second round uses the cached .npy headers
        payload = encode_npz(ARRAYS)
        with zipfile.ZipFile(io.BytesIO(payload)) as archive:
            assert archive.testzip() is None
            assert archive.namelist() == [f"{name}.npy" for name in ARRAYS]
        with np.load(io.BytesIO(payload), allow_pickle=False) as loaded:
            for name, array in ARRAYS.items():
                expected = np.ascontiguousarray(array)  # what np.savez was given before
                assert loaded[name].dtype == expected.dtype
                np.testing.assert_array_equal(loaded[name], expected)
        assert set(decode_npz(payload)) == set(ARRAYS)


@pytest.mark.parametrize("name", list(ARRAYS))
@pytest.mark.parametrize("version", [(1, 0), (2, 0), (3, 0)])
def test_npy_decode_matches_np_load(name: str, version: tuple[int, int]) -> None:
    payload = npy(ARRAYS[name], version)
    for _ in range(2):  # parsed, then from the header cache
        got = decode_tensors(payload, CONTENT_NPY, ["x"])["x"]
        expected = np.load(io.BytesIO(payload), allow_pickle=False)
        assert got.dtype == expected.dtype and got.shape == expected.shape
        np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"\x93NUMPY",
        b"\x93NUMPY\x01\x00\xff\xff{",  # header longer than the payload
        b"\x93NUMPY\x09\x00\x10\x00" + b" " * 16,  # unknown format version
        npy(np.arange(10, dtype=np.int32))[:-1],  # data one byte short
    ],
)
def test_bad_npy_is_a_tensor_error(payload: bytes) -> None:
    with pytest.raises(TensorError, match="not a valid"):
        decode_tensors(payload, CONTENT_NPY, ["x"])


def test_object_arrays_are_refused_even_with_a_cached_layout_of_the_same_shape() -> None:
    decode_tensors(npy(np.zeros(1, np.int64)), CONTENT_NPY, ["x"])
    buffer = io.BytesIO()
    np.save(buffer, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(TensorError, match="not a valid"):
        decode_tensors(buffer.getvalue(), CONTENT_NPY, ["x"])
