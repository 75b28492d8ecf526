"""A city broker in miniature for the tests: a CA and certificates made with openssl, a Mosquitto
with TLS, `allow_anonymous false`, a password file made by `mosquitto_passwd` and a `%u` ACL.

`SecureBroker` (and the `secure_broker` fixture) is what `check-broker` and the provisioning
end-to-end tests run against. Its listeners, all on 127.0.0.1:

- `url`       mqtts://localhost:PORT, TLS (server cert for DNS:localhost and IP:127.0.0.1, signed
              by `ca`), username + password;
- `cert_url`  mqtts://localhost:PORT, TLS with a required client certificate whose CN is the
              username (`client_cert(name)` makes one);
- `plain_port` LocalBroker's plain loopback listener: the same passwords and ACL, no TLS.

`rogue_ca` is a second CA that signed nothing the broker uses: a node configured with it must
refuse the broker. Use the fixture in a test module with ``secure_broker = pki.secure_broker``
(an assignment, so ruff does not see the fixture argument as a redefinition), or build a
`SecureBroker` in a fixture of your own (e.g. with another ACL).
"""

from __future__ import annotations

import json
import secrets
import socket
import ssl
import subprocess
import threading
import time
import uuid
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from operations.mosquitto import BrokerUnavailable, LocalBroker, free_port

PREFIX = "city/terrassa/nodes"
NODES = ("trs-0042", "trs-0043")
AUDITOR = "auditor"

# The ACL that provisioning/broker_check.py recommends for the city broker. In a Mosquitto ACL
# file `pattern` lines apply to every user wherever they stand; `topic` lines apply to the user
# named by the `user` line above them, and before the first `user` line to anonymous clients
# only (so a rule for every node must be a `pattern`, even without %u).
CITY_ACL = """\
# Every node may write only under its own id (%u is the username, = the node id) ...
pattern write {prefix}/%u/#
# ... and read its own topics (its check messages, its cmd/ topics).
pattern read {prefix}/%u/#
# Any node may read every node's check/ topics, so that `edge-node check-broker` can listen on
# another node's topic while it publishes there and show that nothing arrives. Without this
# line, brokers that check subscriptions refuse the listener ("no read access to verify").
pattern read {prefix}/+/check/#

# A privileged test user that reads everything: the tests' independent witness.
user {auditor}
topic read #
"""


def openssl(*args: str, cwd: Path | str) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_ca(directory: Path | str, name: str) -> Path:
    """A self-signed CA: `name.pem` and `name.key` in `directory`; returns the certificate."""
    openssl(
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-keyout",
        f"{name}.key",
        "-out",
        f"{name}.pem",
        "-days",
        "2",
        "-subj",
        f"/CN={name}",
        cwd=directory,
    )
    return Path(directory) / f"{name}.pem"


def make_cert(
    directory: Path | str, ca: str, name: str, *, cn: str, extensions: str = ""
) -> tuple[Path, Path]:
    """A certificate `name.pem` with key `name.key`, CN `cn`, signed by CA `ca` (a make_ca name).

    `extensions` are x509v3 lines, e.g. "subjectAltName=DNS:localhost,IP:127.0.0.1".
    """
    directory = Path(directory)
    openssl(
        "req",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-keyout",
        f"{name}.key",
        "-out",
        f"{name}.csr",
        "-subj",
        f"/CN={cn}",
        cwd=directory,
    )
    ext = directory / f"{name}.ext"
    ext.write_text(extensions + "\n")
    openssl(
        "x509",
        "-req",
        "-in",
        f"{name}.csr",
        "-CA",
        f"{ca}.pem",
        "-CAkey",
        f"{ca}.key",
        "-CAcreateserial",
        "-out",
        f"{name}.pem",
        "-days",
        "2",
        "-extfile",
        ext.name,
        cwd=directory,
    )
    (directory / f"{name}.key").chmod(0o600)
    return directory / f"{name}.pem", directory / f"{name}.key"


def make_server_cert(directory: Path | str, ca: str, name: str = "server") -> tuple[Path, Path]:
    return make_cert(
        directory, ca, name, cn="localhost", extensions="subjectAltName=DNS:localhost,IP:127.0.0.1"
    )


