from __future__ import annotations

import numpy as np
import pytest

from edgefleet.contract.errors import TensorError
from edgefleet.contract.manifest import QuantParams, TensorSpec
from edgefleet.contract.messages import CONTENT_NPY, CONTENT_NPZ
from edgefleet.contract.tensors import (
    decode_npz,
    decode_tensors,
    encode_npy,
    encode_npz,
    from_artifact,
    to_artifact,
)

INT8_NHWC = TensorSpec(
    name="image",
    dtype="int8",
    shape=[1, 8, 8, 1],
    quantization=QuantParams(scale=1 / 255, zero_point=-128),
    float_shape=[None, 1, 8, 8],
    perm=[0, 2, 3, 1],
)


def test_float_form_is_permuted_and_quantized() -> None:
    x = np.random.default_rng(0).random((1, 1, 8, 8), dtype=np.float32)
    q, as_float = to_artifact(INT8_NHWC, x)
    assert as_float and q.dtype == np.int8 and q.shape == (1, 8, 8, 1)
    back = from_artifact(INT8_NHWC, q, as_float=True)
    assert back.shape == (1, 1, 8, 8)
    np.testing.assert_allclose(back, x, atol=1 / 255)


def test_artifact_form_passes_through_unchanged() -> None:
    q = np.zeros((1, 8, 8, 1), np.int8)
    out, as_float = to_artifact(INT8_NHWC, q)
    assert out is q and not as_float


@pytest.mark.parametrize(
    "bad",
    [np.zeros((1, 64), np.float32), np.zeros((1, 1, 8, 8), np.float64), np.zeros((1, 8, 8, 1), np.uint8)],
)
def test_wrong_shape_or_dtype_names_what_is_accepted(bad: np.ndarray) -> None:
    with pytest.raises(
        TensorError, match=r"input 'image': expected int8 \(1,8,8,1\) or float32 \(\?,1,8,8\)"
    ):
        to_artifact(INT8_NHWC, bad)


def test_nan_is_refused() -> None:
    x = np.full((1, 1, 8, 8), np.nan, np.float32)
    with pytest.raises(TensorError, match="NaN"):
        to_artifact(INT8_NHWC, x)


def test_npy_and_npz_decode_and_garbage_is_a_tensor_error() -> None:
    x = np.ones((1, 1, 8, 8), np.float32)
    assert decode_tensors(encode_npy(x), CONTENT_NPY, ["image"])["image"].shape == x.shape
    assert decode_tensors(encode_npz({"image": x}), CONTENT_NPZ, ["image"])["image"].shape == x.shape
    with pytest.raises(TensorError, match="not a valid"):
        decode_tensors(b"\x00garbage", CONTENT_NPY, ["image"])
    with pytest.raises(TensorError, match="missing"):
        decode_tensors(encode_npz({"other": x}), CONTENT_NPZ, ["image"])


def test_pickled_arrays_are_refused() -> None:
    obj = np.array([{"a": 1}], dtype=object)
    import io

    buffer = io.BytesIO()
    np.save(buffer, obj, allow_pickle=True)
    with pytest.raises(TensorError):
        decode_tensors(buffer.getvalue(), CONTENT_NPY, ["image"])


def _npy_header(shape: tuple[int, ...]) -> bytes:
    header = f"{{'descr': '<f4', 'fortran_order': False, 'shape': {shape}, }}".ljust(118) + "\n"
    return b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header.encode()


def test_hostile_tensor_payloads_are_client_errors_and_allocate_nothing() -> None:
    """Each of these used to answer 'internal error' (or, for the negative dimension, be served)."""
    import io
    import zipfile

    def npz(members: dict[str, bytes]) -> bytes:
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w") as archive:
            for name, data in members.items():
                archive.writestr(name, data)
        return buffer.getvalue()

    huge = _npy_header((1_000_000, 1_000_000, 128))  # 512 TB declared, nothing behind it
    cases = {
        "an .npy sent as .npz": (encode_npy(np.zeros((1, 1, 8, 8), np.float32)), CONTENT_NPZ),
        "an .npz member that is not an .npy": (npz({"image.npy": b"not an npy"}), CONTENT_NPZ),
        "a member that is not named .npy": (npz({"image.txt": b"x"}), CONTENT_NPZ),
        "a huge header in an .npz": (npz({"image.npy": huge}), CONTENT_NPZ),
        "a huge header in an .npy": (huge, CONTENT_NPY),
        "a negative dimension": (_npy_header((-1, 1, 8, 8)) + bytes(256), CONTENT_NPY),
    }
    for what, (payload, content_type) in cases.items():
        with pytest.raises(TensorError, match="not a valid"):
            decode_tensors(payload, content_type, ["image"])
            pytest.fail(f"{what} was accepted")
    good = {"image": np.arange(64, dtype=np.float32).reshape(1, 1, 8, 8)}
    assert np.array_equal(decode_tensors(encode_npz(good), CONTENT_NPZ, ["image"])["image"], good["image"])
    reply = decode_npz(encode_npz(good))["image"]
    reply[0, 0, 0, 0] = -1.0  # replies are the caller's to change


def _patched_zip(
    payload: bytes, *, version: int | None = None, method: int | None = None, flags: int = 0
) -> bytes:
    """An .npz with its first member's header fields rewritten (in the local and the central header)."""
    import struct

    data = bytearray(payload)
    for signature, version_at, flags_at, method_at in ((b"PK\x03\x04", 4, 6, 8), (b"PK\x01\x02", 6, 8, 10)):
        at = data.index(signature)
        if version is not None:
            struct.pack_into("<H", data, at + version_at, version)
        if method is not None:
            struct.pack_into("<H", data, at + method_at, method)
        struct.pack_into("<H", data, at + flags_at, struct.unpack_from("<H", data, at + flags_at)[0] | flags)
    return bytes(data)


def test_zips_and_headers_nobody_should_send_are_client_errors_too() -> None:
    """Found by fuzzing (issue 10 item 9): these answered 'internal error: NotImplementedError: ...' and
    similar; a v3 header made the agent try a 32 TiB allocation."""
    good = encode_npz({"image": np.zeros((1, 1, 8, 8), np.float32)})
    v3_huge = (
        b"\x93NUMPY\x03\x00"
        + (76).to_bytes(4, "little")
        + (b"{'descr': '<f4', 'fortran_order': False, 'shape': (137438953472, 1, 8, 8), }".ljust(75) + b"\n")
    )
    broken_header = _npy_header((3, 64)).replace(b"(3, 64)", b"(3, 64, ")
    cases = {
        "zip version 6.6": _patched_zip(good, version=66),
        "an unknown compression method": _patched_zip(good, method=99),
        "an encrypted member": _patched_zip(good, flags=0x1),
        "a v3 header declaring 32 TiB (behind it, 64 bytes)": v3_huge + bytes(64),
        "an unbalanced header": broken_header + bytes(64),
    }
    for what, payload in cases.items():
        with pytest.raises(TensorError, match="not a valid"):
            decode_tensors(payload, None, ["image"])
            pytest.fail(f"{what} was accepted")


def test_nan_in_the_artifacts_own_float_form_is_refused_too() -> None:
    """NaN in gives NaN out, which probation counts against the model: a client must not be able to."""
    fp32 = TensorSpec(name="image", dtype="float32", shape=[None, 1, 8, 8], float_shape=[None, 1, 8, 8])
    with pytest.raises(TensorError, match="NaN or inf"):
        to_artifact(fp32, np.full((1, 1, 8, 8), np.nan, np.float32))
