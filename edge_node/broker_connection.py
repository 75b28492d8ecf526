"""How to reach a broker, set up once for the daemon and for the tools: its address (the one URL
parser, `edge_node.broker_url`), the credentials, TLS (the broker's certificate required and its
host name checked, against `ca_file` or the system's CAs; a client certificate where one is
given) and the MQTT protocol ("5" or "3.1.1").

The daemon's forwarder builds its asyncio client (aiomqtt) from `aiomqtt_options()`; the tools
(the fleet view, check-broker, the benchmarks, the city's ingest and alerts) build paho's threaded
client with `paho_client()`.
Both are paho underneath: aiomqtt is an asyncio face on paho, which the daemon's TaskGroup needs;
the tools are plain threads waiting for callbacks, where paho alone is the smaller and more direct
choice (and the one whose MQTT 5 reason codes and manual acknowledgements the tools use).
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .broker_url import parse_broker_url, refuse_clear_password

if TYPE_CHECKING:
    import paho.mqtt.client as paho

    from .config import BrokerConfig

PROTOCOLS = ("5", "3.1.1")


@dataclass(frozen=True)
class BrokerConnection:
    host: str
    port: int
    tls: bool
    username: str | None = None
    password: str | None = None
    ca_file: str | None = None
    client_cert: str | None = None
    client_key: str | None = None
    protocol: str = "5"
    keepalive_s: int = 30

    @classmethod
    def of_node(cls, broker: BrokerConfig) -> BrokerConnection:
        """A node's, from its validated config; the password file is read now (OSError if gone)."""
        return cls(
            host=broker.host,
            port=broker.port,
            tls=broker.tls,
            username=broker.username,
            password=broker.password(),
            ca_file=str(broker.ca_file) if broker.ca_file else None,
            client_cert=str(broker.client_cert) if broker.client_cert else None,
            client_key=str(broker.client_key) if broker.client_key else None,
            protocol=broker.protocol,
            keepalive_s=broker.keepalive_s,
        )

    @classmethod
    def of_tool(
        cls,
        url: str,
        *,
        username: str | None = None,
        password: str | None = None,
        ca_file: str | None = None,
        client_cert: str | None = None,
        client_key: str | None = None,
        insecure: bool = False,
        protocol: str = "5",
    ) -> BrokerConnection:
        """A tool's, from its --broker URL and options: ValueError (one line) for a URL the one
        parser refuses, or a password that would travel in clear without --insecure. A CA file
        means TLS, as for mqtts://."""
        address = parse_broker_url(url)
        tls = address.tls or ca_file is not None
        refuse_clear_password(tls, password is not None, insecure=insecure)
        return cls(
            address.host, address.port, tls, username, password, ca_file, client_cert, client_key, protocol
        )

    def aiomqtt_options(self) -> dict[str, Any]:
        """The keyword arguments of `aiomqtt.Client` that say where and how to connect."""
        import aiomqtt

        tls = None
        if self.tls:
            tls = aiomqtt.TLSParameters(
                ca_certs=self.ca_file,
                certfile=self.client_cert,
                keyfile=self.client_key,
                cert_reqs=ssl.CERT_REQUIRED,
            )
        from .acked_client import PROTOCOLS as versions

        return {
            "hostname": self.host,
            "port": self.port,
            "username": self.username,
            "password": self.password,
            "tls_params": tls,
            "protocol": versions[self.protocol],
            "keepalive": self.keepalive_s,
        }

    def paho_client(self, client_id: str, **options: Any) -> paho.Client:
        """A threaded paho client with these credentials and TLS, not yet connected (`connect`).
        OSError or ValueError when a certificate or key cannot be loaded."""
        import paho.mqtt.client as paho

        version = paho.MQTTv5 if self.protocol == "5" else paho.MQTTv311
        client = paho.Client(
            paho.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=version, **options
        )
        if self.username is not None:
            client.username_pw_set(self.username, self.password)
        if self.tls:
            client.tls_set(
                ca_certs=self.ca_file,
                certfile=self.client_cert,
                keyfile=self.client_key,
                cert_reqs=ssl.CERT_REQUIRED,
            )
        return client

    def connect(self, client: paho.Client, **options: Any) -> None:
        """Connect a client from `paho_client` (DNS, TCP and TLS: raises OSError here)."""
        client.connect(self.host, self.port, keepalive=self.keepalive_s, **options)

    def connect_async(self, client: paho.Client, **options: Any) -> None:
        """Connect a client from `paho_client` in its network thread (`loop_start`), which retries
        until the broker answers."""
        client.connect_async(self.host, self.port, keepalive=self.keepalive_s, **options)