class SecureBroker:
    """Mosquitto with TLS, passwords and a `%u` ACL, on free loopback ports (see the module doc).

    `users` maps each username to its password (random per broker): the nodes in `nodes` and
    `AUDITOR`, who may read everything. `acl` replaces `CITY_ACL` (a format string with
    `{prefix}` and `{auditor}`), to try brokers configured otherwise.
    """

    host = "localhost"

    def __init__(
        self,
        directory: Path | str,
        *,
        nodes: tuple[str, ...] = NODES,
        acl: str = CITY_ACL,
        prefix: str = PREFIX,
        bind_client_id: bool = False,
    ):
        self.dir = Path(directory)
        self.pki = self.dir / "pki"
        self.pki.mkdir(parents=True, exist_ok=True)
        self.prefix = prefix
        self.nodes = nodes
        self.bind_client_id = bind_client_id  # use_username_as_clientid: README's recommended broker
        self.users = {name: secrets.token_urlsafe(12) for name in (*nodes, AUDITOR)}
        self.ca = make_ca(self.pki, "city-ca")
        self.rogue_ca = make_ca(self.pki, "rogue-ca")
        self.server_cert, self.server_key = make_server_cert(self.pki, "city-ca")
        passwd = self.pki / "passwd"
        for i, (name, password) in enumerate(self.users.items()):
            create = ["-c"] if i == 0 else []
            subprocess.run(
                ["mosquitto_passwd", "-b", *create, str(passwd), name, password],
                check=True,
                capture_output=True,
            )
        self.acl_file = self.pki / "acl"
        self.acl_file.write_text(acl.format(prefix=prefix, auditor=AUDITOR))
        self.port = self.cert_port = 0
        self.broker = LocalBroker(workdir=str(self.dir / "broker"))

    @property
    def url(self) -> str:
        return f"mqtts://{self.host}:{self.port}"

    @property
    def cert_url(self) -> str:
        return f"mqtts://{self.host}:{self.cert_port}"

    @property
    def plain_port(self) -> int:
        return self.broker.port

    def start(self) -> SecureBroker:
        for attempt in range(3):  # a free port can be taken between our probe and mosquitto's bind
            self.port, self.cert_port = free_port(), free_port()
            self.broker.extra_conf = self._conf()
            try:
                self.broker.start()
            except BrokerUnavailable:
                if attempt == 2:
                    raise
                continue
            for port in (self.port, self.cert_port):  # LocalBroker waits for its own listener only
                _wait_listening(port)
            return self
        raise AssertionError("unreachable")

    def _conf(self) -> str:
        tls = f"cafile {self.ca}\ncertfile {self.server_cert}\nkeyfile {self.server_key}\n"
        if self.bind_client_id:  # a listener option: each listener of the nodes has it
            tls += "use_username_as_clientid true\n"
        return (
            "allow_anonymous false\n"
            f"password_file {self.pki / 'passwd'}\n"
            f"acl_file {self.acl_file}\n"
            f"listener {self.port} 127.0.0.1\n{tls}"
            f"listener {self.cert_port} 127.0.0.1\n{tls}"
            "require_certificate true\nuse_identity_as_username true\n"
        )

    def close(self) -> None:
        self.broker.close()

    def __enter__(self) -> SecureBroker:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    def password_file(self, user: str, directory: Path | str, *, password: str | None = None) -> Path:
        """`user`'s password (or `password`) in `directory`/secret-`user`, mode 0600, as a node keeps it."""
        path = Path(directory) / f"secret-{user}"
        path.write_text((self.users[user] if password is None else password) + "\n")
        path.chmod(0o600)
        return path

    def client_cert(self, name: str, *, ca: str = "city-ca") -> tuple[Path, Path]:
        """A client certificate (and key) with CN `name`, for `cert_url`."""
        return make_cert(self.pki, ca, f"client-{name}", cn=name, extensions="extendedKeyUsage=clientAuth")

    def subscriber(self, topic: str = "#", *, user: str = AUDITOR) -> Subscriber:
        return Subscriber(self, topic, user=user)

    def publish(self, topic: str, payload: bytes | str, *, user: str, timeout: float = 5.0) -> None:
        """Publish one QoS 1 message as `user` over TLS and wait for its PUBACK.

        A PUBACK proves nothing about delivery: Mosquitto acknowledges an ACL-denied publish in
        MQTT 3.1.1 and drops it. Only a subscriber shows what arrived.
        """
        client = self._client(user, f"{user}-pub-{uuid.uuid4().hex[:6]}")
        client.loop_start()
        try:
            client.publish(topic, payload, qos=1).wait_for_publish(timeout)
        finally:
            client.disconnect()
            client.loop_stop()

    def _client(self, user: str, client_id: str) -> mqtt.Client:
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id)
        client.username_pw_set(user, self.users[user])
        client.tls_set(ca_certs=str(self.ca), cert_reqs=ssl.CERT_REQUIRED)
        client.connect(self.host, self.port, keepalive=10)
        return client


class Subscriber:
    """A TLS client of `user` subscribed to `topic` (QoS 1), recording what arrives."""

    def __init__(self, broker: SecureBroker, topic: str, *, user: str, timeout: float = 5.0):
        self.topic = topic
        self.messages: list[tuple[str, bytes]] = []
        self.cond = threading.Condition()
        self.granted: list[int] | None = None  # SUBACK codes: 0..2 granted QoS, 128 refused
        self.client = broker._client(user, f"{user}-sub-{uuid.uuid4().hex[:6]}")
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message
        self.client.loop_start()
        self.client.subscribe(topic, qos=1)
        self.wait_for(lambda: self.granted is not None, timeout, "SUBACK")

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties) -> None:
        with self.cond:
            self.granted = [code.value for code in reason_codes]
            self.cond.notify_all()

    def _on_message(self, client, userdata, msg) -> None:
        with self.cond:
            self.messages.append((msg.topic, msg.payload))
            self.cond.notify_all()

    def topics(self) -> list[str]:
        with self.cond:
            return [topic for topic, _ in self.messages]

    def payloads(self, topic: str) -> list[dict]:
        with self.cond:
            return [json.loads(p) for t, p in self.messages if t == topic]

    def wait_for(self, predicate, timeout: float = 5.0, what: str = "condition") -> None:
        deadline = time.monotonic() + timeout
        with self.cond:
            while not predicate():
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"timed out after {timeout} s waiting for {what}")
                self.cond.wait(min(left, 0.1))

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def __enter__(self) -> Subscriber:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _wait_listening(port: int, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.01)


@pytest.fixture(scope="module")
def secure_broker(tmp_path_factory):
    """One `SecureBroker` per test module (making the PKI takes a moment): don't stop it in a test."""
    with SecureBroker(tmp_path_factory.mktemp("secure-broker")) as broker:
        yield broker
