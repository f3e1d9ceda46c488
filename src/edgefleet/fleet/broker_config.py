"""`edgefleet broker-config`: a production mosquitto configuration for a fleet: TLS only, no anonymous
clients, a password or a client certificate per device, and an ACL that confines each device to its own
topics. The CA, certificates and passwords are made here (`cryptography`, PBKDF2-SHA512).

What each identity may do (see `device_acl`):
- a device publishes only its own online/status/telemetry/events and inference replies, and reads only
  its own desired state and inference requests, plus bundles (read-only, every bundle: see below);
- the monitoring identity (watch, exporter, status) reads what devices report and nothing else;
- the admin identity (deploy, rollout, the CLI) may do everything.

Who may connect where: devices and operators (admin, monitor) have a listener each, with its own password
file (or, with client certificates, its own CA). On the device listener the broker makes the user name the
client id (`use_username_as_clientid`): a device cannot take over another device's session by connecting
with its client id. Operators keep free client ids (several host tools run at once under one identity).

Bundles are content-addressed (`bundles/{sha256}/...`) and shared by every device that runs them, so a
static ACL cannot know which bundle a device will be told to fetch: every device may read every bundle,
no device may write one. A device can therefore download a model meant for another device (it cannot
alter one: bundles are signed and hash-checked). Scoping reads per device needs an auth plugin that
consults the desired state (mosquitto-go-auth, EMQX's HTTP ACL, HiveMQ's extensions).
"""

from __future__ import annotations

import argparse
import datetime
import shutil
from pathlib import Path
from typing import Literal

import yaml
from cryptography.x509.oid import NameOID
from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator

from edgefleet.contract import ids, topics
from edgefleet.contract.errors import EdgefleetError, first_validation_error
from edgefleet.contract.messages import MAX_CHUNK_SIZE, PACKET_HEADROOM
from edgefleet.fleet.broker import QUEUED_MESSAGES_PER_CLIENT
from edgefleet.fleet.certs import (
    Issued,
    load_issued,
    make_ca,
    make_client_cert,
    make_server_cert,
)
from edgefleet.fleet.passwords import new_password, password_file_line
from edgefleet.mqtt import DEFAULT_TLS_PORT

ADMIN_USER = "edgefleet-admin"
MONITOR_USER = "edgefleet-monitor"
AuthMode = Literal["password", "certificate"]


class BrokerConfigError(EdgefleetError):
    """The broker configuration could not be written as asked."""


class BrokerConfigSpec(BaseModel):
    """What `broker-config` is asked to write."""

    out_dir: Path
    devices: list[str] = Field(min_length=1)
    auth: AuthMode = "password"
    hostnames: list[str] = Field(default_factory=lambda: ["localhost", "127.0.0.1"], min_length=1)
    port: int = Field(default=DEFAULT_TLS_PORT, ge=1, le=65535, description="the devices' listener")
    operator_port: int | None = Field(
        default=None, ge=1, le=65535, description="the admin/monitor listener (default: port + 1)"
    )
    bind: str | None = Field(default=None, description="listen on this address only (default: all)")
    admin_user: str = ADMIN_USER
    monitor_user: str = MONITOR_USER
    install_dir: Path | None = Field(
        default=None, description="where the files will be on the broker host (default: out_dir)"
    )
    data_dir: Path = Field(default=Path("/var/lib/mosquitto"), description="mosquitto persistence")
    run_as: str | None = Field(
        default=None,
        pattern=r"^[a-z_][a-z0-9_-]{0,31}$",
        description="account mosquitto switches to when started as root (mosquitto's default: mosquitto)",
    )
    days: int = Field(default=825, ge=1, description="validity of the server and client certificates")

    @field_validator("devices", mode="after")
    @classmethod
    def _device_ids(cls, devices: list[str]) -> list[str]:
        for device_id in devices:
            ids.check_device_id(device_id)
        duplicates = sorted({d for d in devices if devices.count(d) > 1})
        if duplicates:
            raise ValueError(f"device ids given more than once: {', '.join(duplicates)}")
        return devices

    @field_validator("admin_user", "monitor_user")
    @classmethod
    def _identity(cls, value: str) -> str:
        return ids.check_device_id(value)

    @model_validator(mode="after")
    def _distinct_identities(self) -> BrokerConfigSpec:
        if self.operator_port is None:
            self.operator_port = self.port + 1 if self.port < 65535 else self.port - 1
        if self.operator_port == self.port:
            raise ValueError("the device and operator listeners need different ports")
        if self.admin_user == self.monitor_user:
            raise ValueError("the admin and monitor identities must differ")
        clash = {self.admin_user, self.monitor_user} & set(self.devices)
        if clash:
            raise ValueError(
                f"device id {sorted(clash)[0]!r} is also the admin or monitor identity; rename the device "
                "or pass --admin-user/--monitor-user"
            )
        return self

    @property
    def broker_url(self) -> str:
        """Where devices connect."""
        return f"mqtts://{self.hostnames[0]}:{self.port}"

    @property
    def operator_url(self) -> str:
        """Where host tools connect (admin and monitor identities)."""
        return f"mqtts://{self.hostnames[0]}:{self.operator_port}"

    @property
    def operators(self) -> list[str]:
        return [self.admin_user, self.monitor_user]


