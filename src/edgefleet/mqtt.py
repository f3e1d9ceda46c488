"""MQTT plumbing shared by host and device: broker URLs and paho clients set up the way edgefleet needs
(MQTT 5, TCP_NODELAY, fast reconnect, TLS and credentials). Nothing here is mosquitto-specific.
"""

from __future__ import annotations

import copy
import socket
import ssl
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode, urlparse

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edgefleet.contract.errors import EdgefleetError

DEFAULT_PORT = 1883
DEFAULT_TLS_PORT = 8883


class BrokerError(EdgefleetError):
    """The broker cannot be reached or refused us."""


# Query parameters of a broker URL -> BrokerSecurity fields.
_URL_OPTIONS = {
    "ca": "ca_file",
    "cert": "cert_file",
    "key": "key_file",
    "username": "username",
    "password_file": "password_file",
}


@dataclass(frozen=True)
class BrokerSecurity:
    """TLS files and credentials of one MQTT connection; every field is optional.

    `ca_file` is the CA that signed the broker's certificate (the system CAs when None); `cert_file` and
    `key_file` are a client certificate; the password is read from `password_file` so it never appears
    on a command line or in a URL.
    """

    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    username: str | None = None
    password_file: str | None = None

    @property
    def wants_tls(self) -> bool:
        return any((self.ca_file, self.cert_file, self.key_file))

    def merged(self, override: BrokerSecurity) -> BrokerSecurity:
        """These settings with every field that `override` sets replaced."""
        changes = {name: value for name, value in vars(override).items() if value is not None}
        return replace(self, **changes)

    def read_password(self) -> str | None:
        if self.password_file is None:
            return None
        try:
            text = Path(self.password_file).read_text(encoding="utf-8")
        except OSError as exc:
            raise BrokerError(
                f"cannot read the MQTT password file {self.password_file} ({exc.strerror or exc})"
            ) from exc
        lines = text.splitlines()
        if not lines or not lines[0]:
            raise BrokerError(f"the MQTT password file {self.password_file} is empty")
        return lines[0]


@dataclass(frozen=True)
class BrokerAddress:
    """Where the broker is and how to authenticate: `mqtt://HOST[:PORT]` (plain TCP, default port 1883) or
    `mqtts://[USER@]HOST[:PORT][?ca=FILE&cert=FILE&key=FILE&password_file=FILE]` (TLS, default 8883)."""

    host: str
    port: int
    tls: bool = False
    security: BrokerSecurity = field(default_factory=BrokerSecurity)

    @classmethod
    def parse(cls, url: str) -> BrokerAddress:
        """Accept mqtt://host[:port], mqtts://... with security options, or host[:port]."""
        parsed = urlparse(url if "://" in url else f"mqtt://{url}")
        if parsed.scheme not in ("mqtt", "mqtts") or not parsed.hostname:
            raise BrokerError(
                f"broker URL {url!r} is not valid; use mqtt://HOST[:PORT] or mqtts://HOST[:PORT]"
            )
        try:
            port = parsed.port or (DEFAULT_TLS_PORT if parsed.scheme == "mqtts" else DEFAULT_PORT)
        except ValueError as exc:
            raise BrokerError(f"broker URL {url!r}: bad port") from exc
        if parsed.password is not None:
            raise BrokerError(
                f"broker URL {_redact(url)!r} contains a password; put it in a file and name the file with "
                "--password-file (or password_file=FILE in the URL)"
            )
        options: dict[str, str] = {}
        for key, value in parse_qsl(parsed.query, keep_blank_values=True):
            if key not in _URL_OPTIONS:
                known = ", ".join(_URL_OPTIONS)
                raise BrokerError(f"broker URL {url!r}: unknown option {key!r} (known: {known})")
            options[_URL_OPTIONS[key]] = value
        if parsed.username:
            options.setdefault("username", parsed.username)
        address = cls(parsed.hostname, port, parsed.scheme == "mqtts", BrokerSecurity(**options))
        address.check()
        return address

    def with_security(self, override: BrokerSecurity) -> BrokerAddress:
        """This address with the given security settings applied over those of the URL."""
        address = replace(self, security=self.security.merged(override))
        address.check()
        return address

    def check(self) -> None:
        """Refuse combinations that cannot work, before anything connects."""
        sec = self.security
        if sec.wants_tls and not self.tls:
            raise BrokerError(
                f"a CA file or client certificate was given for {self}, which is not a TLS address; "
                f"use mqtts://{self.host}:{DEFAULT_TLS_PORT if self.port == DEFAULT_PORT else self.port}"
            )
        if sec.key_file and not sec.cert_file:
            raise BrokerError("a client key was given without its certificate; give the certificate too")
        if sec.password_file and not sec.username:
            raise BrokerError("a password file was given without a user name; give the user name too")

    @property
    def url(self) -> str:
        """The full URL, security options included (round-trips through `parse`)."""
        scheme = "mqtts" if self.tls else "mqtt"
        user = f"{quote(self.security.username, safe='')}@" if self.security.username else ""
        options = {
            key: getattr(self.security, name)
            for key, name in _URL_OPTIONS.items()
            if key != "username" and getattr(self.security, name) is not None
        }
        query = f"?{urlencode(options)}" if options else ""
        return f"{scheme}://{user}{self.host}:{self.port}{query}"

    def __str__(self) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}"


