"""mqtts:// with the CA verified and username/password from `password_file`, against a real broker."""

from __future__ import annotations

import subprocess
import time

import pytest

from operations.mosquitto import LocalBroker, free_port

from .conftest import start_daemon, write_config
from .pki import make_ca, make_cert


@pytest.fixture
def tls_broker(tmp_path):
    """A plain listener for the test's recorder, a TLS listener with passwords for the node."""
    pki = tmp_path / "pki"
    pki.mkdir()
    make_ca(pki, "city-ca")
    make_ca(pki, "rogue-ca")
    san = "subjectAltName=DNS:localhost,IP:127.0.0.1"
    make_cert(pki, "city-ca", "server", cn="localhost", extensions=san)
    subprocess.run(
        ["mosquitto_passwd", "-b", "-c", str(pki / "passwd"), "trs-test", "s3cret-Pa55"], check=True
    )
    tls_port = free_port()
    extra = (
        f"password_file {pki / 'passwd'}\n"
        f"listener {tls_port} 127.0.0.1\n"
        f"cafile {pki / 'city-ca.pem'}\ncertfile {pki / 'server.pem'}\nkeyfile {pki / 'server.key'}\n"
    )
    with LocalBroker(extra_conf=extra, workdir=str(tmp_path / "broker")) as broker:
        broker.tls_port = tls_port
        broker.pki = pki
        yield broker


def tls_config(tmp_path, broker, *, ca: str, password: str):
    (tmp_path / "secret").write_text(password + "\n")
    (tmp_path / "secret").chmod(0o600)
    config = write_config(tmp_path, f"mqtts://localhost:{broker.tls_port}")
    text = config.read_text().replace(
        "keepalive_s = 5",
        f'keepalive_s = 5\nusername = "trs-test"\npassword_file = "secret"\nca_file = "{broker.pki / ca}"',
    )
    config.write_text(text)
    return config


def test_mqtts_with_verified_ca_and_password_file_delivers(tmp_path, tls_broker, recorder_factory, daemons):
    rec = recorder_factory(tls_broker.port)
    daemons.append(start_daemon(tls_config(tmp_path, tls_broker, ca="city-ca.pem", password="s3cret-Pa55")))
    rec.wait_seq(3)
    assert rec.payloads("/status")[0]["state"] == "online"
    assert rec.invalid == []


@pytest.mark.parametrize(
    ("ca", "password", "expected_in_log"),
    [
        ("rogue-ca.pem", "s3cret-Pa55", "certificate verify failed"),
        ("city-ca.pem", "wrong", "cannot connect"),
    ],
    ids=["untrusted-ca", "wrong-password"],
)
def test_refused_connection_is_logged_and_the_daemon_keeps_buffering(
    tmp_path, tls_broker, recorder_factory, daemons, ca, password, expected_in_log
):
    rec = recorder_factory(tls_broker.port)
    proc = start_daemon(tls_config(tmp_path, tls_broker, ca=ca, password=password))
    daemons.append(proc)
    time.sleep(4)
    assert proc.poll() is None, "a refused connection never kills the daemon"
    assert rec.seqs() == set()
    proc.terminate()
    out = proc.communicate(timeout=15)[0].decode()
    assert proc.returncode == 0
    assert expected_in_log in out, out
    assert "backlog" in out  # stopping says how much waits in the buffer
    assert "s3cret" not in out and "wrong" not in out.replace("went wrong", ""), "secrets are never logged"