class BrokerConfigFiles(BaseModel):
    """Where everything was written."""

    mosquitto_conf: Path
    acl: Path
    password_file: Path | None = Field(description="the devices' passwords (password mode)")
    operator_password_file: Path | None = Field(description="the operators' passwords (password mode)")
    ca_cert: Path
    ca_key: Path
    operator_ca_cert: Path | None = Field(description="the CA of operator client certificates (cert mode)")
    server_cert: Path
    server_key: Path
    clients: dict[str, Path] = Field(description="identity -> its folder (ca.crt + password or cert/key)")
    broker_url: str
    operator_url: str


def _acl_block(user: str, grants: list[topics.Grant], comment: str | None = None) -> list[str]:
    head = [f"# {comment}"] if comment else []
    return [*head, f"user {user}", *(f"topic {access} {pattern}" for access, pattern in grants)]


def device_acl(device_id: str) -> list[str]:
    """mosquitto ACL lines for one device (what it may touch: contract/topics.py's device_grants)."""
    return _acl_block(device_id, topics.device_grants(device_id))


def render_acl(spec: BrokerConfigSpec) -> str:
    # Every identity is listed by name (no %u patterns): a device dropped from --devices loses all rights,
    # even while its client certificate is still valid.
    blocks = [
        [
            "# edgefleet ACL written by `edgefleet broker-config`. mosquitto denies whatever no line allows.",
            *_acl_block(spec.admin_user, topics.admin_grants(), "Host/admin identity: everything."),
        ],
        _acl_block(spec.monitor_user, topics.monitor_grants(), "Monitoring: watch, exporter, status"),
        *(device_acl(device_id) for device_id in spec.devices),
    ]
    return "\n\n".join("\n".join(block) for block in blocks) + "\n"


def _listener_lines(
    spec: BrokerConfigSpec, install_dir: Path, port: int | None, password_file: str, client_ca: str
) -> list[str]:
    """One TLS listener with its own credentials (per_listener_settings is on)."""
    auth_lines = (
        [
            "# Clients prove who they are with a password (the broker's certificate still proves who it is).",
            f"password_file {install_dir / password_file}",
            "require_certificate false",
        ]
        if spec.auth == "password"
        else [
            "# Clients prove who they are with a certificate from this CA; its common name is the user name.",
            "require_certificate true",
            "use_identity_as_username true",
        ]
    )
    ca = "ca.crt" if spec.auth == "password" else client_ca
    return [
        f"listener {port}" + (f" {spec.bind}" if spec.bind else ""),
        "allow_anonymous false",
        f"acl_file {install_dir / 'acl'}",
        f"cafile {install_dir / ca}",
        f"certfile {install_dir / 'server.crt'}",
        f"keyfile {install_dir / 'server.key'}",
        "tls_version tlsv1.2",
        *auth_lines,
    ]


