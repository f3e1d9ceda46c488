"""Fuzzing of what the device agent takes from outside, in-process (no broker, no agent process), looking
for unclear texts: errors that do not say what is wrong in words of this project, that is an exception that
is not an edgefleet.contract.errors.EdgefleetError (or its raw text, or a Python exception name) leaking
into the reason a bundle is rejected with, or into the reply to a request ("internal error: ...").

What is fuzzed:
- bundles (about 620): the reference digits CNN as an fp32 ONNX bundle (profile test-onnx, written by this
  script) and a tiny full-INT8 TFLite model (profile rpi4, LiteRT), signed with a trusted key, with their
  manifests, model files, health samples and references, alternatives, signature records and zip
  structure mutated the way a signer or a broken converter could. Each goes through what the agent does
  with a finished delivery (Deployer._finish: verify and install, load, warm-up, health check, activate);
  the verdict event and the exception behind it are recorded. A bundle that activates is then served a
  float-form and an artifact-form request, and restored as after a restart.
- .npy/.npz inference requests (about 250 written by hand, plus --random N random byte mutations of valid
  ones) through InferenceService.compute, as the MQTT API serves them, against the two valid bundles;
- OIP (HTTP) JSON bodies (about 140 by hand, plus N/10 random ones) through the HTTP API's steps: parse,
  input arrays, requested outputs, compute, response.

Cases run one after another in a worker subprocess: a case that kills the worker (crash) or stalls it for
60 s (hang) is recorded, and a new worker goes on with the next case.

Takes 25 s on this 2-core machine idle with the defaults (7,600 cases), about 65 s while it is busy:

    .venv/bin/python bench/fuzz_agent_inputs.py [--out DIR] [--random 6000] [--seed 0] [--only SUBSTRING]

Writes DIR/results.jsonl (one line per case), DIR/report.md (the summary and every unclear case) and
DIR/worker.log (the agent's own log lines); DIR defaults to a new temporary directory. Prints the cases run
per kind, their outcomes and the table of distinct unclear texts. Exit code 1 when anything unclear was
found (or a worker crashed or hung, or this script failed on a case), 0 otherwise.
"""

from __future__ import annotations

import argparse
import base64
import builtins
import copy
import functools
import hashlib
import io
import json
import os
import random
import re
import resource
import shutil
import struct
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
import zipfile
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import numpy as np

import edgefleet
from edgefleet.agent import oip
from edgefleet.agent.deployment import Deployer
from edgefleet.agent.inference import InferenceService, ModelRunError, RequestError, Unavailable
from edgefleet.agent.model_slot import LoadedModel, ModelSlot
from edgefleet.agent.session import MqttSession
from edgefleet.agent.status import StatusReporter
from edgefleet.agent.store import BundleStore
from edgefleet.contract import topics
from edgefleet.contract.bundle import MANIFEST_NAME, SIGNATURE_NAME
from edgefleet.contract.errors import EdgefleetError, TensorError
from edgefleet.contract.messages import CONTENT_NPY, CONTENT_NPZ, DesiredState
from edgefleet.contract.profiles import PROFILES_PATH_ENV, load_profile
from edgefleet.contract.signing import create_key_pair, load_private_key, load_public_key, sign
from edgefleet.contract.tensors import encode_npz
from edgefleet.mqtt import BrokerAddress

# the tests' signed-bundle helpers (tests/support_bundles.py): the fuzzed ONNX base has their fp32 manifest
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from support_bundles import fp32_manifest

ONNX_PROFILE = "test-onnx"  # written by this script: fp32 ONNX on onnxruntime's CPU provider
OTHER_PROFILE = "other-onnx"  # a second profile, not the device's
LITERT_PROFILE = "rpi4"  # shipped: int8 TFLite on LiteRT, with an onnx-int8 alternative
PROFILE_YAML = """\
name: {name}
description: fuzzing profile, fp32 ONNX
artifact: {{format: onnx, precision: fp32, io_dtype: float32}}
runtime: {{engine: onnxruntime, threads: 1, providers: [{providers}]}}
memory_budget_mb: 256
latency_budget_ms: 50
"""
DEVICE = "fuzz-1"
CASE_TIMEOUT_S = 60  # a case taking longer is a hang: the worker is killed
SRC = Path(edgefleet.__file__).resolve().parent


# -- assets: keys, profiles, model files (made once by the parent) ------------------------------------------


class Paths:
    """Where everything goes, under --out."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.results = out / "results.jsonl"  # one JSON line per case
        self.report = out / "report.md"
        self.log = out / "worker.log"  # what the workers print: the agent's log lines
        self.work = out / "work"  # bundles and agent state of the case running, the progress file
        self.progress = self.work / "progress"  # the index of the case running; "done" at the end
        self.models = self.work / "assets" / "models"
        self.profiles = self.work / "assets" / "profiles"
        self.keys = self.work / "assets" / "keys"


def prepare_assets(paths: Paths) -> None:
    if paths.work.exists():
        shutil.rmtree(paths.work)
    paths.models.mkdir(parents=True)
    create_key_pair(paths.keys)
    paths.profiles.mkdir()
    for name, providers in ((ONNX_PROFILE, "CPUExecutionProvider"), (OTHER_PROFILE, "CUDAExecutionProvider")):
        (paths.profiles / f"{name}.yaml").write_text(PROFILE_YAML.format(name=name, providers=providers))
    shutil.copy(SRC / "reference_models" / "digits_cnn_v1.onnx", paths.models / "digits.onnx")
    (paths.models / "tiny.tflite").write_bytes(pack_tflite(tiny_tflite()))
    for name, data in onnx_variants().items():
        (paths.models / f"{name}.onnx").write_bytes(data)
    for name, data in tflite_variants().items():
        (paths.models / f"{name}.tflite").write_bytes(data)


def onnx_variants() -> dict[str, bytes]:
    """Small ONNX models, each breaking the manifest's promise (image float [N, 1, 8, 8] -> logits float
    [N, 10]) in one way, or loadable by no runtime."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    FLOAT = TensorProto.FLOAT
    node = helper.make_node
    weights_array = np.random.default_rng(7).uniform(0.01, 0.1, size=(64, 10)).astype(np.float32)
    weights = numpy_helper.from_array(weights_array, "W")

    def value(name: str, dims: list[Any], elem: int = FLOAT) -> Any:
        return helper.make_tensor_value_info(name, elem, dims)

    image, logits = value("image", ["N", 1, 8, 8]), value("logits", ["N", 10])

    def model(
        nodes: list[Any],
        inputs: list[Any] | None = None,
        outputs: list[Any] | None = None,
        inits: list[Any] | None = None,
        opset: int = 17,
        ir: int = 8,
        domain: str | None = None,
    ) -> bytes:
        graph = helper.make_graph(
            nodes,
            "fuzz",
            [image] if inputs is None else inputs,
            [logits] if outputs is None else outputs,
            [weights] if inits is None else inits,
        )
        opsets = [helper.make_opsetid("", opset)] + ([helper.make_opsetid(domain, 1)] if domain else [])
        proto = helper.make_model(graph, opset_imports=opsets)
        proto.ir_version = ir
        return cast(bytes, proto.SerializeToString())

    def dense(cast_input: bool = False, cast_output: int | None = None) -> list[Any]:
        """Flatten + MatMul; the input cast to float first, the output cast to another type after."""
        nodes = [node("Cast", ["image"], ["f"], to=FLOAT)] if cast_input else []
        nodes.append(node("Flatten", ["f" if cast_input else "image"], ["flat"], axis=1))
        nodes.append(node("MatMul", ["flat", "W"], ["logits" if cast_output is None else "m"]))
        if cast_output is not None:
            nodes.append(node("Cast", ["m"], ["logits"], to=cast_output))
        return nodes

    def external_weights(location: str) -> Any:
        tensor = TensorProto(name="W", data_type=FLOAT, dims=[64, 10], data_location=TensorProto.EXTERNAL)
        for key, text in (("location", location), ("offset", "0"), ("length", str(64 * 10 * 4))):
            tensor.external_data.add(key=key, value=text)
        return tensor

    flatten = node("Flatten", ["image"], ["flat"], axis=1)
    optional_image = helper.make_value_info(
        "image",
        helper.make_optional_type_proto(helper.make_tensor_type_proto(FLOAT, ["N", 1, 8, 8])),
    )
    huge = TensorProto(name="W", data_type=FLOAT, dims=[2**20, 2**20], raw_data=b"\0" * 16)
    zeros = numpy_helper.from_array(np.zeros((1, 10), np.float32))
    return {
        "ok_matmul": model(dense()),
        "custom_op": model(
            [node("EvilOp", ["image"], ["logits"], domain="com.evil")], inits=[], domain="com.evil"
        ),
        "opset99": model(dense(), opset=99),
        "ir99": model(dense(), ir=99),
        "unknown_std_op": model([node("NoSuchOp", ["image"], ["logits"])], inits=[]),
        "extdata_missing": model(dense(), inits=[external_weights("weights.bin")]),
        "extdata_escape": model(dense(), inits=[external_weights("../../../../../../../etc/hostname")]),
        "extdata_abs": model(dense(), inits=[external_weights("/etc/passwd")]),
        "int64_input": model(
            dense(cast_input=True), inputs=[value("image", ["N", 1, 8, 8], TensorProto.INT64)]
        ),
        "int8_io": model(
            dense(cast_input=True, cast_output=TensorProto.INT8),
            inputs=[value("image", ["N", 1, 8, 8], TensorProto.INT8)],
            outputs=[value("logits", ["N", 10], TensorProto.INT8)],
        ),
        "string_output": model(
            dense(cast_output=TensorProto.STRING), outputs=[value("logits", ["N", 10], TensorProto.STRING)]
        ),
        "bool_output": model(
            dense(cast_output=TensorProto.BOOL), outputs=[value("logits", ["N", 10], TensorProto.BOOL)]
        ),
        "float64_output": model(
            dense(cast_output=TensorProto.DOUBLE), outputs=[value("logits", ["N", 10], TensorProto.DOUBLE)]
        ),
        "sequence_output": model(
            [flatten, node("MatMul", ["flat", "W"], ["m"]), node("SequenceConstruct", ["m"], ["logits"])],
            outputs=[helper.make_tensor_sequence_value_info("logits", FLOAT, None)],
        ),
        "optional_input": model(
            [
                node("OptionalGetElement", ["image"], ["img"]),
                node("Flatten", ["img"], ["flat"], axis=1),
                node("MatMul", ["flat", "W"], ["logits"]),
            ],
            inputs=[optional_image],
        ),
        "two_inputs": model(
            [flatten, node("MatMul", ["flat", "W"], ["m"]), node("Add", ["m", "bias"], ["logits"])],
            inputs=[image, value("bias", ["N", 10])],
        ),
        "two_outputs": model(
            [*dense(), node("Identity", ["logits"], ["copy"])], outputs=[logits, value("copy", ["N", 10])]
        ),
        "fixed_batch1": model(
            dense(), inputs=[value("image", [1, 1, 8, 8])], outputs=[value("logits", [1, 10])]
        ),
        "renamed_io": model(
            [node("Flatten", ["in0"], ["flat"], axis=1), node("MatMul", ["flat", "W"], ["out0"])],
            inputs=[value("in0", ["N", 1, 8, 8])],
            outputs=[value("out0", ["N", 10])],
        ),
        "output_5": model(
            [flatten, node("MatMul", ["flat", "W5"], ["logits"])],
            outputs=[value("logits", ["N", 5])],
            inits=[numpy_helper.from_array(weights_array[:, :5].copy(), "W5")],
        ),
        "scalar_output": model(
            [*dense(), node("ReduceSum", ["logits"], ["s"], keepdims=0)], outputs=[value("s", [])]
        ),
        "nan_model": model(  # sqrt of negative numbers: NaN outputs
            [
                flatten,
                node("MatMul", ["flat", "W"], ["m"]),
                node("Add", ["m", "one"], ["m1"]),
                node("Sqrt", ["m1"], ["logits"]),
            ],
            inits=[
                numpy_helper.from_array(-weights_array, "W"),
                numpy_helper.from_array(np.array([-1.0], np.float32), "one"),
            ],
        ),
        "runtime_reshape_fail": model(
            [
                node("Reshape", ["image", "shape"], ["r"]),
                node("Flatten", ["r"], ["flat"], axis=1),
                node("MatMul", ["flat", "W"], ["logits"]),
            ],
            inits=[weights, numpy_helper.from_array(np.array([3, -1], np.int64), "shape")],
        ),
        "no_nodes_identity": model(
            [node("Identity", ["image"], ["logits"])], outputs=[value("logits", ["N", 1, 8, 8])], inits=[]
        ),
        "no_outputs": model(dense(), outputs=[]),
        "no_inputs": model(
            [node("Constant", [], ["logits"], value=zeros)],
            inputs=[],
            outputs=[value("logits", [1, 10])],
            inits=[],
        ),
        "untyped_input": model(dense(), inputs=[helper.make_value_info("image", onnx.TypeProto())]),
        "initializer_dims_lie": model(dense(), inits=[huge]),
    }