def _redact(url: str) -> str:
    parsed = urlparse(url)
    if parsed.password is None:
        return url
    return url.replace(f":{parsed.password}@", ":***@", 1)


def tls_context(security: BrokerSecurity) -> ssl.SSLContext:
    """A client TLS context: the broker's certificate is verified against `ca_file` (or the system CAs) and
    must name the host we connect to; TLS 1.2 at least."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    what = "CA file"
    try:
        if security.ca_file:
            context.load_verify_locations(cafile=security.ca_file)
        else:
            context.load_default_certs()
        if security.cert_file:
            what = "client certificate/key"
            context.load_cert_chain(security.cert_file, security.key_file)
    except (OSError, ssl.SSLError) as exc:
        name = security.ca_file if what == "CA file" else f"{security.cert_file} / {security.key_file}"
        raise BrokerError(f"cannot load the {what} {name}: {getattr(exc, 'strerror', None) or exc}") from exc
    return context


def apply_security(client: mqtt.Client, address: BrokerAddress) -> None:
    """Configure TLS and credentials on a client that has not connected yet."""
    if address.tls:
        client.tls_set_context(tls_context(address.security))
    if address.security.username:
        client.username_pw_set(address.security.username, address.security.read_password())


def refusal_hint(reason: Any) -> str:
    """What to check when the broker refused the CONNECT for `reason` (a paho ReasonCode or its text)."""
    text = str(reason).lower()
    if "not authorized" in text or "user name or password" in text or "bad authentication" in text:
        return (
            "; check the user name and password file (--username/--password-file; in the agent config "
            "broker_username/broker_password_file) or the client certificate against the broker's users "
            "and ACL"
        )
    return ""


def _nodelay(client: mqtt.Client, userdata: Any, sock: Any) -> None:
    # Request/response round trips drop from ~68 ms to <1 ms without Nagle (see mqtt-facts.md).
    if isinstance(sock, socket.socket):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def new_client(client_id: str) -> mqtt.Client:
    client = mqtt.Client(
        callback_api_version=CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=MQTTProtocolVersion.MQTTv5,
    )
    client.on_socket_open = _nodelay
    client.reconnect_delay_set(min_delay=1, max_delay=10)
    return client


def connect_properties(session_expiry_s: int, max_packet_bytes: int | None = None) -> Properties:
    props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]  # paho leaves it unannotated
    props.SessionExpiryInterval = session_expiry_s
    if max_packet_bytes is not None:  # MQTT 5: the broker must not send us a larger packet (it drops it)
        props.MaximumPacketSize = max_packet_bytes
    return props


_PUBLISH_TEMPLATE = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]  # paho: unannotated
# PUBLISH properties paho checks nothing about but their name (UserProperty: a list of pairs). paho's
# Properties() and its checked assignment cost ~100 us for a reply's three; copying a template and storing
# these directly costs ~5 us, which is what lets the agent's network thread keep up with a burst.
_UNCHECKED_PUBLISH_FIELDS = frozenset(
    {"ContentType", "CorrelationData", "ResponseTopic", "MessageExpiryInterval", "UserProperty"}
)


def publish_properties(**fields: Any) -> Properties:
    """PUBLISH properties by paho attribute name, e.g. ContentType=..., CorrelationData=..."""
    props = copy.copy(_PUBLISH_TEMPLATE)
    for name, value in fields.items():
        if name in _UNCHECKED_PUBLISH_FIELDS and (name != "UserProperty" or isinstance(value, list)):
            object.__setattr__(props, name, value)
        else:
            setattr(props, name, value)  # paho's own checks
    return props


def connect(
    client: mqtt.Client,
    address: BrokerAddress,
    *,
    keepalive: int = 30,
    clean_start: bool = True,
    session_expiry_s: int = 0,
    max_packet_bytes: int | None = None,
) -> None:
    """Open the TCP connection, with TLS and credentials when the address has them (the MQTT handshake
    completes in the network loop)."""
    apply_security(client, address)
    try:
        client.connect(
            address.host,
            address.port,
            keepalive=keepalive,
            clean_start=clean_start,
            properties=connect_properties(session_expiry_s, max_packet_bytes),
        )
    except ssl.SSLError as exc:
        why = getattr(exc, "verify_message", None) or exc.reason or exc
        raise BrokerError(
            f"TLS handshake with the MQTT broker at {address} failed ({why}); check the CA file (--ca, or "
            f"broker_ca in the agent config), the client certificate if the broker wants one, and that the "
            f"broker's certificate names {address.host!r}"
        ) from exc
    except OSError as exc:
        raise BrokerError(
            f"cannot reach the MQTT broker at {address} ({exc.strerror or exc}); "
            "check that it runs and that --broker is right"
        ) from exc