def render_mosquitto_conf(spec: BrokerConfigSpec, install_dir: Path) -> str:
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        f"# mosquitto 2 configuration written by `edgefleet broker-config` on {now}",
        f"# for {len(spec.devices)} device(s). TLS only, no anonymous clients, per-device ACL.",
        "# Devices and operators connect to different listeners, each with its own credentials.",
        "per_listener_settings true",
        "",
        "# Devices (edgefleet agents). The broker uses the user name as the client id, so a device",
        "# cannot take over another device's session by connecting with that device's client id.",
        *_listener_lines(spec, install_dir, spec.port, "passwd", "ca.crt"),
        "use_username_as_clientid true",
        "",
        "# Operators (admin and monitor identities: deploy, rollout, watch, exporter); several host tools",
        "# may run at once under one identity, so client ids stay free here.",
        *_listener_lines(spec, install_dir, spec.operator_port, "passwd-operators", "operators-ca.crt"),
        "",
        "# Request/response latency: no Nagle on the broker side either.",
        "set_tcp_nodelay true",
        "# Per-client queue: beyond it mosquitto drops QoS 1 messages silently (its default is 1000).",
        "# A device's inference requests in flight, summed over all its clients, must stay below it.",
        f"max_queued_messages {QUEUED_MESSAGES_PER_CLIENT}",
        "# The largest message edgefleet sends is a bundle chunk (at most 64 MiB, --chunk-kib): anything",
        "# bigger is refused at the broker instead of being read whole by devices.",
        f"max_packet_size {MAX_CHUNK_SIZE + PACKET_HEADROOM}",
        "persistence true",
        f"persistence_location {spec.data_dir}/",
        "autosave_interval 60",
        "log_dest stderr",
    ]
    if spec.run_as:
        lines += [
            "# The account the broker switches to when started as root; it must read the passwd files and",
            "# server.key.",
            f"user {spec.run_as}",
        ]
    return "\n".join(lines) + "\n"