def tiny_tflite() -> Any:
    """A full-INT8 TFLite model (schema.ModelT) built from the flatbuffer schema: one FULLY_CONNECTED layer,
    x int8 [N, 64] (scale 0.05, zero point -3) -> y int8 [N, 10] (scale 0.2, zero point 4)."""
    from ai_edge_litert import schema_py_generated as schema

    rng = np.random.default_rng(0)
    weights = rng.integers(-127, 128, size=(10, 64), dtype=np.int8)
    bias = rng.integers(-500, 500, size=10).astype(np.int32)

    def tensor(name: str, shape: list[int], dtype: int, buffer: int, scale: float, zero_point: int) -> Any:
        t = schema.TensorT()
        t.name, t.shape, t.shapeSignature = name, [1 if d < 0 else d for d in shape], shape
        t.type, t.buffer = dtype, buffer
        t.quantization = schema.QuantizationParametersT()
        t.quantization.scale, t.quantization.zeroPoint = [scale], [zero_point]
        return t

    def buffer(data: bytes | None = None) -> Any:
        b = schema.BufferT()
        if data is not None:
            b.data = list(data)
        return b

    op = schema.OperatorT()
    op.opcodeIndex, op.inputs, op.outputs = 0, [0, 1, 2], [3]
    op.builtinOptionsType = schema.BuiltinOptions.FullyConnectedOptions
    op.builtinOptions = schema.FullyConnectedOptionsT()
    subgraph = schema.SubGraphT()
    subgraph.tensors = [
        tensor("x", [-1, 64], schema.TensorType.INT8, 1, 0.05, -3),
        tensor("w", [10, 64], schema.TensorType.INT8, 2, 0.01, 0),
        tensor("b", [10], schema.TensorType.INT32, 3, 0.05 * 0.01, 0),
        tensor("y", [-1, 10], schema.TensorType.INT8, 4, 0.2, 4),
    ]
    subgraph.inputs, subgraph.outputs, subgraph.operators, subgraph.name = [0], [3], [op], "main"
    code = schema.OperatorCodeT()
    code.builtinCode = code.deprecatedBuiltinCode = schema.BuiltinOperator.FULLY_CONNECTED
    code.version = 4
    model = schema.ModelT()
    model.version, model.operatorCodes, model.subgraphs = 3, [code], [subgraph]
    model.description = "edgefleet fuzz: tiny int8 fully connected"
    model.buffers = [buffer(), buffer(), buffer(weights.tobytes()), buffer(bias.tobytes()), buffer()]
    return model


def pack_tflite(model: Any) -> bytes:
    import flatbuffers

    builder = flatbuffers.Builder(4096)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def tflite_variants() -> dict[str, bytes]:
    """The tiny TFLite model, damaged in one way each."""
    from ai_edge_litert import schema_py_generated as schema

    def custom_op(m: Any) -> None:
        code = m.operatorCodes[0]
        code.builtinCode = code.deprecatedBuiltinCode = schema.BuiltinOperator.CUSTOM
        code.customCode = b"EvilOp"

    def renamed_io(m: Any) -> None:
        m.subgraphs[0].tensors[0].name, m.subgraphs[0].tensors[3].name = "in0", "out0"

    def float_io(m: Any) -> None:
        for t in (m.subgraphs[0].tensors[0], m.subgraphs[0].tensors[3]):
            t.type, t.quantization = schema.TensorType.FLOAT32, None

    def setter(locate: Callable[[Any], Any], **fields: Any) -> Callable[[Any], None]:
        """An edit setting `fields` of the object `locate` finds in the model."""

        def edit(model: Any) -> None:
            target = locate(model)
            for name, value in fields.items():
                setattr(target, name, value)

        return edit

    def set_tensor(index: int, **fields: Any) -> Callable[[Any], None]:
        return setter(lambda m: m.subgraphs[0].tensors[index], **fields)

    def set_subgraph(**fields: Any) -> Callable[[Any], None]:
        return setter(lambda m: m.subgraphs[0], **fields)

    def set_operator(**fields: Any) -> Callable[[Any], None]:
        return setter(lambda m: m.subgraphs[0].operators[0], **fields)

    edits: dict[str, Callable[[Any], None]] = {
        "custom_op": custom_op,
        "opversion99": setter(lambda m: m.operatorCodes[0], version=99),
        "float_io": float_io,
        "bad_input_index": set_subgraph(inputs=[7]),
        "bad_buffer_index": set_tensor(1, buffer=99),
        "wrong_weight_shape": set_tensor(1, shape=[10, 32]),
        "output5": set_tensor(3, shape=[1, 5], shapeSignature=[-1, 5]),
        "string_output": set_tensor(3, type=schema.TensorType.STRING),
        "no_subgraphs": setter(lambda m: m, subgraphs=[]),
        "huge_input": set_tensor(0, shape=[2**31 - 1, 64], shapeSignature=[2**31 - 1, 64]),
        "negative_shape": set_tensor(0, shape=[-5, 64]),
        "renamed_io": renamed_io,
        "bad_opcode_index": set_operator(opcodeIndex=5),
        "op_input_oob": set_operator(inputs=[0, 1, 42]),
    }
    variants = {}
    for name, edit in edits.items():
        model = tiny_tflite()
        edit(model)
        variants[name] = pack_tflite(model)
    return variants


# -- writing hostile bundles, .npy and .npz files -----------------------------------------------------------


@dataclass
class Spec:
    """A bundle to write: the manifest (any JSON a signer likes), the files, and ways to damage the rest.
    The first file is the artifact."""

    manifest: dict[str, Any]
    files: dict[str, bytes]
    edit_listing: Callable[[list[dict[str, Any]]], list[dict[str, Any]]] | None = None  # manifest `files`
    edit_text: Callable[[str], str] | None = None  # the manifest's JSON text, before it is signed
    edit_signature: Callable[[dict[str, str]], object] | None = None  # -> a JSON value, or raw bytes
    edit_zip: Callable[[bytes], bytes] | None = None  # the finished bundle file
    extra_members: list[tuple[str, bytes]] = field(default_factory=list)  # zip members not listed
    compress: dict[str, int] = field(default_factory=dict)  # member -> zipfile compression method


def file_entries(files: dict[str, bytes]) -> list[dict[str, Any]]:
    return [{"path": n, "sha256": hashlib.sha256(d).hexdigest(), "size": len(d)} for n, d in files.items()]


def write_spec(path: Path, spec: Spec, private_key: Any) -> Path:
    """Like contract.bundle.write_bundle, but nothing is validated and anything can be damaged."""
    listing = file_entries(spec.files)
    if spec.edit_listing is not None:
        listing = spec.edit_listing(listing)
    text = json.dumps({**spec.manifest, "files": listing}, indent=2)
    if spec.edit_text is not None:
        text = spec.edit_text(text)
    manifest = text.encode("utf-8", "surrogateescape")
    record: object = sign(private_key, manifest)
    if spec.edit_signature is not None:
        record = spec.edit_signature(cast(dict[str, str], record))
    signature = record if isinstance(record, bytes) else json.dumps(record).encode()
    members = [
        (MANIFEST_NAME, manifest),
        (SIGNATURE_NAME, signature),
        *spec.files.items(),
        *spec.extra_members,
    ]
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # duplicate member names are on purpose
        for name, data in members:
            archive.writestr(name, data, compress_type=spec.compress.get(name, zipfile.ZIP_STORED))
    data = buffer.getvalue()
    if spec.edit_zip is not None:
        data = spec.edit_zip(data)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def npy(array: np.ndarray, allow_pickle: bool = False) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=allow_pickle)
    return buffer.getvalue()


def npz(arrays: dict[str, np.ndarray], compressed: bool = False, pickled: bool = False) -> bytes:
    """`pickled`: members saved with allow_pickle (object arrays)."""
    if pickled:
        return zip_of([(f"{name}.npy", npy(array, allow_pickle=True)) for name, array in arrays.items()])
    buffer = io.BytesIO()
    save = cast(Callable[..., None], np.savez_compressed if compressed else np.savez)
    save(buffer, **arrays)
    return buffer.getvalue()


def npy_header(header: str, data: bytes = b"", version: int = 1) -> bytes:
    """An .npy file with a hand-written header (padded like numpy does)."""
    text = header.encode("latin1" if version < 3 else "utf8")
    prefix = 10 if version == 1 else 12
    text += b" " * ((64 - (prefix + len(text) + 1) % 64) % 64) + b"\n"
    size = struct.pack("<H", len(text)) if version == 1 else struct.pack("<I", len(text))
    return b"\x93NUMPY" + bytes([version, 0]) + size + text + data


def header(shape: str, descr: str = "'<f4'", fortran: str = "False", extra: str = "") -> str:
    """An .npy header dict, its values as Python source."""
    return f"{{'descr': {descr}, 'fortran_order': {fortran}, 'shape': {shape}, {extra}}}"


def zip_of(members: Sequence[tuple[str, bytes]], compress: int = zipfile.ZIP_STORED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=compress) as archive, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # duplicate member names are on purpose
        for name, data in members:
            archive.writestr(name, data)
    return buffer.getvalue()


