"""The `edgefleet` command line.

Each subcommand imports its side lazily so `--help` and the agent start fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from edgefleet import __version__
from edgefleet.contract.errors import EdgefleetError

Handler = Callable[[argparse.Namespace], int]


def _lazy(target: str) -> Handler:
    """'package.module:function' imported only when the subcommand runs."""

    def run(args: argparse.Namespace) -> int:
        module_name, func_name = target.split(":")
        return int(getattr(importlib.import_module(module_name), func_name)(args))

    return run


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
    width = max((len(r[0]) for r in rows), default=4)
    for name, artifact, engine, description in rows:
        print(f"{name:<{width}}  {artifact:<12} {engine:<12} {description}")
    return 0


def _profiles_show(args: argparse.Namespace) -> int:
    import yaml

    from edgefleet.contract.profiles import load_profile

    print(yaml.safe_dump(load_profile(args.name).model_dump(mode="json"), sort_keys=False), end="")
    return 0


def _keys_init(args: argparse.Namespace) -> int:
    from edgefleet.contract.signing import create_key_pair, default_key_dir

    private, public = create_key_pair(args.dir or default_key_dir(), overwrite=args.force)
    print(f"private key: {private}  (keep it on the host that signs bundles)")
    print(f"public key:  {public}  (copy it to every device as its trusted key)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edgefleet", description=__doc__)
    parser.add_argument("--version", action="version", version=f"edgefleet {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    profiles = sub.add_parser("profiles", help="list or show device profiles")
    profiles_sub = profiles.add_subparsers(dest="profiles_command", required=True)
    profiles_sub.add_parser("list", help="list known profiles").set_defaults(handler=_profiles_list)
    show = profiles_sub.add_parser("show", help="print one profile")
    show.add_argument("name")
    show.set_defaults(handler=_profiles_show)

    keys = sub.add_parser("keys", help="manage the fleet signing key")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True)
    init = keys_sub.add_parser("init", help="create the Ed25519 fleet signing key pair")
    init.add_argument(
        "--dir", type=Path, help="where to write fleet.key/fleet.pub (default ~/.edgefleet/keys)"
    )
    init.add_argument("--force", action="store_true", help="replace an existing key pair")
    init.set_defaults(handler=_keys_init)

    convert = sub.add_parser("convert", help="convert an fp32 ONNX model into a signed bundle for a profile")
    convert.add_argument("model", type=Path, help="fp32 ONNX model")
    convert.add_argument(
        "--profile", required=True, help="target device profile (see `edgefleet profiles list`)"
    )
    convert.add_argument(
        "--calib", type=Path, required=True, help=".npz of calibration inputs named by model input"
    )
    convert.add_argument("--eval", type=Path, help=".npz of evaluation inputs (+ optional labels `y`)")
    convert.add_argument("--out", type=Path, required=True, help="output directory for the bundle")
    convert.add_argument("--name", help="model name (default: the model file's stem)")
    convert.add_argument("--version", dest="model_version", default="1", help="model version (default 1)")
    convert.add_argument("--key", type=Path, help="signing key (default ~/.edgefleet/keys/fleet.key)")
    convert.set_defaults(handler=_lazy("edgefleet.converter.cli:run_convert"))

    agent = sub.add_parser("agent", help="run the device agent")
    agent.add_argument("--config", type=Path, required=True, help="agent YAML config")
    agent.set_defaults(handler=_lazy("edgefleet.agent.cli:run_agent"))

    deploy = sub.add_parser("deploy", help="deploy a bundle to one device")
    deploy.add_argument("bundle", type=Path)
    deploy.add_argument("--device", required=True)
    deploy.add_argument("--broker", required=True, help="mqtt://HOST[:PORT]")
    deploy.add_argument(
        "--wait", action="store_true", help="wait until the device reports the version active"
    )
    deploy.add_argument(
        "--timeout", type=float, default=120.0, help="seconds to wait with --wait (default 120)"
    )
    deploy.set_defaults(handler=_lazy("edgefleet.fleet.deploy:run_deploy"))

    status = sub.add_parser("status", help="show the devices seen on a broker")
    status.add_argument("--broker", required=True, help="mqtt://HOST[:PORT]")
    status.add_argument("--json", action="store_true")
    status.add_argument("--listen", type=float, default=2.0, help="seconds to collect telemetry (default 2)")
    status.set_defaults(handler=_lazy("edgefleet.fleet.status:run_status"))

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
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except EdgefleetError as exc:
        print(f"edgefleet: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
