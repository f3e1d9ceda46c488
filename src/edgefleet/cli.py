"""The `edgefleet` command line.

Each subcommand imports its side lazily so `--help` and the agent start fast.
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import json
import os
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar, NoReturn

from edgefleet import __version__
from edgefleet.contract.errors import EdgefleetError
from edgefleet.contract.messages import DEFAULT_CHUNK_SIZE, MAX_CHUNK_SIZE

Handler = Callable[[argparse.Namespace], int]


def _lazy(target: str) -> Handler:
    """'package.module:function' imported only when the subcommand runs."""

    def run(args: argparse.Namespace) -> int:
        module_name, func_name = target.split(":")
        return int(getattr(importlib.import_module(module_name), func_name)(args))

    return run


def _number(text: str, ok: Callable[[float], bool], wanted: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not ok(value):  # comparisons are False for nan: refused too
        raise argparse.ArgumentTypeError(f"{text} must be {wanted}")
    return value


def _fraction(text: str) -> float:
    """A number strictly between 0 and 1 (a ratio, sparsity or energy share)."""
    return _number(text, lambda v: 0 < v < 1, "between 0 and 1 (e.g. 0.5)")


def _non_negative(text: str) -> float:
    """A number >= 0 (accuracy points, requests per second)."""
    return _number(text, lambda v: v >= 0, "0 or more (e.g. 0.5)")


def _profiles_list(args: argparse.Namespace) -> int:
    from edgefleet.contract.profiles import list_profiles

    rows = [
        (
            p.name,
            f"{p.artifact.format.value}/{p.artifact.precision.value}",
            p.runtime.engine.value,
            p.description,
        )
        for p in list_profiles()
    ]
    if args.json:
        print(json.dumps([p.model_dump(mode="json") for p in list_profiles()], indent=2))
        return 0
    width = max((len(r[0]) for r in rows), default=4)
    for name, artifact, engine, description in rows:
        print(f"{name:<{width}}  {artifact:<12} {engine:<12} {description}")
    return 0


def _profiles_show(args: argparse.Namespace) -> int:
    import yaml

    from edgefleet.contract.profiles import load_profile

    data = load_profile(args.name).model_dump(mode="json")
    print(
        json.dumps(data, indent=2) if args.json else yaml.safe_dump(data, sort_keys=False),
        end="\n" if args.json else "",
    )
    return 0


def _keys_init(args: argparse.Namespace) -> int:
    from edgefleet.contract.signing import create_key_pair, default_key_dir

    private, public = create_key_pair(args.dir or default_key_dir(), overwrite=args.force)
    if args.json:
        print(json.dumps({"private_key": str(private), "public_key": str(public)}, indent=2))
        return 0
    print(f"private key: {private}  (keep it on the host that signs bundles)")
    print(f"public key:  {public}  (copy it to every device as its trusted key)")
    return 0


def _add_image_options(group: argparse._ArgumentGroup) -> None:
    """How image files become a model input (convert's image folders, infer's --image)."""
    group.add_argument("--image-size", metavar="H,W", help="resize to (default: the model input's size)")
    group.add_argument("--image-layout", choices=["NCHW", "NHWC"], help="default: from the model input")
    group.add_argument("--image-channel-order", choices=["RGB", "BGR"], default="RGB", help="default RGB")
    group.add_argument("--image-mean", metavar="M[,M,M]", help="subtracted after scaling to [0,1] (0)")
    group.add_argument("--image-std", metavar="S[,S,S]", help="divided by after the mean (1)")


def _add_broker_options(parser: argparse.ArgumentParser, required: bool = True) -> None:
    """--broker and the TLS/credential flags of every host command that connects to the broker."""
    parser.add_argument(
        "--broker", required=required, help="mqtt://HOST[:PORT], or mqtts://HOST[:PORT] for TLS"
    )
    group = parser.add_argument_group("broker TLS and credentials (any MQTT 5 broker)")
    group.add_argument("--ca", dest="broker_ca", metavar="FILE", help="CA certificate (PEM) of the broker's")
    group.add_argument("--cert", dest="broker_cert", metavar="FILE", help="client certificate (PEM)")
    group.add_argument("--key", dest="broker_key", metavar="FILE", help="key of the client certificate (PEM)")
    group.add_argument("--username", dest="broker_username", metavar="NAME", help="MQTT user name")
    group.add_argument(
        "--password-file",
        dest="broker_password_file",
        metavar="FILE",
        help="file whose first line is the MQTT password",
    )


def _chunk_kib(text: str) -> int:
    value = int(text)
    if not 1 <= value <= MAX_CHUNK_SIZE // 1024:
        raise argparse.ArgumentTypeError(f"the chunk size must be 1 to {MAX_CHUNK_SIZE // 1024} KiB")
    return value


def _add_chunk_option(parser: argparse.ArgumentParser) -> None:
    """Bundles travel as retained chunks of this size: keep it under the broker's message size limit."""
    parser.add_argument(
        "--chunk-kib",
        type=_chunk_kib,
        default=DEFAULT_CHUNK_SIZE // 1024,
        help=f"chunk size in KiB (default {DEFAULT_CHUNK_SIZE // 1024}); managed brokers cap message sizes "
        "(e.g. AWS IoT Core at 128 KB: use 96)",
    )