def patch_member(
    data: bytes,
    name: str,
    *,
    method: int | None = None,
    flag_or: int = 0,
    corrupt: bool = False,
    extract_version: int | None = None,
) -> bytes:
    """A zip with one member's compression method or flag bits patched (local and central headers), its
    central directory's 'version needed to extract' raised, or bytes of its (compressed) data flipped."""
    buf = bytearray(data)
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        info = archive.getinfo(name)
    local = info.header_offset
    name_length, extra_length = struct.unpack_from("<HH", buf, local + 26)
    if corrupt:
        start = local + 30 + name_length + extra_length
        size = max(1, info.compress_size)
        for k in range(max(1, info.compress_size // 8)):
            buf[start + (info.compress_size // 3 + k * 7) % size] ^= 0x5A
    if method is not None:
        struct.pack_into("<H", buf, local + 8, method)
    if flag_or:
        struct.pack_into("<H", buf, local + 6, struct.unpack_from("<H", buf, local + 6)[0] | flag_or)
    pos = 0
    while (pos := bytes(buf).find(b"PK\x01\x02", pos)) >= 0:
        length = struct.unpack_from("<H", buf, pos + 28)[0]
        if bytes(buf[pos + 46 : pos + 46 + length]).decode("utf-8", "replace") == name:
            if method is not None:
                struct.pack_into("<H", buf, pos + 10, method)
            if flag_or:
                struct.pack_into("<H", buf, pos + 8, struct.unpack_from("<H", buf, pos + 8)[0] | flag_or)
            if extract_version is not None:
                buf[pos + 6] = extract_version
        pos += 4
    return bytes(buf)


def break_crc(data: bytes) -> bytes:
    buf = bytearray(data)
    buf[14] ^= 0xFF  # the first local header's CRC
    buf[bytes(buf).find(b"PK\x01\x02") + 16] ^= 0xFF  # and the central directory's
    return bytes(buf)


def patch_end_record(data: bytes, offset: int, fmt: str, value: int) -> bytes:
    buf = bytearray(data)
    struct.pack_into(fmt, buf, bytes(buf).rfind(b"PK\x05\x06") + offset, value)
    return bytes(buf)


def add_zip64_locator(data: bytes) -> bytes:
    end = data.rfind(b"PK\x05\x06")
    return data[:end] + b"PK\x06\x07" + struct.pack("<LQL", 0, 0, 1) + data[end:]


COMPRESSIONS = (("deflate", zipfile.ZIP_DEFLATED), ("bzip2", zipfile.ZIP_BZIP2), ("lzma", zipfile.ZIP_LZMA))
MEMBER_PATCHES: tuple[tuple[str, dict[str, Any]], ...] = (  # patch_member arguments
    ("unsupported compression method 99", {"method": 99}),
    ("encrypted flag", {"flag_or": 0x1}),
    ("'compressed patched data' flag", {"flag_or": 0x20}),
    ("strong-encryption flag", {"flag_or": 0x40}),
    ("'version needed to extract' 6.6", {"extract_version": 66}),
)


def seeded(seed: int, label: str) -> random.Random:
    return random.Random(f"{seed}:{label}")


# -- the two valid bundles every mutation starts from ------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Base:
    kind: str  # "onnx" | "tflite"
    profile: str
    artifact: str
    in_name: str
    out_name: str
    in_shape: tuple[int, ...]  # of one float sample
    out_dtype: str  # of the artifact's output
    manifest: dict[str, Any]
    model: bytes
    models: Path  # the directory of the model variants

    def spec(self, model: bytes | None = None) -> Spec:
        return Spec(copy.deepcopy(self.manifest), {self.artifact: self.model if model is None else model})

    def asset(self, name: str) -> bytes:
        return (self.models / name).read_bytes()

    def samples(self, n: int = 3) -> np.ndarray:
        return np.random.default_rng(1).uniform(0, 1, size=(n, *self.in_shape)).astype(np.float32)


def make_bases(paths: Paths) -> tuple[Base, Base]:
    digits = (paths.models / "digits.onnx").read_bytes()
    onnx_manifest = fp32_manifest(ONNX_PROFILE, "1", "digits", len(digits)).model_dump(mode="json")
    tflite_manifest = {
        **copy.deepcopy(onnx_manifest),
        "profile": LITERT_PROFILE,
        "format": "tflite",
        "precision": "int8",
        "artifact": "model.tflite",
        "inputs": [
            {"name": "x", "dtype": "int8", "shape": [None, 64], "float_shape": [None, 64], "perm": None,
             "quantization": {"scale": 0.05, "zero_point": -3}},
        ],
        "outputs": [
            {"name": "y", "dtype": "int8", "shape": [None, 10], "float_shape": [None, 10], "perm": None,
             "quantization": {"scale": 0.2, "zero_point": 4}},
        ],
    }  # fmt: skip
    onnx = Base(
        kind="onnx",
        profile=ONNX_PROFILE,
        artifact="model.onnx",
        in_name="image",
        out_name="logits",
        in_shape=(1, 8, 8),
        out_dtype="float32",
        manifest=onnx_manifest,
        model=digits,
        models=paths.models,
    )
    tflite = Base(
        kind="tflite",
        profile=LITERT_PROFILE,
        artifact="model.tflite",
        in_name="x",
        out_name="y",
        in_shape=(64,),
        out_dtype="int8",
        manifest=tflite_manifest,
        model=(paths.models / "tiny.tflite").read_bytes(),
        models=paths.models,
    )
    return onnx, tflite


# -- cases -------------------------------------------------------------------------------------------------

BundleMutation = Callable[[Base], Spec]


@dataclass(frozen=True, eq=False)
class Case:
    id: str
    kind: str  # "bundle" | "tensor" | "oip"
    what: str
    base: Base
    mutation: BundleMutation | None = None  # bundle
    payload: bytes = b""  # tensor: the request body; oip: the HTTP body
    content_type: str | None = None  # tensor
    header_length: int | None = None  # oip: the Inference-Header-Content-Length header


def all_cases(bases: tuple[Base, Base], random_count: int, seed: int, only: str | None) -> list[Case]:
    cases = (
        bundle_cases(bases, seed)
        + tensor_cases(bases, random_count, seed)
        + oip_cases(bases, random_count // 10, seed)
    )
    return [c for c in cases if not only or only in c.id or only in c.what]


# -- bundle mutations --------------------------------------------------------------------------------------


def edited(edit: Callable[[Spec, Base], object], model: bytes | None = None) -> BundleMutation:
    """The base bundle (with `model` as its artifact, if given), then `edit`ed in place."""

    def build(base: Base) -> Spec:
        spec = base.spec(model)
        edit(spec, base)
        return spec

    return build


def with_model(model: bytes) -> BundleMutation:
    return edited(lambda spec, base: None, model)


def set_field(path: str, value: Any) -> BundleMutation:
    """manifest[path] = value; `path` is dotted, list indices as numbers ("inputs.0.shape")."""

    def edit(spec: Spec, base: Base) -> None:
        *parents, last = (int(k) if k.isdigit() else k for k in path.split("."))
        target: Any = spec.manifest
        for key in parents:
            target = target[key]
        target[last] = value

    return edited(edit)


def and_then(mutation: BundleMutation, edit: Callable[[Spec], object]) -> BundleMutation:
    def build(base: Base) -> Spec:
        spec = mutation(base)
        edit(spec)
        return spec

    return build


def extra_files(files: dict[str, bytes]) -> BundleMutation:
    return edited(lambda spec, base: spec.files.update(files))


def artifact_file(name: str, data: bytes | None = None) -> BundleMutation:
    """The manifest's artifact is `name`, a file of `data` (default: the model); the model stays listed."""

    def edit(spec: Spec, base: Base) -> None:
        spec.files[name] = base.model if data is None else data
        spec.manifest["artifact"] = name

    return edited(edit)


def edit_spec(**fields: Any) -> BundleMutation:
    """Set Spec fields (edit_listing, edit_text, edit_signature, edit_zip, compress, extra_members)."""

    def edit(spec: Spec, base: Base) -> None:
        for name, value in fields.items():
            setattr(spec, name, value)

    return edited(edit)


def with_samples(payload: bytes, name: str = "health_samples.npz", listed: bool = True) -> BundleMutation:
    def edit(spec: Spec, base: Base) -> None:
        if listed:
            spec.files[name] = payload
        spec.manifest["health_samples"] = name

    return edited(edit)


def set_health_checks(
    spec: Spec, base: Base, samples: np.ndarray, reference: bytes | None, min_db: float = 20.0
) -> None:
    spec.files["health_samples.npz"] = npz({base.in_name: samples})
    spec.manifest["health_samples"] = "health_samples.npz"
    if reference is not None:
        spec.files["health_reference.npz"] = reference
        spec.manifest["health_reference"] = {
            "outputs": "health_reference.npz",
            "min_sqnr_db": min_db,
            "host_runtime": "fuzz",
        }


def with_reference(payload: bytes, min_db: float = 20.0, listed: bool = True) -> BundleMutation:
    """Valid health samples and `payload` as their reference outputs (`listed`: in the bundle)."""

    def edit(spec: Spec, base: Base) -> None:
        set_health_checks(spec, base, base.samples(), payload, min_db)
        if not listed:
            del spec.files["health_reference.npz"]

    return edited(edit)


def float_shape_mutation(float_shape: list[Any]) -> BundleMutation:
    """inputs[0].float_shape changed, with health samples of that shape (as far as it is one)."""

    def edit(spec: Spec, base: Base) -> None:
        spec.manifest["inputs"][0]["float_shape"] = float_shape
        shape = [3 if d is None else (d if 0 <= d < 10**6 else 1) for d in float_shape]
        spec.files["health_samples.npz"] = npz({base.in_name: np.zeros(shape, np.float32)})
        spec.manifest["health_samples"] = "health_samples.npz"

    return edited(edit)


def float_health_checks(spec: Spec, base: Base, reference: bool) -> None:
    """Health samples in the input's float form; with `reference`, reference outputs of ones and a
    min_sqnr_db any output passes."""
    shape = tuple(3 if d is None else d for d in spec.manifest["inputs"][0]["float_shape"])
    samples = np.random.default_rng(0).uniform(0, 1, shape).astype(np.float32)
    outputs = npz({base.out_name: np.ones((3, 10), base.out_dtype)}) if reference else None
    set_health_checks(spec, base, samples, outputs, min_db=-1000.0)


def perm_mutation(perm: list[int], where: str, samples: bool, reference: bool = False) -> BundleMutation:
    def edit(spec: Spec, base: Base) -> None:
        tensor = spec.manifest[where][0]
        tensor["perm"] = perm
        if base.kind == "onnx":  # a float form that differs from the artifact's
            tensor["float_shape"] = [None, 8, 8, 1] if where == "inputs" else [None, 10]
        if samples:
            float_health_checks(spec, base, reference)

    return edited(edit)


def quantization_mutation(quantization: dict[str, Any], where: str) -> BundleMutation:
    def edit(spec: Spec, base: Base) -> None:
        spec.manifest[where][0]["quantization"] = quantization
        if base.kind == "onnx" and where == "inputs":  # a float32 artifact: make the float form differ
            spec.manifest["inputs"][0].update(float_shape=[None, 8, 8, 1], perm=[0, 3, 1, 2])
        float_health_checks(spec, base, reference=where == "outputs")

    return edited(edit)


def quantization_token_mutation(token: str, where: str) -> BundleMutation:
    """A quantization scale written as a JSON token json.dumps does not write (1e999) or Python's NaN."""
    mutation = quantization_mutation({"scale": 0.123456, "zero_point": 0}, where)
    return and_then(mutation, lambda spec: setattr(spec, "edit_text", lambda t: t.replace("0.123456", token)))


def bit_flips(data: bytes, rng: random.Random, within: int | None = None) -> bytes:
    buf = bytearray(data)
    for _ in range(rng.choice((1, 4, 16))):
        buf[rng.randrange(min(len(buf), within or len(buf)))] ^= 1 << rng.randrange(8)
    return bytes(buf)


def nested(depth: int) -> dict[str, Any]:
    d: dict[str, Any] = {"x": 1}
    for _ in range(depth):
        d = {"a": d}
    return d


def control_mutations(base: Base, seed: int) -> Iterator[tuple[str, BundleMutation]]:
    yield "unmodified bundle (control)", edited(lambda spec, base: None)


def tensor_spec_mutations(base: Base, seed: int) -> Iterator[tuple[str, BundleMutation]]:
    input_shapes = {
        "onnx": [[0, 1, 8, 8], [None, 1, 8, 0], [1, 1, 8, 8], [2, 1, 8, 8], [None, 1, 8], [None, 1, 8, 8, 1],
                 [], [None], [-1, 1, 8, 8], [None, -1, 8, 8], [None, 1, 8, -8], [10**12, 1, 8, 8],
                 [None, 1, 2**31, 2**31], [None, 1, 10**20, 1], [None, 1, 16, 16], [None, 2**63, 8, 8],
                 [None, None, None, None], [None, 1, 8, 8.0]],
        "tflite": [[0, 64], [None, 0], [1, 64], [2, 64], [None], [], [-1, 64], [None, -64], [10**12, 64],
                   [None, 10**20], [None, 32], [None, 64, 1], [None, None]],
    }  # fmt: skip
    for shape in input_shapes[base.kind]:
        yield f"inputs[0].shape = {shape}", set_field("inputs.0.shape", shape)
    for shape in (
        [None, 5],
        [None, 10, 1],
        [],
        [0, 10],
        [-1, 10],
        [None, -10],
        [None, None],
        [1, 10],
        [10**12, 10],
    ):
        yield f"outputs[0].shape = {shape}", set_field("outputs.0.shape", shape)
    for dtype in ("float32", "float16", "int8", "uint8", "int32", "int64"):
        yield f"inputs[0].dtype = {dtype}", set_field("inputs.0.dtype", dtype)
        yield f"outputs[0].dtype = {dtype}", set_field("outputs.0.dtype", dtype)
    yield "inputs[0].name not in the model", set_field("inputs.0.name", "nope")
    yield "inputs[0].name empty", set_field("inputs.0.name", "")
    yield "outputs[0].name not in the model", set_field("outputs.0.name", "nope")
    yield "inputs = [] (the model has one)", set_field("inputs", [])
    yield "outputs = [] (the model has one)", set_field("outputs", [])
    yield (
        "inputs listed twice",
        edited(lambda s, b: s.manifest["inputs"].append(dict(s.manifest["inputs"][0]))),
    )
    yield (
        "outputs listed twice",
        edited(lambda s, b: s.manifest["outputs"].append(dict(s.manifest["outputs"][0]))),
    )
    yield (
        "outputs: an extra one not in the model",
        edited(lambda s, b: s.manifest["outputs"].append({**s.manifest["outputs"][0], "name": "extra"})),
    )
    for float_shape in ([None, 64], [None, 8, 8, 1], [0, 1, 8, 8], [-1, 64], [], [10**12, 64]):
        what = f"inputs[0].float_shape = {float_shape} (+ health samples of that shape)"
        yield what, float_shape_mutation(float_shape)
    n = len(base.in_shape) + 1
    perms: tuple[list[int], ...] = (
        [0, 2, 3, 1],
        list(range(n))[:-1],
        [0] * n,
        [5, 6, 7, 8][:n],
        [-1, -2, -3, -4][:n],
        [],
        [*range(n), n],
    )
    for perm in perms:
        yield f"inputs[0].perm = {perm} (health samples in float form)", perm_mutation(perm, "inputs", True)
        yield f"inputs[0].perm = {perm} (no health samples)", perm_mutation(perm, "inputs", False)
        yield f"outputs[0].perm = {perm} (+ health reference)", perm_mutation(perm, "outputs", True, True)
        yield f"outputs[0].perm = {perm} (no reference)", perm_mutation(perm, "outputs", False)
    quantizations = (
        {"scale": 1.0, "zero_point": 0},
        {"scale": 1e-320, "zero_point": 0},
        {"scale": 1e308, "zero_point": 0},
        {"scale": 0.05, "zero_point": 10**30},
        {"scale": 0.05, "zero_point": 10**400},
        {"scale": 0.05, "zero_point": -(10**400)},
        {"scale": 0, "zero_point": 0},
        {"scale": -1.0, "zero_point": 0},
    )
    health_checks = {"inputs": "+ float health samples", "outputs": "+ health reference"}
    for q in quantizations:
        for side, health in health_checks.items():
            yield f"{side}[0].quantization = {str(q)[:60]} ({health})", quantization_mutation(q, side)
    for token in ("Infinity", "NaN", "-Infinity", "1e999"):
        for side in ("inputs", "outputs"):
            mutation = quantization_token_mutation(token, side)
            yield f"{side}[0].quantization.scale = {token} (JSON token)", mutation


def artifact_mutations(base: Base, seed: int) -> Iterator[tuple[str, BundleMutation]]:
    if base.kind == "onnx":
        yield "format tflite, the artifact is the ONNX model", set_field("format", "tflite")
        yield "format onnx, the artifact is a TFLite model", with_model(base.asset("tiny.tflite"))
        yield "precision int8 on an fp32 model", set_field("precision", "int8")
        yield "precision fp16 on an fp32 model", set_field("precision", "fp16")
    else:
        yield "format onnx, the artifact is the TFLite model", set_field("format", "onnx")
        yield "format tflite, the artifact is an ONNX model", with_model(base.asset("digits.onnx"))
    yield "artifact = an .npz of samples", artifact_file("samples.npz", npz({base.in_name: base.samples()}))
    yield "artifact = a text file", artifact_file("README.txt", b"hello, I am not a model\n")
    yield "artifact = an empty file", artifact_file("empty.bin", b"")
    yield "artifact = an .npy", artifact_file("weights.npy", npy(np.zeros((64, 10), np.float32)))
    yield (
        "artifact = a zip file",
        artifact_file("nested.zip", zip_of([("model.onnx", base.asset("digits.onnx"))])),
    )
    yield (
        "artifact in a sub directory",
        edited(
            lambda s, b: (
                s.files.update({"a/b/c/m": s.files.pop(b.artifact)}),
                s.manifest.update(artifact="a/b/c/m"),
            )
        ),
    )
    yield "artifact = '.' (a member named '.')", artifact_file(".")
    yield "artifact = 'x/' (a directory entry)", artifact_file("x/", b"")
    yield "artifact './model' listed next to 'model'", artifact_file("./" + base.artifact)
    yield (
        "extra file './model' (junk) next to 'model' (same path on disk)",
        extra_files({"./" + base.artifact: b"junk"}),
    )
    yield "extra file './manifest.json' (junk)", extra_files({"./manifest.json": b"junk"})
    yield "artifact with a 300-char file name", artifact_file("m" * 300)
    yield "files 'a' and 'a/b' (a file and a directory of one name)", extra_files({"a": b"x", "a/b": b"y"})
    yield "artifact named with a NUL byte", artifact_file("mod\x00el")
    yield "artifact named with a non-ASCII character", artifact_file("m\xff.bin")


def model_file_mutations(base: Base, seed: int) -> Iterator[tuple[str, BundleMutation]]:
    yield "model = 4 KiB of random bytes", with_model(seeded(seed, f"junk-{base.kind}").randbytes(4096))
    yield "model = empty file", with_model(b"")
    yield "model = 200 zero bytes", with_model(b"\0" * 200)
    for fraction in (0.01, 0.1, 0.5, 0.9, 0.999):
        yield f"model truncated to {fraction:.1%}", with_model(base.model[: int(len(base.model) * fraction)])
    # the TFLite file's flatbuffer tables are in its first bytes, its weights after them
    within = None if base.kind == "onnx" else 400
    for i in range(12 if base.kind == "onnx" else 24):
        flipped = bit_flips(base.model, seeded(seed, f"flips-{base.kind}-{i}"), within)
        yield f"model with random bit flips #{i}", with_model(flipped)


def onnx_model_mutations(base: Base, seed: int) -> Iterator[tuple[str, BundleMutation]]:
    if base.kind != "onnx":
        return
    for path in sorted(base.models.glob("*.onnx")):
        if path.stem != "digits":
            yield (
                f"ONNX model '{path.stem}' (manifest: image [?,1,8,8] -> logits [?,10])",
                with_model(path.read_bytes()),
            )
    yield (
        "ONNX 'int64_input' with manifest dtype int64",
        edited(lambda s, b: s.manifest["inputs"][0].update(dtype="int64"), base.asset("int64_input.onnx")),
    )

    def int8_io(spec: Spec, base: Base) -> None:
        spec.manifest["inputs"][0].update(dtype="int8")
        spec.manifest["outputs"][0].update(dtype="int8")
        spec.files["hs.npz"] = npz({"image": base.samples()})
        spec.manifest["health_samples"] = "hs.npz"

    yield (
        "ONNX 'int8_io' + int8 manifest, float health samples (no quantization)",
        edited(int8_io, base.asset("int8_io.onnx")),
    )
    for batch in (None, 3):
        bias = {"name": "bias", "dtype": "float32", "shape": [batch, 10], "float_shape": [batch, 10]}
        yield (
            f"ONNX 'two_inputs' + manifest with both inputs, batch {batch}",
            edited(
                functools.partial(lambda s, b, bias: s.manifest["inputs"].append(bias), bias=bias),
                base.asset("two_inputs.onnx"),
            ),
        )


def tflite_model_mutations(base: Base, seed: int) -> Iterator[tuple[str, BundleMutation]]:
    if base.kind != "tflite":
        return
    for path in sorted(base.models.glob("*.tflite")):
        if path.stem != "tiny":
            yield f"TFLite model '{path.stem}'", with_model(path.read_bytes())

    def float_manifest(spec: Spec, base: Base) -> None:
        for tensor in (*spec.manifest["inputs"], *spec.manifest["outputs"]):
            tensor.update(dtype="float32", quantization=None)

    yield "TFLite 'float_io' + float32 manifest", edited(float_manifest, base.asset("float_io.tflite"))


def alternative_mutations(base: Base, seed: int) -> Iterator[tuple[str, BundleMutation]]:
    """rpi4 falls back to an onnx-int8 alternative when its TFLite artifact does not load."""
    if base.kind != "tflite":
        return
    junk = b"not a model"
    digits = base.asset("digits.onnx")
    image = {"name": "image", "dtype": "float32", "shape": [None, 1, 8, 8], "float_shape": [None, 1, 8, 8]}
    logits = {"name": "logits", "dtype": "float32", "shape": [None, 10], "float_shape": [None, 10]}

    def alternative(
        model: bytes, artifact: bytes | None = junk, listed: bool = True, **fields: Any
    ) -> BundleMutation:
        """An alternative of `model` (the artifact replaced by `artifact`)."""
        entry: dict[str, Any] = {
            "kind": "onnx-int8",
            "path": "alt.onnx",
            "format": "onnx",
            "precision": "int8",
        }
        entry.update({"inputs": [image], "outputs": [logits], **fields})

        def edit(spec: Spec, base: Base) -> None:
            if listed:
                spec.files[entry["path"]] = model
            spec.manifest["alternatives"] = [entry]

        return edited(edit, artifact)

    def reference(spec: Spec) -> None:
        set_health_checks(spec, base, base.samples(), npz({base.out_name: np.zeros((3, 10), np.int8)}))

    yield "onnx-int8 alternative (float I/O), the TFLite is junk", alternative(digits)
    yield "onnx-int8 alternative (float I/O), the TFLite is fine", alternative(digits, None)
    yield (
        "onnx-int8 alternative + health reference, the TFLite is junk",
        and_then(alternative(digits), reference),
    )
    yield (
        "onnx-int8 alternative with the TFLite's tensor specs",
        alternative(digits, inputs=base.manifest["inputs"], outputs=base.manifest["outputs"]),
    )
    yield "onnx-int8 alternative = junk", alternative(junk)
    yield "onnx-int8 alternative not in the files", alternative(digits, listed=False)
    yield "onnx-int8 alternative without inputs", alternative(digits, inputs=[])
    yield "onnx-int8 alternative naming the (junk) TFLite file", alternative(junk, path="model.tflite")
    yield (
        "onnx-int8 alternative naming 'manifest.json'",
        alternative(digits, path="manifest.json", listed=False),
    )
    yield "onnx-int8 alternative that is a TFLite (format tflite)", alternative(base.model, format="tflite")
    yield (
        "tflite alternative requiring the edgetpu delegate",
        alternative(base.model, kind="tflite-int8-edgetpu", format="tflite", requires_delegate="edgetpu"),
    )


def health_sample_mutations(base: Base, seed: int) -> Iterator[tuple[str, BundleMutation]]:
    good = base.samples()
    member = f"{base.in_name}.npy"
    valid = npz({base.in_name: good})

    def samples(array: np.ndarray) -> BundleMutation:
        return with_samples(npz({base.in_name: array}))

    yield "health_samples names a file the bundle does not list", with_samples(valid, listed=False)
    yield "health_samples = random bytes", with_samples(seeded(seed, "samples").randbytes(500))
    yield "health_samples = an empty file", with_samples(b"")
    yield "health_samples = an .npy (not .npz)", with_samples(npy(good))
    yield "health_samples keyed by a wrong name", with_samples(npz({"other": good}))
    yield "health_samples with an extra array", with_samples(npz({base.in_name: good, "extra": good}))
    yield "health_samples of a wrong shape", samples(np.zeros((3, 4, 4), np.float32))
    yield "health_samples 1-D", samples(np.zeros((5,), np.float32))
    yield "health_samples 0-d", samples(np.array(1.0, np.float32))
    yield "health_samples: zero samples", samples(np.zeros((0, *base.in_shape), np.float32))
    yield "health_samples: 100 samples", samples(np.zeros((100, *base.in_shape), np.float32))
    dtypes = ("float64", "float16", "int8", "uint8", "int64", "bool", "complex64", ">f4", "U3", "S2", "M8[s]")
    for dtype in dtypes:
        yield f"health_samples of dtype {dtype}", samples(np.zeros((3, *base.in_shape), dtype=dtype))
    yield "health_samples of a structured dtype", samples(np.zeros((3, *base.in_shape), dtype=[("a", "<f4")]))
    yield "health_samples in Fortran order", samples(np.asfortranarray(good))
    yield "health_samples with NaN", samples(np.full((2, *base.in_shape), np.nan, np.float32))
    yield (
        "health_samples of 3e38 (quantization overflows)",
        samples(np.full((2, *base.in_shape), 3e38, np.float32)),
    )
    yield (
        "health_samples of object dtype (pickled)",
        with_samples(npz({base.in_name: np.array([None, 1], dtype=object)}, pickled=True)),
    )
    yield "health_samples compressed", with_samples(npz({base.in_name: good}, compressed=True))
    yield (
        "health_samples: a zip in the member",
        with_samples(zip_of([(member, zip_of([("a.npy", npy(good))]))])),
    )
    yield "health_samples with a directory entry", with_samples(zip_of([("d/", b""), (member, npy(good))]))
    yield "health_samples: member in a sub directory", with_samples(zip_of([(f"d/{member}", npy(good))]))
    yield "health_samples: member not an .npy", with_samples(zip_of([(member, b"hello")]))
    yield "health_samples: member without the .npy suffix", with_samples(zip_of([(base.in_name, npy(good))]))
    yield "health_samples: member named twice", with_samples(zip_of([(member, npy(good))] * 2))
    headers = (
        (header("(137438953472, 1, 8, 8)"), 1),
        (header("(-3, 1, 8, 8)"), 1),
        (header("(137438953472, 1, 8, 8)"), 3),
        (header("(-3, 1, 8, 8)"), 3),
        (header("(0, 18446744073709551616)"), 1),
        (header("(3, 1, 8, 8)", descr="'|O'"), 1),
        (header("(3,)", descr="'zzz'"), 1),
        (header("(3.5,)"), 1),
        ("[1, 2, 3]", 1),
        ("{" * 300 + "}" * 300, 1),
        ("{'descr': '<f4', 'fortran_order': False, 'shape': (3, 64, }", 1),  # tokenize error
    )
    for text, version in headers:
        yield (
            f"health_samples: member header v{version} {text[:70]}",
            with_samples(zip_of([(member, npy_header(text, b"\0" * 64, version))])),
        )
    yield "health_samples: .npy data truncated", with_samples(zip_of([(member, npy(good)[:-7])]))
    for label, patch in MEMBER_PATCHES:
        yield f"health_samples: member with {label}", with_samples(patch_member(valid, member, **patch))
    for label, method in COMPRESSIONS:
        corrupted = patch_member(zip_of([(member, npy(good))], method), member, corrupt=True)
        yield f"health_samples: member {label}-compressed and corrupted", with_samples(corrupted)
    yield "health_samples = the artifact", set_field("health_samples", base.artifact)
    yield "health_samples = 'manifest.json'", with_samples(b"", name="manifest.json", listed=False)
    yield "health_samples in the artifact's form (int8)", samples(np.zeros((3, *base.in_shape), np.int8))


def health_reference_mutations(base: Base, seed: int) -> Iterator[tuple[str, BundleMutation]]:
    def reference(shape: tuple[int, ...], fill: float = 0.0, dtype: str | None = None) -> bytes:
        return npz({base.out_name: np.full(shape, fill, dtype=dtype or base.out_dtype)})

    yield "health_reference names a file not listed", with_reference(reference((3, 10)), listed=False)
    yield (
        "health_reference: a wrong array name",
        with_reference(npz({"other": np.zeros((3, 10), np.float32)})),
    )
    yield "health_reference: fewer samples", with_reference(reference((1, 10)))
    yield "health_reference: a wrong dtype", with_reference(reference((3, 10), dtype="float64"))
    for shape in ((3, 5), (3, 10, 1), (3, 7, 3), (3,), ()):
        yield f"health_reference of shape {shape}", with_reference(reference(shape))
    if base.kind == "onnx":
        yield "health_reference all NaN", with_reference(reference((3, 10), np.nan))
    else:
        yield "health_reference all 100", with_reference(reference((3, 10), 100))
    yield "health_reference min_sqnr_db NaN", with_reference(reference((3, 10), 77), min_db=float("nan"))
    yield "health_reference min_sqnr_db Infinity", with_reference(reference((3, 10), 1), min_db=float("inf"))
    yield (
        "health_reference min_sqnr_db -Infinity",
        with_reference(reference((3, 10), 1), min_db=float("-inf")),
    )
    yield "health_reference = random bytes", with_reference(seeded(seed, "reference").randbytes(300))
    yield "health_reference = an .npy", with_reference(npy(np.zeros((3, 10), np.float32)))
    yield (
        "health_reference of object dtype (pickled)",
        with_reference(npz({base.out_name: np.array([None] * 3, dtype=object)}, pickled=True)),
    )
    yield (
        "health_reference: unsupported compression",
        with_reference(patch_member(reference((3, 10)), f"{base.out_name}.npy", method=99)),
    )
    yield (
        "health_reference of a structured dtype",
        with_reference(npz({base.out_name: np.zeros((3, 10), [("a", "<f4")])})),
    )
    yield (
        "health_reference without health_samples",
        and_then(with_reference(reference((3, 10))), lambda spec: spec.manifest.update(health_samples=None)),
    )
    yield (
        "health_reference.outputs = the artifact",
        and_then(
            with_reference(reference((3, 10))),
            lambda spec: spec.manifest["health_reference"].update(outputs=base.artifact),
        ),
    )


def manifest_field_mutations(base: Base, seed: int) -> Iterator[tuple[str, BundleMutation]]:
    def listing(edit: Callable[[list[dict[str, Any]]], list[dict[str, Any]]]) -> BundleMutation:
        return edit_spec(edit_listing=edit)

    def text(edit: Callable[[str], str]) -> BundleMutation:
        return edit_spec(edit_text=edit)

    yield f"profile = {OTHER_PROFILE}", set_field("profile", OTHER_PROFILE)
    yield "profile = ''", set_field("profile", "")
    yield "schema_version 2", set_field("schema_version", 2)
    yield "name of 128 characters", set_field("name", "a" * 128)
    yield "version '0'", set_field("version", "0")
    yield "created_at in the year 9999", set_field("created_at", "9999-12-31T23:59:59Z")
    yield "created_at in the year 1, no time zone", set_field("created_at", "0001-01-01T00:00:00")
    yield (
        "metrics NaN and negative",
        edited(
            lambda s, b: s.manifest["metrics"].update(host_latency_ms_fp32=float("nan"), size_bytes_fp32=-1)
        ),
    )
    yield (
        "alternatives naming a missing model",
        set_field(
            "alternatives",
            [
                {
                    "kind": "onnx-int8",
                    "path": "nope.onnx",
                    "format": "onnx",
                    "precision": "int8",
                    "inputs": [],
                    "outputs": [],
                }
            ],
        ),
    )
    yield "report nested 150 deep", set_field("report", nested(150))
    yield (
        "report nested 5000 deep",
        text(lambda t: t.replace('"report": null', '"report": ' + '{"a":' * 5000 + "1" + "}" * 5000)),
    )
    yield "target_checks junk", set_field("target_checks", {"whatever": [1, 2, 3]})
    yield "an unknown top-level field of 1 MB", set_field("zzz_unknown", "x" * 1_000_000)
    yield "manifest JSON with a BOM", text(lambda t: "\ufeff" + t)
    yield "manifest is a JSON list", text(lambda t: "[" + t + "]")
    yield (
        "manifest with the key 'artifact' twice",
        text(lambda t: t.replace('"artifact":', '"artifact": "nope", "artifact":', 1)),
    )
    yield (
        "manifest not UTF-8",
        text(lambda t: t.replace('"converter_version": "test"', '"converter_version": "t\udcffest"')),
    )
    yield "files: an entry listed twice", listing(lambda entries: [*entries, entries[0]])
    yield (
        "files: size larger than the file",
        listing(lambda entries: [{**e, "size": e["size"] + 1} for e in entries]),
    )
    yield "files: size 2**62", listing(lambda entries: [{**e, "size": 2**62} for e in entries])
    yield (
        "files: sha256 in upper case",
        listing(lambda entries: [{**e, "sha256": e["sha256"].upper()} for e in entries]),
    )
    yield (
        "files: 'manifest.sig' listed",
        listing(lambda entries: [*entries, {"path": SIGNATURE_NAME, "sha256": "0" * 64, "size": 1}]),
    )
    yield "files: an absolute path", extra_files({"/etc/x": b"1"})
    yield "files: a backslash path", extra_files({"a\\b": b"1"})
    yield "files: 'manifest.json/x'", extra_files({"manifest.json/x": b"1"})
    yield "files: 2000 tiny files", extra_files({f"f/{i}": b"" for i in range(2000)})
    yield "files: 40 nested directories", extra_files({"/".join(["d"] * 40) + "/f": b"1"})


def signature_and_zip_mutations(base: Base, seed: int) -> Iterator[tuple[str, BundleMutation]]:
    def signature(edit: Callable[[dict[str, str]], object]) -> BundleMutation:
        return edit_spec(edit_signature=edit)

    def longer(record: dict[str, str]) -> dict[str, str]:
        raw = base64.b64decode(record["signature"]) + b"\0" * 64
        return {**record, "signature": base64.b64encode(raw).decode()}

    yield "manifest.sig: signature is a number", signature(lambda r: {**r, "signature": 5})
    yield "manifest.sig: signature is a list", signature(lambda r: {**r, "signature": ["a"]})
    yield "manifest.sig: signature is null", signature(lambda r: {**r, "signature": None})
    yield "manifest.sig: signature not ASCII", signature(lambda r: {**r, "signature": "é" * 8})
    yield "manifest.sig: signature 64 bytes longer", signature(longer)
    yield "manifest.sig: key_id is a list", signature(lambda r: {**r, "key_id": [r["key_id"]]})
    yield "manifest.sig: algorithm is a dict", signature(lambda r: {**r, "algorithm": {}})
    yield "manifest.sig is a JSON string", signature(lambda r: "sig")
    yield "manifest.sig is not UTF-8", signature(lambda r: b"\xff\xfe\x00")
    yield "manifest.sig is empty", signature(lambda r: b"")
    yield "manifest.sig nested 100000 deep", signature(lambda r: b"[" * 100000 + b"]" * 100000)
    for member in (base.artifact, MANIFEST_NAME, SIGNATURE_NAME):
        for label, patch in MEMBER_PATCHES:
            patched = functools.partial(patch_member, name=member, **patch)
            yield f"zip: {member} member with {label}", edit_spec(edit_zip=patched)
    for label, method in COMPRESSIONS:
        for member in (base.artifact, SIGNATURE_NAME):
            yield (
                f"zip: {member} {label}-compressed, data corrupted",
                edit_spec(
                    compress={member: method},
                    edit_zip=functools.partial(patch_member, name=member, corrupt=True),
                ),
            )
    yield "zip with an unlisted directory entry", edit_spec(extra_members=[("extra/", b"")])
    yield (
        "zip: the model member twice (second copy junk)",
        edit_spec(extra_members=[(base.artifact, b"junk")]),
    )
    yield "zip: central directory truncated", edit_spec(edit_zip=lambda d: d[:-10])
    yield "zip with junk prepended", edit_spec(edit_zip=lambda d: b"JUNK" * 100 + d)


BUNDLE_GROUPS: tuple[Callable[[Base, int], Iterator[tuple[str, BundleMutation]]], ...] = (
    control_mutations,
    tensor_spec_mutations,
    artifact_mutations,
    model_file_mutations,
    onnx_model_mutations,
    tflite_model_mutations,
    alternative_mutations,
    health_sample_mutations,
    health_reference_mutations,
    manifest_field_mutations,
    signature_and_zip_mutations,
)


def bundle_cases(bases: tuple[Base, Base], seed: int) -> list[Case]:
    cases: list[Case] = []
    for base in bases:
        for group in BUNDLE_GROUPS:
            for what, mutation in group(base, seed):
                cases.append(Case(f"b{len(cases):03d}-{base.kind}", "bundle", what, base, mutation=mutation))
    return cases


# -- payload mutations: .npy/.npz requests and OIP bodies --------------------------------------------------


def tensor_payloads(base: Base) -> Iterator[tuple[str, bytes, str | None]]:
    """Hand-written .npy/.npz requests: (what, payload, content type)."""
    name, member = base.in_name, f"{base.in_name}.npy"
    good = np.zeros((1, *base.in_shape), np.float32)
    shape = ", ".join(str(d) for d in good.shape)
    rest = ", ".join(str(d) for d in base.in_shape)
    yield "valid float .npy (control)", npy(good), CONTENT_NPY
    yield "valid .npz (control)", npz({name: good}), CONTENT_NPZ
    yield "artifact-form int8 .npy", npy(np.zeros((1, *base.in_shape), np.int8)), CONTENT_NPY
    yield ".npy sent as npz", npy(good), CONTENT_NPZ
    yield ".npz sent as npy", npz({name: good}), CONTENT_NPY
    for content_type in ("application/x-npy; charset=binary", "", "text/plain", "application/octet-stream"):
        yield f"content type {content_type!r}", npy(good), content_type
    yield "no content type, payload 'PK' and zeros", b"PK" + b"\0" * 100, None
    yield "no content type, empty payload", b"", None
    yield "npy content type, empty payload", b"", CONTENT_NPY
    yield (
        "object dtype .npy (pickled)",
        npy(np.array([None, 1], dtype=object), allow_pickle=True),
        CONTENT_NPY,
    )
    yield (
        "Fortran order float32",
        npy(np.asfortranarray(np.zeros((2, *base.in_shape), np.float32))),
        CONTENT_NPY,
    )
    yield "structured dtype", npy(np.zeros((1, *base.in_shape), [("a", "<f4")])), CONTENT_NPY
    yield "structured dtype without fields", npy_header(header(f"({shape})", descr="[]")), CONTENT_NPY
    yield "big-endian float32", npy(good.astype(">f4")), CONTENT_NPY
    big_endian_fortran = np.asfortranarray(np.zeros((2, *base.in_shape), ">f4"))
    yield "big-endian float32, Fortran order", npy(big_endian_fortran), CONTENT_NPY
    numeric = ("float64", "float16", "int64", "uint64", "bool", "complex64")
    dtypes = (*numeric, "U2", "S2", "V4", "M8[s]", "m8[s]")
    for dtype in dtypes:
        yield f"dtype {dtype}", npy(np.zeros((1, *base.in_shape), dtype)), CONTENT_NPY
    headers = (
        (header(f"(137438953472, {rest})"), 1),
        (header(f"(137438953472, {rest})"), 3),
        (header(f"(2000000000, {rest})"), 3),
        (header(f"(-1, {rest})"), 1),
        (header(f"(-1, {rest})"), 3),
        (header("(0, 18446744073709551616)"), 1),
        (header("(0, 9223372036854775808)"), 1),
        (header("(4294967296, 4294967296)"), 1),
        (header(f"(1, {rest})", fortran="True"), 2),
        (header("(1,)", descr="'|O'"), 3),
        (header(f"(1000, {rest})", descr="'<V0'"), 1),
        (header(f"(1, {rest})", descr="'S0'"), 1),
        (header("(1,)", descr="[('a', '<f4', (1099511627776,))]"), 1),
        (header("(1,)", fortran="'yes'"), 1),
        (header("(1.5,)"), 1),
        (header("7"), 1),
        (header("(1,)", descr="'zzz'"), 1),
        (header("(1,)", extra="'extra': 1, "), 1),
        ("[1, 2, 3]", 1),
        ("{" * 300 + "}" * 300, 1),
        ("(" * 5000 + ")" * 5000, 1),
        ("x" * 20000, 2),
        (header(f"({shape})"), 0),
        (header(f"({shape})"), 9),
        ("{'descr': '<f4', 'fortran_order': False, 'shape': (1, 64, }", 1),  # tokenize error
    )
    data = b"\0" * (4 * good.size)
    for text, version in headers:
        yield f"npy header v{version}: {text[:80]}", npy_header(text, data, version), CONTENT_NPY
        in_npz = zip_of([(member, npy_header(text, b"\0" * 256, version))])
        yield f"npz member header v{version}: {text[:80]}", in_npz, CONTENT_NPZ
    yield "npy header length 0xFFFF, payload short", b"\x93NUMPY\x01\x00\xff\xff{'descr'", CONTENT_NPY
    yield "npy v2 header length 0xFFFFFFFF", b"\x93NUMPY\x02\x00\xff\xff\xff\xff{'descr'", CONTENT_NPY
    yield "npy magic only", b"\x93NUMPY", CONTENT_NPY
    yield "npy data truncated", npy(good)[:-5], CONTENT_NPY
    yield "npy header truncated", npy(good)[:40], CONTENT_NPY
    yield "0-d array", npy(np.array(1.0, np.float32)), CONTENT_NPY
    yield "batch 0", npy(np.zeros((0, *base.in_shape), np.float32)), CONTENT_NPY
    yield "batch 3", npy(np.zeros((3, *base.in_shape), np.float32)), CONTENT_NPY
    yield "NaN", npy(np.full((1, *base.in_shape), np.nan, np.float32)), CONTENT_NPY
    yield "3e38 (quantization overflows)", npy(np.full((1, *base.in_shape), 3e38, np.float32)), CONTENT_NPY
    yield "wrong shape", npy(np.zeros((1, 3), np.float32)), CONTENT_NPY
    yield "int8 of a wrong shape", npy(np.zeros((1, 3), np.int8)), CONTENT_NPY
    yield "npz member without the .npy suffix", zip_of([(name, npy(good))]), CONTENT_NPZ
    yield "npz: a zip in the member", zip_of([(member, zip_of([("a.npy", npy(good))]))]), CONTENT_NPZ
    yield "npz with a directory entry", zip_of([("d/", b""), (member, npy(good))]), CONTENT_NPZ
    yield "npz member in a sub directory", zip_of([(f"d/{member}", npy(good))]), CONTENT_NPZ
    yield "npz member not an .npy", zip_of([(member, b"hello")]), CONTENT_NPZ
    yield "npz with an extra member", zip_of([(member, npy(good)), ("x.npy", npy(good))]), CONTENT_NPZ
    yield "npz empty archive", zip_of([]), CONTENT_NPZ
    yield "npz member named twice", zip_of([(member, npy(good))] * 2), CONTENT_NPZ
    yield "npz member named '.npy'", zip_of([(".npy", npy(good))]), CONTENT_NPZ
    yield "npz pickled object member", npz({name: np.array([None], dtype=object)}, pickled=True), CONTENT_NPZ
    yield "npz compressed (valid)", npz({name: good}, compressed=True), CONTENT_NPZ
    valid = npz({name: good})
    patches = (
        *MEMBER_PATCHES,
        *((f"compression method {m} on stored data", {"method": m}) for m in (8, 12, 14)),
    )
    for label, patch in patches:
        yield f"npz member with {label}", patch_member(valid, member, **patch), CONTENT_NPZ
    yield (
        "npz member with 'version needed' 6.6, no content type",
        patch_member(valid, member, extract_version=66),
        None,
    )
    for label, method in COMPRESSIONS:
        archive = zip_of([(member, npy(good))], method)
        yield (
            f"npz member {label}-compressed, corrupted",
            patch_member(archive, member, corrupt=True),
            CONTENT_NPZ,
        )
        yield f"npz member {label}-compressed, archive truncated", archive[:-30], CONTENT_NPZ
    bomb = zip_of([(member, b"\0" * (40 * 1024 * 1024))], zipfile.ZIP_DEFLATED)
    yield "npz zip bomb (deflate, 40 MB of zeros)", bomb, CONTENT_NPZ
    yield "npz CRC mismatch", break_crc(valid), CONTENT_NPZ
    renamed = valid.replace(member.encode(), f"{name[:-1]}Z.npy".encode(), 1)
    yield "npz local and central member names differ", renamed, CONTENT_NPZ
    yield (
        "npz central directory offset out of range",
        patch_end_record(valid, 16, "<L", 2**31 - 1),
        CONTENT_NPZ,
    )
    yield "npz spanning disks", patch_end_record(valid, 4, "<H", 3), CONTENT_NPZ
    yield "npz with a junk zip64 locator", add_zip64_locator(valid), CONTENT_NPZ


def mutate_bytes(data: bytes, rng: random.Random) -> tuple[str, bytes]:
    """One random mutation of a valid payload: (what was done, the result)."""
    buf = bytearray(data)
    op = rng.randrange(5)
    if op == 0:
        for _ in range(rng.choice((1, 2, 4, 8))):
            buf[rng.randrange(len(buf))] ^= 1 << rng.randrange(8)
        return "bit flips", bytes(buf)
    if op == 1:
        for _ in range(rng.choice((1, 2, 3))):
            buf[rng.randrange(min(len(buf), 140))] = rng.randrange(256)
        return "header bytes replaced", bytes(buf)
    if op == 2:
        return "truncation", bytes(buf[: rng.randrange(len(buf))])
    if op == 3:
        pos = rng.randrange(len(buf))
        buf[pos:pos] = rng.randbytes(rng.randrange(1, 16))
        return "bytes inserted", bytes(buf)
    substitutions = (
        (b"'<f4'", [b"'>f4'", b"'|O'", b"'<f8'", b"'V'", b"'<c8'", b"'M8'"]),
        (b"False", [b"True", b"None", b"1"]),
        (b"(1, ", [b"(-1, ", b"(2**40, ", b"(99999999999, ", b"(0, ", b"((), "]),
    )
    for old, choices in substitutions:
        new = rng.choice(choices)
        if rng.random() < 0.5:
            data = data.replace(old, new, 1)
    return "header text replaced", data


def tensor_cases(bases: tuple[Base, Base], random_count: int, seed: int) -> list[Case]:
    cases: list[Case] = []
    for base in bases:
        for what, payload, content_type in tensor_payloads(base):
            case_id = f"t{len(cases):03d}-{base.kind}"
            cases.append(Case(case_id, "tensor", what, base, payload=payload, content_type=content_type))
    valid: list[tuple[Base, str, bytes, str | None]] = []
    for base in bases:
        good = np.zeros((1, *base.in_shape), np.float32)
        valid += [
            (base, ".npy", npy(good), CONTENT_NPY),
            (base, ".npz", npz({base.in_name: good}), CONTENT_NPZ),
            (base, "compressed .npz", npz({base.in_name: good}, compressed=True), CONTENT_NPZ),
            (base, "Fortran-order .npy without content type", npy(np.asfortranarray(good)), None),
            (base, ".npz without content type", npz({base.in_name: good}), None),
        ]
    rng = seeded(seed, "tensor")
    for i in range(random_count):
        base, label, data, content_type = valid[i % len(valid)]
        op, payload = mutate_bytes(data, rng)
        what = f"random {op} of a {label}"
        cases.append(
            Case(f"r{i:04d}-{base.kind}", "tensor", what, base, payload=payload, content_type=content_type)
        )
    return cases


def oip_bodies(base: Base) -> Iterator[tuple[str, bytes, int | None]]:
    """Hand-written OIP request bodies: (what, body, Inference-Header-Content-Length)."""
    name = base.in_name
    shape = [1, *base.in_shape]
    n = int(np.prod(shape))

    def request(**fields: Any) -> dict[str, Any]:
        return {"inputs": [{"name": name, "shape": shape, "datatype": "FP32", "data": [0.0] * n, **fields}]}

    def body(**fields: Any) -> bytes:
        return json.dumps(request(**fields)).encode()

    def with_top(**fields: Any) -> bytes:
        return json.dumps({**request(), **fields}).encode()

    yield "valid (control)", body(), None
    yield "valid, INT8 artifact form", body(datatype="INT8", data=[0] * n), None
    for what, text in (
        ("not JSON", "{nope"),
        ("a JSON array", "[]"),
        ("JSON null", "null"),
        ("inputs empty", '{"inputs": []}'),
        ("inputs a dict", '{"inputs": {}}'),
        ("the key 'inputs' twice", '{"inputs": 1, ' + body().decode()[1:]),
        ("nested 100000 deep", "[" * 100000 + "]" * 100000),
    ):
        yield f"body {what}", text.encode(), None
    yield "body not UTF-8", b"\xff\xfe{}", None
    for what, dims in (
        ("floats", [1.5, *shape[1:]]),
        ("negative", [-1, *shape[1:]]),
        ("batch 10**30", [10**30, *shape[1:]]),
        ("batch 2**63", [2**63, *shape[1:]]),
    ):
        yield f"input shape {what}", body(shape=dims), None
    yield "batch 0 with empty data", body(shape=[0, *shape[1:]], data=[]), None
    huge = {
        "name": name,
        "shape": [2**64, *shape[1:]],
        "datatype": "FP32",
        "parameters": {"binary_data_size": 0},
    }
    yield "input shape 2**64 with binary data", json.dumps({"inputs": [huge]}).encode(), None
    for datatype in ("FOO", "BYTES", "fp32"):
        yield f"datatype {datatype}", body(datatype=datatype), None
    float_data: list[tuple[str, object]] = [
        ("null", None),
        ("a number", 1.0),
        ("a string", "abc"),
        ("a dict", {"a": 1}),
        ("dicts", [{}] * n),
        ("strings", ["1.5"] * n),
        ("strings 'nan'", ["nan"] * n),
        ("junk strings", ["x"] * n),
        ("ragged lists", [[1, 2], [3]]),
        ("nested 150 deep", json.loads("[" * 150 + "1" + "]" * 150)),
        ("nested 40 deep, twice", json.loads("[" * 40 + "1,2" + "]" * 40)),
        ("nested 70 deep (numpy has at most 64 dimensions)", json.loads("[" * 70 + "1" + "]" * 70)),
        ("huge ints", [10**400] * n),
        ("1e39", [1e39] * n),
        ("booleans", [True] * n),
        ("mixed types", [1, "a", None, [], {}] + [0] * (n - 5)),
        ("nulls", [None] * n),
        ("NaN", [float("nan")] * n),
        ("Infinity", [float("inf")] * n),
    ]
    for what, data in float_data:
        yield f"FP32 data: {what}", body(data=data), None
    int8_data: list[tuple[str, object]] = [
        ("out of range", [1000] * n),
        ("huge ints", [10**30] * n),
        ("floats", [0.5] * n),
        ("booleans", [True] * n),
        ("strings", ["1"] * n),
        ("-1 and 2**64 - 1", [-1, 2**64 - 1] + [0] * (n - 2)),
        ("ragged lists", [[1, 2], [3]]),
        ("dicts", [{}] * n),
        ("nulls", [None] * n),
        ("nested 70 deep", json.loads("[" * 70 + "1" + "]" * 70)),
    ]
    for what, data in int8_data:
        yield f"INT8 data: {what}", body(datatype="INT8", data=data), None
    yield "an input given twice", json.dumps({"inputs": request()["inputs"] * 2}).encode(), None
    yield "an unknown input", body(name="nope"), None
    yield "an unknown output requested", with_top(outputs=[{"name": "nope"}]), None
    yield (
        "output parameter binary_data 'yes'",
        with_top(outputs=[{"name": base.out_name, "parameters": {"binary_data": "yes"}}]),
        None,
    )
    yield (
        "request parameter binary_data_output a list",
        with_top(parameters={"binary_data_output": [1]}),
        None,
    )
    yield "request parameters a number", with_top(parameters=5), None
    yield "id an int", with_top(id=5), None
    yield "input parameters a list", body(parameters=[1]), None
    for size in (True, -1, 1.5, "10", 2**70, None):
        yield f"binary_data_size {size!r}", body(data=None, parameters={"binary_data_size": size}), None
    head = body(data=None, parameters={"binary_data_size": 4 * n})
    zeros = b"\0" * (4 * n)
    yield "binary data (control)", head + zeros, len(head)
    yield "binary data, header length larger than the body", head, len(head) + 10
    yield "binary data, header length negative", head + zeros, -5
    yield "binary data, header length 0", head + zeros, 0
    yield "binary data, 3 bytes too many", head + zeros + b"\0\0\0", len(head)
    yield "binary data, short", head + b"\0" * 3, len(head)
    odd = body(data=None, parameters={"binary_data_size": 4 * n - 1})
    yield "binary data, size not a multiple of the item size", odd + zeros[:-1], len(odd)
    yield "binary data, NaN", head + np.full(n, np.nan, np.float32).tobytes(), len(head)


def random_oip_body(base: Base, rng: random.Random) -> bytes:
    """A valid body with one to three fields replaced by random JSON values."""
    shape = [1, *base.in_shape]
    datatypes = ["FP32", "INT8", "FP16", "BOOL", "UINT64", "INT64", "FP64"]
    entry = {
        "name": base.in_name,
        "shape": shape,
        "datatype": rng.choice(datatypes),
        "data": [0] * int(np.prod(shape)),
    }
    body: dict[str, Any] = {"inputs": [entry]}
    values = [None, -1, 0, 2**70, -(2**70), 1.5, 1e308, "x", "", [], {}, [[1]], [None], True, [-1], [2**63],
              ["a"], {"binary_data_size": 3}, {"binary_data": True}, [1] * 64, [[0.0] * 64], "FP16", "BOOL",
              "UINT64", "INT64"]  # fmt: skip
    targets = ["inputs.0.name", "inputs.0.shape", "inputs.0.datatype", "inputs.0.data", "inputs.0.parameters",
               "parameters", "outputs", "id", "inputs.0.shape.0", "inputs.0.data.0", "inputs"]  # fmt: skip
    for _ in range(rng.choice((1, 2, 3))):
        *parents, last = (int(k) if k.isdigit() else k for k in rng.choice(targets).split("."))
        value = rng.choice(values)
        target: Any = body
        try:
            for key in parents:
                target = target[key]
            target[last] = value
        except (KeyError, IndexError, TypeError):
            pass  # an earlier replacement took the path away
    return json.dumps(body).encode()


def oip_cases(bases: tuple[Base, Base], random_count: int, seed: int) -> list[Case]:
    cases: list[Case] = []
    for base in bases:
        for what, body, header_length in oip_bodies(base):
            case_id = f"o{len(cases):03d}-{base.kind}"
            cases.append(Case(case_id, "oip", what, base, payload=body, header_length=header_length))
    rng = seeded(seed, "oip")
    for i in range(random_count):
        base = bases[i % 2]
        cases.append(
            Case(
                f"q{i:04d}-{base.kind}",
                "oip",
                f"random OIP body #{i}",
                base,
                payload=random_oip_body(base, rng),
            )
        )
    return cases


# -- the in-process harness (in the worker) ----------------------------------------------------------------


def describe_exception(exc: BaseException) -> dict[str, Any]:
    """Its type, whether it is an EdgefleetError, where it came from, and the deepest exception of its chain
    (__cause__ / __context__) that went through edgefleet's code, if another: what may leak into its text."""

    def type_name(e: BaseException) -> str:
        return f"{type(e).__module__}.{type(e).__qualname__}"

    def origin(e: BaseException) -> str:
        """The last line of edgefleet's own code in its traceback."""
        ours = [f for f in traceback.extract_tb(e.__traceback__) if f.filename.startswith(str(SRC))]
        return f"{Path(ours[-1].filename).relative_to(SRC.parent)}:{ours[-1].lineno}" if ours else "-"

    chain = [exc]
    while (earlier := chain[-1].__cause__ or chain[-1].__context__) is not None and earlier not in chain:
        chain.append(earlier)
    root = next((e for e in reversed(chain) if origin(e) != "-"), exc)
    return {
        "exc_type": type_name(exc),
        "edgefleet_error": isinstance(exc, EdgefleetError),
        "origin": origin(exc),
        "root_cause": f"{type_name(root)} from {origin(root)}" if root is not exc else None,
        "exc_text": str(exc)[:400],
    }


class RecordingDeployer(Deployer):
    """The agent's Deployer, keeping the exception behind each failed deployment."""

    failures: list[BaseException]

    def _fail(self, desired: DesiredState, reason: str, exc: BaseException) -> None:
        self.failures.append(exc)
        super()._fail(desired, reason, exc)


class Agent:
    """The deployment side of an agent on a state directory, as in the agent's unit tests: its MQTT session
    never connects, and what it publishes is kept in a list."""

    def __init__(self, paths: Paths, profile: str, state: Path) -> None:
        self.published: list[tuple[str, bytes]] = []
        self.slot = ModelSlot()
        reporter = StatusReporter(
            DEVICE, profile, self.slot, lambda t, p, q, r: self.published.append((t, p))
        )
        address = BrokerAddress.parse("mqtt://127.0.0.1:1")
        session = MqttSession(
            "fuzz", address, keepalive_s=30, session_expiry_s=0, will=(topics.online(DEVICE), b"")
        )
        public_key = load_public_key(paths.keys / "fleet.pub")
        store = BundleStore(state, public_key, profile, free_bytes=lambda _: 100 * 1024**3)
        self.deployer = RecordingDeployer(store, self.slot, reporter, session, load_profile(profile))
        self.deployer.failures = []
        self.deployer.on_connected()  # events go out at once

    def events(self, *kinds: str) -> list[dict[str, Any]]:
        events = [json.loads(p) for t, p in self.published if t == topics.events(DEVICE)]
        return [e for e in events if e["kind"] in kinds]

    def deliver(self, bundle: Path, deployment_id: str, profile: str) -> None:
        """What the agent does once the last chunk of a bundle arrived."""
        bundle_id = hashlib.sha256(bundle.read_bytes()).hexdigest()
        desired = DesiredState(
            deployment_id=deployment_id, bundle_id=bundle_id, name="digits", version="1", profile=profile
        )
        delivery = SimpleNamespace(bundle_id=bundle_id, desired=desired)
        assembler = SimpleNamespace(finish=lambda: bundle, file_sha256=None)
        self.deployer._finish(cast(Any, delivery), cast(Any, assembler))


def serve_npy(model: LoadedModel, payload: bytes, content_type: str | None) -> dict[str, Any]:
    """InferenceService._handle's outcome for a request: its reply, or the error text it answers with."""
    try:
        InferenceService.compute(model, payload, content_type)
    except (RequestError, TensorError) as exc:
        outcome = "model-run-error" if isinstance(exc, ModelRunError) else "client-error"
        return {"outcome": outcome, "reason": str(exc)[:600], **describe_exception(exc)}
    except Exception as exc:
        reason = f"internal error: {type(exc).__name__}: {exc}"
        return {"outcome": "internal", "reason": reason[:600], **describe_exception(exc)}
    return {"outcome": "ok", "reason": ""}


def serve_oip(model: LoadedModel, body: bytes, header_length: int | None) -> dict[str, Any]:
    """HttpApi._serve's outcome for a request body (the model's name and version matching)."""
    try:
        request = oip.parse_request(body, header_length)
        arrays = oip.input_arrays(request, model.manifest.inputs)
        names = oip.requested_outputs(request, model.manifest.outputs)
        outputs = InferenceService.compute_tensors(model, arrays)
        binary = oip.binary_outputs(request, names)
        oip.infer_response(model.manifest.name, model.version, request.id, outputs, names, binary)
    except (oip.OipError, Unavailable, RequestError, TensorError) as exc:
        outcome = "model-run-error" if isinstance(exc, ModelRunError) else "client-error"
        return {"outcome": outcome, "reason": str(exc)[:600], **describe_exception(exc)}
    except Exception as exc:  # the HTTP API answers 500 "internal error: ..."
        reason = f"internal error: {type(exc).__name__}: {exc}"
        return {"outcome": "internal", "reason": reason[:600], **describe_exception(exc)}
    return {"outcome": "ok", "reason": ""}


class Runner:
    """Runs cases in this process."""

    def __init__(self, paths: Paths) -> None:
        self.paths = paths
        self.private_key = load_private_key(paths.keys / "fleet.key")
        self.serving: dict[str, Agent] = {}  # profile -> an agent serving its valid bundle

    def run(self, case: Case, index: int) -> dict[str, Any]:
        if case.kind == "bundle":
            return self.run_bundle(case, index)
        model = self.served_model(case.base)
        if case.kind == "tensor":
            return serve_npy(model, case.payload, case.content_type)
        return serve_oip(model, case.payload, case.header_length)

    def run_bundle(self, case: Case, index: int) -> dict[str, Any]:
        assert case.mutation is not None
        bundle = write_spec(
            self.paths.work / "bundles" / f"{case.id}.bundle", case.mutation(case.base), self.private_key
        )
        state = self.paths.work / "state" / case.id
        shutil.rmtree(state, ignore_errors=True)
        agent = Agent(self.paths, case.base.profile, state)
        try:
            try:
                agent.deliver(bundle, f"d-{index}", case.base.profile)
            except Exception as exc:  # what escapes the agent's own handlers
                return {
                    "outcome": "uncaught",
                    "reason": f"{type(exc).__name__}: {exc}"[:600],
                    **describe_exception(exc),
                }
            events = agent.events("rejected", "error", "activated")
            if not events:
                return {
                    "outcome": "no verdict",
                    "reason": "no rejected, error or activated event was published",
                }
            outcome = {"rejected": "rejected", "error": "retry", "activated": "activated"}[events[0]["kind"]]
            result: dict[str, Any] = {"outcome": outcome, "reason": events[0]["detail"]}
            if agent.deployer.failures:
                result.update(describe_exception(agent.deployer.failures[-1]))
            if outcome == "activated" and agent.slot.current is not None:
                result["after"] = [
                    *self.probe_serving(agent.slot.current),
                    self.probe_restart(case.base.profile, state),
                ]
            return result
        finally:
            agent.slot.clear()
            shutil.rmtree(state, ignore_errors=True)
            bundle.unlink(missing_ok=True)

    @staticmethod
    def probe_serving(model: LoadedModel) -> list[dict[str, Any]]:
        """Zero-filled requests in the float form and the artifact's form the manifest declares."""
        results = []
        for form, key, float_form in (("float", "float_shape", True), ("artifact", "shape", False)):
            try:
                feeds = {
                    spec.name: np.zeros(
                        [1 if d is None else d for d in getattr(spec, key)],
                        "float32" if float_form else spec.dtype,
                    )
                    for spec in model.manifest.inputs
                }
            except (ValueError, TypeError, MemoryError):
                continue  # no such array (a negative or huge dimension)
            results.append({"probe": f"{form} request", **serve_npy(model, encode_npz(feeds), CONTENT_NPZ)})
        return results

    def probe_restart(self, profile: str, state: Path) -> dict[str, Any]:
        """A new agent on the state the activation left: restore_active (verify again, load)."""
        agent = None
        try:
            agent = Agent(self.paths, profile, state)
            agent.published.clear()
            agent.deployer.restore_active()
            problems = agent.events("error", "rejected")
            if problems:
                return {"probe": "restart", "outcome": "error", "reason": problems[0]["detail"][:600]}
            return {
                "probe": "restart",
                "outcome": "restored" if agent.slot.current else "nothing restored",
                "reason": "",
            }
        except Exception as exc:
            reason = f"{type(exc).__name__}: {exc}"[:600]
            return {"probe": "restart", "outcome": "uncaught", "reason": reason, **describe_exception(exc)}
        finally:
            if agent is not None:
                agent.slot.clear()

    def served_model(self, base: Base) -> LoadedModel:
        if base.profile not in self.serving:
            bundle = write_spec(
                self.paths.work / "bundles" / f"valid-{base.kind}.bundle", base.spec(), self.private_key
            )
            agent = Agent(self.paths, base.profile, self.paths.work / "state" / f"serving-{base.kind}")
            agent.deliver(bundle, "d-serving", base.profile)
            if agent.slot.current is None:
                raise RuntimeError(
                    f"the valid {base.kind} bundle did not activate: {agent.events('rejected', 'error')}"
                )
            self.serving[base.profile] = agent
        model = self.serving[base.profile].slot.current
        assert model is not None
        return model


def memory_limit() -> int:
    """The worker's address-space limit: a runaway allocation fails instead of swapping the machine."""
    physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return min(12 * 1024**3, max(physical // 2, 4 * 1024**3))


def worker(paths: Paths, start: int, random_count: int, seed: int, only: str | None) -> None:
    """Run the cases from `start` on, appending one JSON line each to the results; the index of the case
    running is in the progress file ("done" at the end)."""
    warnings.simplefilter("ignore")
    resource.setrlimit(resource.RLIMIT_AS, (memory_limit(), memory_limit()))
    os.environ[PROFILES_PATH_ENV] = str(paths.profiles)
    bases = make_bases(paths)
    cases = all_cases(bases, random_count, seed, only)
    runner = Runner(paths)
    with paths.results.open("a") as out:
        for index in range(start, len(cases)):
            case = cases[index]
            paths.progress.write_text(str(index))
            started = time.perf_counter()
            try:
                result = runner.run(case, index)
            except Exception as exc:  # a bug of this script: recorded as such
                result = {"outcome": "fuzzer error", "reason": f"{type(exc).__name__}: {exc}"[:600],
                          "traceback": traceback.format_exc()[-2000:]}  # fmt: skip
            record = {
                "index": index,
                **case_fields(case),
                "ms": round((time.perf_counter() - started) * 1000, 1),
                **result,
            }
            out.write(json.dumps(record, default=str) + "\n")
            out.flush()
    paths.progress.write_text("done")


def case_fields(case: Case) -> dict[str, Any]:
    return {"id": case.id, "kind": case.kind, "profile": case.base.profile, "what": case.what}


# -- the parent: a worker at a time, a new one after a crash or a hang -------------------------------------


def run_cases(paths: Paths, cases: list[Case], random_count: int, seed: int, only: str | None) -> None:
    paths.results.unlink(missing_ok=True)
    start = 0
    with paths.log.open("wb") as log:
        while start < len(cases):
            paths.progress.write_text("starting")
            command = [sys.executable, __file__, "--worker", str(start), "--out", str(paths.out),
                       "--random", str(random_count), "--seed", str(seed)]  # fmt: skip
            if only:
                command += ["--only", only]
            proc = subprocess.Popen(command, stdout=log, stderr=log)
            hung = False
            last, last_change = paths.progress.read_text(), time.monotonic()
            while proc.poll() is None:
                time.sleep(0.05)
                now = paths.progress.read_text()
                if now != last:
                    last, last_change = now, time.monotonic()
                elif time.monotonic() - last_change > CASE_TIMEOUT_S:
                    hung = True
                    proc.kill()  # the worker this function started, by its own handle
                    proc.wait()
            progress = paths.progress.read_text()
            if progress == "done":
                return
            if progress == "starting":
                raise SystemExit(f"the worker did not start (exit code {proc.returncode}); see {paths.log}")
            index = int(progress)
            record = {"index": index, **case_fields(cases[index]), "outcome": "hang" if hung else "crash",
                      "reason": f"worker exit code {proc.returncode}"}  # fmt: skip
            with paths.results.open("a") as out:
                out.write(json.dumps(record) + "\n")
            start = index + 1


# -- reporting ----------------------------------------------------------------------------------------------

PYTHON_EXCEPTIONS = sorted(
    {n for n, v in vars(builtins).items() if isinstance(v, type) and issubclass(v, BaseException)}
    | {
        "BadZipFile",
        "LZMAError",
        "AxisError",
        "UnpicklingError",
        "JSONDecodeError",
        "ValidationError",
        "TokenError",
    }
)
PYTHON_EXCEPTION_NAME = re.compile(r"\b(" + "|".join(PYTHON_EXCEPTIONS) + r")\b")
ALWAYS_UNCLEAR = ("crash", "hang", "uncaught", "no verdict", "fuzzer error")
SHOWN = ("rejected", "retry", "error", "client-error", "model-run-error")  # outcomes with a text for the user


def why_unclear(result: dict[str, Any]) -> str | None:
    """Why the outcome of a case (or of a probe after an activation) is unclear; None: it is clear."""
    outcome, reason = result.get("outcome", ""), result.get("reason") or ""
    if outcome in ALWAYS_UNCLEAR:
        return outcome
    if outcome == "internal":
        return "internal error reply"
    if outcome not in SHOWN:
        return None
    if not reason.strip() or reason.rstrip().endswith(":"):
        return "empty text"
    if leaked := PYTHON_EXCEPTION_NAME.search(reason):
        return f"Python exception name in the text ({leaked.group(0)})"
    if "internal error" in reason:
        return "internal error in the text"
    if outcome in ("rejected", "retry") and result.get("edgefleet_error") is False:
        return "not an EdgefleetError"
    return None


@dataclass(frozen=True)
class Finding:
    why: str
    record: dict[str, Any]  # of the case
    result: dict[str, Any]  # the case's, or of a probe after its activation

    @property
    def key(self) -> tuple[str, str, str, str]:
        """What makes a distinct unclear text: why, the exception (and its root), where it came from."""
        exception = self.result.get("exc_type") or self.result["outcome"]
        if self.result.get("root_cause"):
            exception += f" (root: {self.result['root_cause']})"
        return self.why, exception, self.result.get("origin") or "-", self.result["outcome"]

    @property
    def what(self) -> str:
        probe = f" -> then the {self.result['probe']}" if "probe" in self.result else ""
        return f"[{self.record['profile']}] {self.record['what']}{probe}"


def findings(records: list[dict[str, Any]]) -> list[Finding]:
    found = []
    for record in records:
        for result in (record, *record.get("after", [])):
            why = why_unclear(result)
            if why is not None:
                found.append(Finding(why, record, result))
    return found


def outcome_counts(records: list[dict[str, Any]]) -> dict[str, Counter[str]]:
    counts: dict[str, Counter[str]] = {}
    for record in records:
        counts.setdefault(record["kind"], Counter())[record["outcome"]] += 1
        for probe in record.get("after", []):
            counts.setdefault("after activation", Counter())[f"{probe['probe']}: {probe['outcome']}"] += 1
    return counts


def markdown_cell(text: str, limit: int) -> str:
    return text.replace("|", "\\|").replace("\n", " ")[:limit]


def findings_table(found: list[Finding]) -> list[str]:
    groups: dict[tuple[str, str, str, str], list[Finding]] = {}
    for finding in found:
        groups.setdefault(finding.key, []).append(finding)
    lines = [
        "| # | why | exception | raised at (src/) | outcome | cases | example case | example text |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for i, ((why, exception, origin, outcome), group) in enumerate(sorted(groups.items()), 1):
        example = group[0]
        text = markdown_cell(example.result.get("reason") or "", 300)
        lines.append(
            f"| {i} | {why} | {exception} | {origin} | {outcome} | {len(group)} "
            f"| {markdown_cell(example.what, 120)} | {text} |"
        )
    return lines


def summary(records: list[dict[str, Any]], found: list[Finding], seconds: float) -> str:
    counts = outcome_counts(records)
    kinds = ", ".join(
        f"{kind} {sum(counts[kind].values())}" for kind in ("bundle", "tensor", "oip") if kind in counts
    )
    lines = [f"cases run: {kinds} ({len(records)} in all) in {seconds:.0f} s", "outcomes:"]
    for kind, counter in counts.items():
        lines.append(f"  {kind}: " + ", ".join(f"{outcome} {n}" for outcome, n in sorted(counter.items())))
    lines.append(f"unclear texts: {len(found)} ({len({f.key for f in found})} distinct)")
    if found:
        lines += findings_table(found)
    return "\n".join(lines)


def write_report(paths: Paths, text: str, found: list[Finding]) -> None:
    lines = [
        "# Fuzzing the agent's inputs (bench/fuzz_agent_inputs.py)",
        "",
        text,
        "",
        "## Every unclear case",
        "",
    ]
    lines += [
        f"- {f.what} -> {f.result['outcome']} ({f.why}): {markdown_cell(f.result.get('reason') or '', 400)}"
        for f in found
    ]
    paths.report.write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--out", type=Path, default=None, help="where results go (default: a new temporary directory)"
    )
    parser.add_argument(
        "--random", type=int, default=6000, help="random .npy/.npz mutations (and N/10 OIP bodies)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the random mutations")
    parser.add_argument(
        "--only", default=None, help="run only the cases whose id or description contains this"
    )
    # internal: run as the worker, from this case index on
    parser.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker is not None:
        worker(Paths(args.out), args.worker, args.random, args.seed, args.only)
        return
    out = args.out or Path(tempfile.mkdtemp(prefix="fuzz-agent-inputs-"))
    out.mkdir(parents=True, exist_ok=True)
    paths = Paths(out.resolve())
    print(f"output directory: {paths.out}", flush=True)
    started = time.monotonic()
    prepare_assets(paths)
    cases = all_cases(make_bases(paths), args.random, args.seed, args.only)
    print(f"running {len(cases)} cases in a worker process", flush=True)
    run_cases(paths, cases, args.random, args.seed, args.only)
    records = (
        [json.loads(line) for line in paths.results.read_text().splitlines()]
        if paths.results.exists()
        else []
    )
    found = findings(records)
    text = summary(records, found, time.monotonic() - started)
    write_report(paths, text, found)
    print(text)
    print(f"results: {paths.results}; report: {paths.report}")
    sys.exit(1 if found else 0)


if __name__ == "__main__":
    main()