def _write_text(path: Path, text: str, private: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    if private:
        path.chmod(0o600)


def _load_or_make_ca(out_dir: Path, name: str = "ca") -> Issued:
    cert_path, key_path = out_dir / f"{name}.crt", out_dir / "private" / f"{name}.key"
    if cert_path.exists() and key_path.exists():
        # Keeping the CA keeps every certificate already on devices valid when devices are added.
        return load_issued(cert_path, key_path)
    ca = make_ca()
    ca.write(cert_path, key_path)
    return ca


def _client_password(folder: Path) -> str:
    path = folder / "password"
    if path.exists():
        existing = path.read_text().strip()
        if existing:
            return existing
    password = new_password()
    _write_text(path, password + "\n", private=True)
    return password


def _client_cert(ca: Issued, folder: Path, identity: str, days: int) -> None:
    cert_path, key_path = folder / "client.crt", folder / "client.key"
    if cert_path.exists() and key_path.exists():
        current = load_issued(cert_path, key_path)
        if current.cert.issuer == ca.cert.subject and _common_name(current) == identity:
            return
    make_client_cert(ca, identity, days).write(cert_path, key_path)


def _common_name(issued: Issued) -> str:
    values = issued.cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(values[0].value) if values else ""


def _agent_snippet(spec: BrokerConfigSpec, identity: str) -> str:
    # the broker makes the user name the client id on the device listener: the agent asks for that one
    settings: dict[str, str] = {"broker": spec.broker_url, "broker_ca": "ca.crt", "mqtt_client_id": identity}
    if spec.auth == "password":
        settings |= {"broker_username": identity, "broker_password_file": "password"}
    else:
        settings |= {"broker_cert": "client.crt", "broker_key": "client.key"}
    header = (
        f"# Broker settings for device {identity}: merge into its agent.yaml and copy this folder's files\n"
        "# next to it (relative paths are taken from agent.yaml's folder).\n"
    )
    return header + yaml.safe_dump(settings, sort_keys=False)


def write_broker_config(spec: BrokerConfigSpec) -> BrokerConfigFiles:
    """Write the broker's files and one folder of credentials per identity into `spec.out_dir`.

    Run it again with more devices to add them: the CA and existing credentials are kept.
    """
    out = spec.out_dir.resolve()
    install_dir = spec.install_dir if spec.install_dir is not None else out
    out.mkdir(parents=True, exist_ok=True)
    try:
        ca = _load_or_make_ca(out)
        # With client certificates, operators get theirs from a CA of their own: the operator listener
        # trusts only that one, so no device certificate opens it.
        operator_ca = _load_or_make_ca(out, "operators-ca") if spec.auth == "certificate" else None
        make_server_cert(ca, spec.hostnames, spec.days).write(out / "server.crt", out / "server.key")
        passwords: dict[str, list[str]] = {"passwd": [], "passwd-operators": []}
        clients: dict[str, Path] = {}
        for identity in [*spec.operators, *spec.devices]:
            is_operator = identity in spec.operators
            folder = out / "clients" / identity
            folder.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(out / "ca.crt", folder / "ca.crt")
            if spec.auth == "password":
                password_file_name = "passwd-operators" if is_operator else "passwd"
                passwords[password_file_name].append(password_file_line(identity, _client_password(folder)))
            else:
                issuer = operator_ca if is_operator and operator_ca is not None else ca
                _client_cert(issuer, folder, identity, spec.days)
            if not is_operator:
                _write_text(folder / "broker.yaml", _agent_snippet(spec, identity))
            clients[identity] = folder
    except OSError as exc:
        raise BrokerConfigError(f"cannot write the broker configuration into {out}: {exc}") from exc
    if spec.auth == "password":
        for name, lines in passwords.items():
            _write_text(out / name, "\n".join(lines) + "\n", private=True)
    _write_text(out / "acl", render_acl(spec))
    _write_text(out / "mosquitto.conf", render_mosquitto_conf(spec, install_dir))
    password_mode = spec.auth == "password"
    return BrokerConfigFiles(
        mosquitto_conf=out / "mosquitto.conf",
        acl=out / "acl",
        password_file=out / "passwd" if password_mode else None,
        operator_password_file=out / "passwd-operators" if password_mode else None,
        ca_cert=out / "ca.crt",
        ca_key=out / "private" / "ca.key",
        operator_ca_cert=None if password_mode else out / "operators-ca.crt",
        server_cert=out / "server.crt",
        server_key=out / "server.key",
        clients=clients,
        broker_url=spec.broker_url,
        operator_url=spec.operator_url,
    )


def host_connection_flags(files: BrokerConfigFiles, spec: BrokerConfigSpec, identity: str) -> str:
    """The CLI flags that connect as `identity` with the written credentials."""
    folder = files.clients[identity]
    url = spec.operator_url if identity in spec.operators else spec.broker_url
    flags = f"--broker {url} --ca {folder / 'ca.crt'}"
    if spec.auth == "password":
        return flags + f" --username {identity} --password-file {folder / 'password'}"
    return flags + f" --cert {folder / 'client.crt'} --key {folder / 'client.key'}"


def _split_devices(args: argparse.Namespace) -> list[str]:
    devices: list[str] = []
    for chunk in args.devices or []:
        devices += [d.strip() for d in chunk.split(",") if d.strip()]
    if args.devices_file:
        try:
            text = Path(args.devices_file).read_text()
        except OSError as exc:
            raise BrokerConfigError(f"cannot read --devices-file {args.devices_file}: {exc}") from exc
        devices += [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]
    return devices


def run_broker_config(args: argparse.Namespace) -> int:
    """CLI entry point (edgefleet broker-config)."""
    devices = _split_devices(args)
    if not devices:
        raise BrokerConfigError("no devices given; use --devices id1,id2,... or --devices-file FILE")
    try:
        spec = BrokerConfigSpec(
            out_dir=args.out,
            devices=devices,
            auth=args.auth,
            hostnames=args.hostname or ["localhost", "127.0.0.1"],
            port=args.port,
            operator_port=args.operator_port,
            bind=args.bind,
            admin_user=args.admin_user,
            monitor_user=args.monitor_user,
            install_dir=args.install_dir,
            data_dir=args.data_dir,
            days=args.days,
            run_as=args.run_as,
        )
    except ValidationError as exc:
        raise BrokerConfigError(f"broker-config: {first_validation_error(exc, 'arguments')}") from None
    files = write_broker_config(spec)
    if args.json:
        print(files.model_dump_json(indent=2))
        return 0
    print(f"wrote a mosquitto configuration for {len(spec.devices)} device(s) into {spec.out_dir}")
    print(f"  broker:   mosquitto -c {files.mosquitto_conf}")
    print(f"            devices connect to {spec.broker_url}, host tools to {spec.operator_url}")
    print(f"  ACL:      {files.acl}")
    if files.password_file and files.operator_password_file:
        print(
            f"  passwords: {files.password_file} (devices), {files.operator_password_file} (operators); "
            "PBKDF2-SHA512"
        )
    print(f"  CA key:   {files.ca_key}  (not needed on the broker; keep it to add devices later)")
    account = spec.run_as or "mosquitto"
    secrets = (files.password_file, files.operator_password_file, files.server_key)
    secrets_text = ", ".join(str(p) for p in secrets if p is not None)
    print(f"  the broker's account ({account}) must be able to read {secrets_text}")
    print(f"  devices:  {spec.out_dir / 'clients'}/DEVICE/ (copy to each device; see broker.yaml there)")
    print(f"  host:     edgefleet status {host_connection_flags(files, spec, spec.admin_user)}")
    print(f"  monitor:  edgefleet watch {host_connection_flags(files, spec, spec.monitor_user)}")
    return 0