def _apply_broker_options(args: argparse.Namespace) -> None:
    """Fold the TLS/credential flags into args.broker, so every connection the command opens uses them."""
    if getattr(args, "broker", None) is None:
        return
    from edgefleet.mqtt import BrokerAddress, BrokerSecurity

    security = BrokerSecurity(
        ca_file=getattr(args, "broker_ca", None),
        cert_file=getattr(args, "broker_cert", None),
        key_file=getattr(args, "broker_key", None),
        username=getattr(args, "broker_username", None),
        password_file=getattr(args, "broker_password_file", None),
    )
    args.broker = BrokerAddress.parse(args.broker).with_security(security).url


ROLLOUT_COMMANDS = ("start", "status", "resume", "abort")


def _add_rollout_parser(sub: argparse._SubParsersAction[Any]) -> None:
    rollout = sub.add_parser(
        "rollout",
        help="staged rollouts: `rollout start BUNDLE --select ...` (or just `rollout BUNDLE ...`), "
        "`rollout status|resume|abort [ID]`",
        description="Canary, then batches, each waiting until its devices run the bundle healthily; halts "
        "and rolls back on failures. `edgefleet rollout BUNDLE ...` is short for "
        "`edgefleet rollout start BUNDLE ...`.",
    )
    commands = rollout.add_subparsers(
        dest="rollout_command", required=True, metavar="start|status|resume|abort"
    )
    handler = "edgefleet.fleet.rollout_cli:run_"

    start = commands.add_parser("start", help="plan and run a rollout of a bundle to the selected devices")
    start.add_argument("bundle", type=Path)
    _add_broker_options(start, required=False)  # checked with a clear message, like --select
    start.add_argument("--select", help="devices to roll out to, e.g. profile=rpi4,site=lab or 'id=pi-*'")
    start.add_argument("--canary", default="10%", help="first stage: N devices or P%% (default 10%%)")
    start.add_argument("--batch", default="25%", help="later stages: N devices or P%% (default 25%%)")
    start.add_argument(
        "--max-failures", type=int, default=0, help="halt and roll back when more fail (default 0)"
    )
    start.add_argument(
        "--min-healthy-seconds",
        type=float,
        default=30.0,
        help="how long each device must run the bundle healthily (default 30)",
    )
    start.add_argument(
        "--max-error-rate",
        type=float,
        default=0.0,
        help="fail a device whose errors per request since activation exceed this (default 0: any error; "
        "the profile's max_error_rate is what the agent's own probation allows)",
    )
    start.add_argument(
        "--stage-timeout",
        type=float,
        default=300.0,
        help="seconds an online device may take from desired state to healthy (default 300)",
    )
    _add_chunk_option(start)

    status = commands.add_parser("status", help="show a rollout (default: the latest)")
    resume = commands.add_parser("resume", help="continue an unfinished rollout (default: the latest)")
    abort = commands.add_parser("abort", help="stop a rollout (default: the latest)")
    abort.add_argument("--rollback", action="store_true", help="send the devices it touched back first")
    for parser in (status, resume, abort):
        parser.add_argument("rollout_id", nargs="?", metavar="ID", help="the rollout (default: the latest)")
        _add_broker_options(parser, required=False)
    for name, parser in (("start", start), ("status", status), ("resume", resume), ("abort", abort)):
        parser.add_argument(
            "--state-dir",
            type=Path,
            help="where rollouts are kept (default ~/.edgefleet or $EDGEFLEET_STATE_DIR)",
        )
        parser.add_argument("--json", action="store_true", help="print the rollout state as JSON")
        parser.set_defaults(handler=_lazy(handler + name))


