"""`edgefleet infer`: one request from the command line to a real agent, outputs as the model computes."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from fleet_helpers import ONNX_PROFILE, digits_for_a_real_agent
from PIL import Image

from edgefleet.cli import main
from edgefleet.fleet.broker import MosquittoProcess
from edgefleet.fleet.local_agent import LocalAgent

pytestmark = pytest.mark.mqtt


def test_infer_prints_what_the_model_computes_and_saves_it(
    broker: MosquittoProcess,
    tmp_path: Path,
    reference_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    bundle, public, env = digits_for_a_real_agent(tmp_path, reference_dir, monkeypatch)
    model = reference_dir / "digits_cnn_v1.onnx"
    images = np.load(reference_dir / "eval.npz")["image"][:2]
    np.save(tmp_path / "two.npy", images)
    agent = LocalAgent(
        tmp_path / "agent", device_id="dev-a", profile=ONNX_PROFILE, broker_url=broker.url,
        trusted_key=public, env=env,
    )  # fmt: skip
    with agent:
        assert (
            main(["deploy", str(bundle), "--device", "dev-a", "--broker", broker.url, "--wait", "--json"])
            == 0
        )
        captured = capsys.readouterr()
        deployed = json.loads(captured.out)
        bar = re.search(r"device dev-a: active.* (\d+)/(\d+) chunks", captured.err)
        assert bar is not None and bar.group(1) == bar.group(2), captured.err  # the bar ends full
        assert (deployed["device_id"], deployed["version"], deployed["active"]) == ("dev-a", "1", True)
        saved = tmp_path / "out.npz"
        flags = ["--broker", broker.url, "--input", str(tmp_path / "two.npy")]
        assert main(["infer", "dev-a", *flags, "--top-k", "3", "--json", "--save", str(saved)]) == 0
        result = json.loads(capsys.readouterr().out)
        assert main(["infer", "dev-a", *flags]) == 0
        text = capsys.readouterr().out
        # --image: PNG files, shaped by the input shape the device's status gives; the same pixels as floats
        pngs = [tmp_path / "a.png", tmp_path / "b.png"]
        pixels = np.round(images[:, 0] * 255).astype(np.uint8)
        for path, image in zip(pngs, pixels, strict=True):
            Image.fromarray(image, mode="L").save(path)
        image_flags = ["--broker", broker.url, "--image", *map(str, pngs), "--json"]
        assert main(["infer", "dev-a", *image_flags]) == 0
        from_pngs = json.loads(capsys.readouterr().out)["outputs"]["logits"]
        assert main(["infer", "dev-a", *image_flags, "--image-mean", "0,0"]) == 2
        assert "--image-mean has 2 values; the input has 1 channel(s): give 1" in capsys.readouterr().err
        assert main(["infer", "dev-b", *flags, "--timeout", "60"]) == 2  # at once, not after the timeout
        assert "device 'dev-b' is not known on this broker (did you mean 'dev-a'?" in capsys.readouterr().err
    expected = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"]).run(
        None, {"image": images}
    )[0]
    png_expected = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"]).run(
        None, {"image": pixels[:, None].astype(np.float32) / 255}
    )[0]
    assert [row[0][0] for row in from_pngs["top_k"]] == png_expected.argmax(axis=1).tolist()
    logits = result["outputs"]["logits"]
    assert logits["shape"] == [2, 10] and logits["dtype"] == "float32"
    assert [row[0][0] for row in logits["top_k"]] == expected.argmax(axis=1).tolist()
    assert all(len(row) == 3 for row in logits["top_k"])
    with np.load(saved) as archive:
        np.testing.assert_allclose(archive["logits"], expected, rtol=1e-5, atol=1e-5)
    assert "logits: float32 [2, 10]" in text and "sample 1: top-5" in text


def test_an_input_that_cannot_be_sent_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "x.txt").write_text("1 2 3")
    for path, message in (
        (tmp_path / "none.npy", "cannot read --input"),
        (tmp_path / "x.txt", "give an .npy"),
    ):
        assert main(["infer", "dev-a", "--broker", "mqtt://127.0.0.1:1", "--input", str(path)]) == 2
        assert message in capsys.readouterr().err