def _expand_shorthands(argv: list[str]) -> list[str]:
    """`rollout BUNDLE ...` is `rollout start BUNDLE ...`."""
    if (
        len(argv) > 1
        and argv[0] == "rollout"
        and argv[1] not in ROLLOUT_COMMANDS
        and not argv[1].startswith("-")
    ):
        return [argv[0], "start", *argv[1:]]
    return argv


class _Parser(argparse.ArgumentParser):
    """argparse, with one line per mistake and a suggestion instead of the whole usage block."""

    known_options: ClassVar[set[str]] = set()  # every option of every command, for "did you mean"

    def add_argument(self, *args: Any, **kwargs: Any) -> argparse.Action:
        action = super().add_argument(*args, **kwargs)
        _Parser.known_options.update(action.option_strings)
        return action

    def error(self, message: str) -> NoReturn:
        hint = _suggestion(message)
        self.exit(2, f"{self.prog}: error: {message}{hint}\nrun '{self.prog} --help' for the options\n")


def _suggestion(message: str) -> str:
    """ "; did you mean ...?" for a mistyped command, choice or option, when one is close."""
    choice = re.search(r"invalid choice: '([^']*)' \(choose from (.*)\)", message)
    if choice is not None:
        options = re.findall(r"'([^']*)'", choice.group(2))
        close = difflib.get_close_matches(choice.group(1), options, n=1)
    else:
        unknown = re.search(r"unrecognized arguments: (\S+)", message)
        word = unknown.group(1).split("=")[0] if unknown else ""
        close = (
            difflib.get_close_matches(word, sorted(_Parser.known_options), n=1)
            if word.startswith("-")
            else []
        )
    return f"; did you mean '{close[0]}'?" if close else ""


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="edgefleet", description=__doc__)
    parser.add_argument("--version", action="version", version=f"edgefleet {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    profiles = sub.add_parser("profiles", help="list or show device profiles")
    profiles_sub = profiles.add_subparsers(dest="profiles_command", required=True)
    profiles_list = profiles_sub.add_parser("list", help="list known profiles")
    profiles_list.add_argument("--json", action="store_true")
    profiles_list.set_defaults(handler=_profiles_list)
    show = profiles_sub.add_parser("show", help="print one profile")
    show.add_argument("name")
    show.add_argument("--json", action="store_true")
    show.set_defaults(handler=_profiles_show)

    keys = sub.add_parser("keys", help="manage the fleet signing key")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True)
    init = keys_sub.add_parser("init", help="create the Ed25519 fleet signing key pair")
    init.add_argument(
        "--dir", type=Path, help="where to write fleet.key/fleet.pub (default ~/.edgefleet/keys)"
    )
    init.add_argument("--force", action="store_true", help="replace an existing key pair")
    init.add_argument("--json", action="store_true")
    init.set_defaults(handler=_keys_init)

    convert = sub.add_parser("convert", help="convert an fp32 ONNX model into a signed bundle for a profile")
    convert.add_argument(
        "model",
        type=Path,
        help="fp32 ONNX model, Keras model file (.keras/.h5), or PyTorch `package.module:factory` "
        "(a function returning the trained nn.Module; needs --input-shape)",
    )
    convert.add_argument(
        "--profile",
        required=True,
        help="target device profile (see `edgefleet profiles list`); several as rpi4,coral-usb,... or all: "
        "one bundle each, from one load and one calibration pass",
    )
    convert.add_argument(
        "--calib",
        type=Path,
        help=".npz of calibration inputs named by model input (int8 profiles and compression need it; "
        "fp16/fp32 use --eval)",
    )
    convert.add_argument("--eval", type=Path, help=".npz of evaluation inputs (+ optional labels `y`)")
    convert.add_argument("--out", type=Path, required=True, help="output directory for the bundle")
    convert.add_argument("--name", help="model name (default: the model file's stem)")
    convert.add_argument("--version", dest="model_version", default="1", help="model version (default 1)")
    convert.add_argument("--key", type=Path, help="signing key (default ~/.edgefleet/keys/fleet.key)")
    convert.add_argument("--opset", type=int, default=17, help="ONNX opset for PyTorch/Keras export (17)")
    convert.add_argument(
        "--precision",
        choices=["int8", "fp16", "fp32"],
        help="override the profile's precision, within what the target runs (e.g. fp16 on jetson-orin-nano)",
    )
    convert.add_argument(
        "--input-shape",
        dest="input_shapes",
        action="append",
        metavar="NAME=D1,D2,...",
        help="fix an input's dynamic dimensions, e.g. image=1,3,96,96 (? keeps one dynamic); repeatable",
    )
    convert.add_argument(
        "--verbose",
        "-v",
        action="store_true",
        help="show the toolchains' own log output (TensorFlow, LiteRT)",
    )
    convert.add_argument(
        "--json", action="store_true", help="print the conversion report (report.json) to stdout"
    )
    accuracy = convert.add_argument_group(
        "accuracy budget and reports",
        "over budget, the layers that lose the most are kept in float where the target allows it; a budget "
        "that cannot be met exits non-zero with the culprit layers named in the report",
    )
    accuracy.add_argument(
        "--max-drop",
        type=_non_negative,
        metavar="POINTS",
        help="allowed drop vs fp32 in points for the percentage measures: top-1, agreement, detection F1, "
        "mask IoU, CTC string equality (default: the profile's max_accuracy_drop_points)",
    )
    accuracy.add_argument(
        "--allow-low-accuracy",
        action="store_true",
        help="convert even when the fp32 model scores no better than chance against the labels `y` (by "
        "default that stops the conversion: the labels are likely off by one or in another order)",
    )
    accuracy.add_argument(
        "--min-sqnr",
        type=float,
        metavar="DB",
        help="floor in dB for outputs judged by SQNR against fp32, i.e. outputs of kind tensor (default: "
        "20 for int8 artifacts, 25 for fp16, 60 for fp32)",
    )
    accuracy.add_argument(
        "--output-kind",
        dest="output_kinds",
        action="append",
        metavar="[OUTPUT=]KIND",
        help="what an output is, which picks its measure: classification (top-1 / agreement), detection "
        "(box F1), segmentation (mask IoU), ctc (decoded-string equality) or tensor (SQNR/cosine); "
        "without OUTPUT: every output not named; repeatable (default: classification for one score "
        "vector per sample, else tensor)",
    )
    accuracy.add_argument(
        "--metric",
        metavar="PACKAGE.MODULE:FUNCTION",
        help="your own measure, which then judges the budget: function(fp32_outputs, artifact_outputs, "
        "eval_data) -> {'score': float, 'passed': bool} or {'score': float, 'drop': points}",
    )
    accuracy.add_argument(
        "--calib-method",
        choices=["minmax", "entropy", "percentile"],
        help="how activation ranges are chosen (default: minmax, measured best on the reference models)",
    )
    accuracy.add_argument(
        "--report-dir", type=Path, help="write report.json/report.html here (default: next to the bundle)"
    )
    _add_image_options(
        convert.add_argument_group(
            "image folders", "--calib/--eval/--train may be folders of images (labels from class sub-folders)"
        )
    )
    compress = convert.add_argument_group("compression (each reports params, MACs, size, accuracy)")
    compress.add_argument(
        "--prune", type=_fraction, metavar="RATIO", help="remove this share of channels (PyTorch models)"
    )
    compress.add_argument(
        "--prune-criterion",
        choices=["l1", "l2", "taylor", "bn-scale", "activation", "entropy"],
        default="l2",
        help="how channels are ranked: weight norm (l1, l2), Taylor (weight x gradient on the recovery "
        "data), BatchNorm scale, mean activation or activation entropy on the recovery data (default l2)",
    )
    compress.add_argument(
        "--prune-global",
        action="store_true",
        help="channels compete across layers (default: every layer loses the same share)",
    )
    compress.add_argument(
        "--prune-max-layer-ratio",
        type=_fraction,
        default=0.9,
        metavar="R",
        help="with --prune-global: the most any one layer loses (default 0.9)",
    )
    compress.add_argument(
        "--prune-protect",
        action="append",
        default=[],
        metavar="MODULE",
        help="a module name (as in named_modules()) never pruned; repeatable",
    )
    compress.add_argument(
        "--prune-steps",
        type=int,
        default=1,
        metavar="N",
        help="prune in N steps, distilling between them (--distill-epochs shared out; default 1)",
    )
    compress.add_argument(
        "--sparsity-reg",
        type=float,
        metavar="LAMBDA",
        help="before --prune, sparsity training (network slimming): after each step every BatchNorm "
        "scale (else channel weight norm) shrinks by LAMBDA toward 0 (proximal L1, e.g. 0.005), so the "
        "channels the model can do without reach 0 before pruning",
    )
    compress.add_argument(
        "--sparsity-epochs", type=int, default=10, metavar="N", help="epochs of --sparsity-reg training (10)"
    )
    compress.add_argument(
        "--qat",
        type=int,
        metavar="EPOCHS",
        dest="qat_epochs",
        help="quantization-aware training (PyTorch models, int8 profiles): fine-tune this many epochs with "
        "int8 simulated in the target's scheme; the learned activation ranges replace calibration",
    )
    compress.add_argument(
        "--sparsity-2-4",
        action="store_true",
        help="2:4 structured sparsity (PyTorch models), fine-tuned by distillation with the masks kept; "
        "TensorRT on Jetson Orin runs it on sparse tensor cores (the bundle is marked for it)",
    )
    compress.add_argument(
        "--train",
        type=Path,
        help="fine-tuning data for --prune, --sparsity-2-4, --qat (.npz/images; else --calib)",
    )
    compress.add_argument(
        "--distill-epochs", type=int, default=60, help="distillation epochs after --prune (60)"
    )
    compress.add_argument(
        "--distill-features",
        metavar="LAYERS",
        help="also align intermediate outputs during distillation: module names, comma-separated, or auto "
        "(4 Conv/Linear layers spread over the model); a 1x1 adapter bridges pruned widths",
    )
    compress.add_argument(
        "--low-rank", type=_fraction, metavar="ENERGY", help="SVD of FC/1x1-conv weights keeping this energy"
    )
    compress.add_argument(
        "--low-rank-conv",
        action="store_true",
        help="with --low-rank: KxK convolutions too, by Tucker-2 decomposition (where it cuts MACs)",
    )
    compress.add_argument(
        "--magnitude-prune", type=_fraction, metavar="SPARSITY", help="zero this share of each weight tensor"
    )
    convert.set_defaults(handler=_lazy("edgefleet.converter.cli:run_convert"))

    agent = sub.add_parser("agent", help="run the device agent")
    agent.add_argument("--config", type=Path, required=True, help="agent YAML config")
    agent.set_defaults(handler=_lazy("edgefleet.agent.cli:run_agent"))

    deploy = sub.add_parser("deploy", help="deploy a bundle to one device")
    deploy.add_argument("bundle", type=Path)
    deploy.add_argument("--device", required=True)
    _add_broker_options(deploy)
    deploy.add_argument(
        "--wait", action="store_true", help="wait until the device reports the version active"
    )
    deploy.add_argument(
        "--timeout", type=float, default=120.0, help="seconds to wait with --wait (default 120)"
    )
    _add_chunk_option(deploy)
    deploy.add_argument("--json", action="store_true", help="print the result as JSON")
    deploy.set_defaults(handler=_lazy("edgefleet.fleet.deploy:run_deploy"))

    rollback = sub.add_parser("rollback", help="make a device run a version it keeps on disk (no download)")
    rollback.add_argument("--device", required=True)
    _add_broker_options(rollback)
    rollback.add_argument(
        "--to", metavar="VERSION", help="the kept version to run (default: the previous good one)"
    )
    rollback.add_argument("--wait", action="store_true", help="wait until the device reports it active")
    rollback.add_argument("--json", action="store_true", help="print the result as JSON")
    rollback.add_argument(
        "--timeout", type=float, default=60.0, help="seconds to wait with --wait (default 60)"
    )
    rollback.set_defaults(handler=_lazy("edgefleet.fleet.rollback:run_rollback"))

    infer = sub.add_parser("infer", help="send one inference request to a device and print its outputs")
    infer.add_argument("device", help="the device id")
    _add_broker_options(infer)
    given = infer.add_mutually_exclusive_group(required=True)
    given.add_argument("--input", type=Path, help=".npy (a one-input model) or .npz keyed by input name")
    given.add_argument(
        "--image",
        type=Path,
        nargs="+",
        metavar="FILE",
        help="image file(s) for a one-input image model, preprocessed by the --image-* options",
    )
    _add_image_options(
        infer.add_argument_group(
            "images", "how --image files become the input: as given to `convert` for image folders"
        )
    )
    infer.add_argument(
        "--top-k", type=int, default=5, help="best classes shown per sample (default 5; 0: none)"
    )
    infer.add_argument(
        "--timeout", type=float, default=10.0, help="seconds to wait for the reply (default 10)"
    )
    infer.add_argument("--save", type=Path, help="write the outputs to this .npz")
    infer.add_argument("--json", action="store_true")
    infer.set_defaults(handler=_lazy("edgefleet.fleet.infer_cli:run_infer"))

    forget = sub.add_parser(
        "forget", help="remove devices from the fleet's view (clears their retained presence and status)"
    )
    forget.add_argument("devices", nargs="+", metavar="DEVICE")
    forget.add_argument("--json", action="store_true")
    _add_broker_options(forget)
    forget.set_defaults(handler=_lazy("edgefleet.fleet.forget:run_forget"))

    floor = sub.add_parser(
        "floor", help="sign a model's minimum version for devices (anti-rollback; agents opt in)"
    )
    _add_broker_options(floor)
    floor.add_argument("--model", required=True, help="the model name, as in its bundles' manifest")
    floor.add_argument("--min-version", help="bundles of the model below this are refused")
    floor.add_argument("--clear", action="store_true", help="sign a floor without a minimum")
    floor.add_argument("--device", action="append", help="a device id (repeatable)")
    floor.add_argument("--select", help="devices matching e.g. profile=rpi4,site=lab (id/profile/tags)")
    floor.add_argument("--signing-key", type=Path, help="fleet key (default ~/.edgefleet/keys/fleet.key)")
    floor.add_argument("--json", action="store_true", help="print the signed floors")
    floor.set_defaults(handler=_lazy("edgefleet.fleet.floor:run_floor"))

    status = sub.add_parser("status", help="show the devices seen on a broker")
    _add_broker_options(status)
    status.add_argument("--json", action="store_true")
    status.add_argument("--listen", type=float, default=2.0, help="seconds to collect telemetry (default 2)")
    status.set_defaults(handler=_lazy("edgefleet.fleet.status:run_status"))

    watch = sub.add_parser("watch", help="live view of the fleet's telemetry (latency, RSS, CPU, errors)")
    _add_broker_options(watch)
    watch.add_argument("--refresh", type=float, default=1.0, help="seconds between redraws (default 1)")
    watch.add_argument("--rows", type=int, help="devices to show (default: what fits; problems first)")
    watch.add_argument("--once", action="store_true", help="listen --listen seconds, print one table, exit")
    watch.add_argument("--listen", type=float, default=3.0, help="seconds to listen with --once (default 3)")
    watch.add_argument("--json", action="store_true", help="with --once: the view as JSON")
    watch.add_argument("--duration", type=float, help="stop the live view after this many seconds")
    watch.add_argument("--history", type=Path, help="also record telemetry into this SQLite file")
    watch.set_defaults(handler=_lazy("edgefleet.fleet.watch:run_watch"))

    exporter = sub.add_parser("exporter", help="Prometheus metrics endpoint + SQLite history from telemetry")
    _add_broker_options(exporter)
    exporter.add_argument(
        "--bind", default="127.0.0.1:9479", help="HOST:PORT of the /metrics endpoint (default 127.0.0.1:9479)"
    )
    exporter.add_argument(
        "--share-group", help="MQTT 5 shared-subscription group: exporters in one group split the telemetry"
    )
    exporter.add_argument("--history", type=Path, help="SQLite file (default ~/.edgefleet/telemetry.sqlite)")
    exporter.add_argument("--no-history", action="store_true", help="do not record telemetry history")
    exporter.add_argument("--retention", default="7d", help="keep history this long (default 7d)")
    exporter.add_argument("--duration", type=float, help="exit after this many seconds (default: run)")
    exporter.set_defaults(handler=_lazy("edgefleet.fleet.exporter:run_exporter"))

    history = sub.add_parser("history", help="one device's telemetry over time, from the SQLite history")
    history.add_argument("device")
    history.add_argument(
        "--metric", default="p95_ms", help="p50_ms, p95_ms, p99_ms, rss_mb, cpu_percent, ..."
    )
    history.add_argument("--since", default="1h", help="a duration back (15m, 1h, 2d) or an ISO time")
    history.add_argument("--until", help="a duration back or an ISO time (default: now)")
    history.add_argument("--step", help="aggregate into buckets this long (e.g. 5m): min/mean/max")
    history.add_argument("--db", type=Path, help="SQLite file (default ~/.edgefleet/telemetry.sqlite)")
    history.add_argument("--json", action="store_true")
    history.set_defaults(handler=_lazy("edgefleet.fleet.history:run_history"))

    broker_config = sub.add_parser(
        "broker-config", help="write a production mosquitto config: TLS, per-device credentials and ACL"
    )
    broker_config.add_argument("--out", type=Path, required=True, help="directory to write into")
    broker_config.add_argument("--devices", action="append", help="device ids, comma-separated")
    broker_config.add_argument("--devices-file", type=Path, help="file with one device id per line")
    broker_config.add_argument(
        "--auth",
        choices=["password", "certificate"],
        default="password",
        help="how clients authenticate (default password; certificate = mutual TLS, CN = identity)",
    )
    broker_config.add_argument(
        "--hostname",
        action="append",
        help="name or IP clients use for the broker; repeat for several (default localhost, 127.0.0.1)",
    )
    broker_config.add_argument("--port", type=int, default=8883, help="devices' TLS port (default 8883)")
    broker_config.add_argument(
        "--operator-port", type=int, help="TLS port of host tools: admin, monitor (default --port + 1)"
    )
    broker_config.add_argument("--bind", help="listen on this address only (default: all)")
    broker_config.add_argument("--admin-user", default="edgefleet-admin", help="identity allowed everything")
    broker_config.add_argument(
        "--monitor-user", default="edgefleet-monitor", help="read-only identity for watch/exporter"
    )
    broker_config.add_argument(
        "--install-dir", type=Path, help="where the files will be on the broker host (default: --out)"
    )
    broker_config.add_argument(
        "--data-dir", type=Path, default=Path("/var/lib/mosquitto"), help="mosquitto persistence directory"
    )
    broker_config.add_argument("--days", type=int, default=825, help="certificate validity (default 825)")
    broker_config.add_argument("--json", action="store_true", help="print where everything was written")
    broker_config.add_argument(
        "--run-as", help="account mosquitto switches to when started as root (mosquitto's default: mosquitto)"
    )
    broker_config.set_defaults(handler=_lazy("edgefleet.fleet.broker_config:run_broker_config"))

    devices = sub.add_parser("devices", help="list the devices that announced themselves (the inventory)")
    _add_broker_options(devices)
    devices.add_argument(
        "--select", help="only devices matching e.g. profile=rpi4,site=lab (id/profile/tags)"
    )
    devices.add_argument("--json", action="store_true")
    devices.add_argument(
        "--listen", type=float, default=2.0, help="seconds to hear telemetry for last-seen (default 2)"
    )
    devices.set_defaults(handler=_lazy("edgefleet.fleet.inventory:run_devices"))

    _add_rollout_parser(sub)

    simulate = sub.add_parser("simulate", help="N simulated devices speaking the real protocol (one process)")
    _add_broker_options(simulate, required=False)  # default: a private mosquitto
    simulate.add_argument("--devices", type=int, required=True, help="how many devices")
    simulate.add_argument("--profile", default="rpi4", help="their profile (default rpi4)")
    simulate.add_argument("--tag", action="append", metavar="KEY=VALUE", help="a tag of every device")
    simulate.add_argument("--id-prefix", default="sim", help="device ids are PREFIX-0000... (default sim)")
    simulate.add_argument(
        "--telemetry-hz", type=float, default=1.0, help="telemetry per device per second (default 1)"
    )
    simulate.add_argument(
        "--fail-fraction", type=float, default=0.0, help="share of devices failing health on new bundles"
    )
    simulate.add_argument(
        "--fail-mode",
        choices=["errors", "reject", "rollback", "client_errors"],
        default="errors",
        help="errors: report errors and latency over budget; reject: refuse the bundle; rollback: go back "
        "to the previous bundle during probation; client_errors: a healthy model, half its requests bad "
        "ones from a hostile client (default errors)",
    )
    simulate.add_argument(
        "--probation-seconds",
        type=float,
        default=0.0,
        help="watch each newly activated bundle this long, as agents do (default 0: no probation)",
    )
    simulate.add_argument(
        "--requests-per-s",
        type=_non_negative,
        default=5.0,
        help="simulated inference requests per device and second (telemetry, probation; default 5)",
    )
    simulate.add_argument(
        "--initial-version", default="0", help="model version devices start with ('' = no model; default 0)"
    )
    simulate.add_argument("--seed", type=int, default=0, help="picks the failing devices (default 0)")
    simulate.add_argument("--duration", type=float, help="stop after this many seconds (default: Ctrl-C)")
    simulate.add_argument("--json", action="store_true", help="print the final report as JSON")
    simulate.add_argument(
        "--record", type=Path, help="at exit, write what every device received and did (JSON) to this file"
    )
    simulate.set_defaults(handler=_lazy("edgefleet.fleet.simulator:run_simulate"))

    demo = sub.add_parser(
        "demo", help="end-to-end demo: broker, three agents, convert, deploy v1 and v2 under load"
    )
    demo.add_argument("--json", action="store_true", help="print the result as one JSON object")
    demo.add_argument(
        "--workdir", type=Path, help="keep the demo's files here (default: a temporary directory)"
    )
    demo.set_defaults(handler=_lazy("edgefleet.fleet.demo:run_demo"))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(_expand_shorthands(list(sys.argv[1:] if argv is None else argv)))
    try:
        _apply_broker_options(args)
        return args.handler(args)
    except EdgefleetError as exc:
        print(f"edgefleet: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `edgefleet ... --json | head`: the reader left; not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
