"""Broker URLs and secrets (issue 11): one parser for every tool, no credentials in a URL, no
password over plain mqtt:// unless --insecure / broker.allow_insecure says so, and no URL with
a password ever printed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from edge_node.broker_url import BrokerAddress, parse_broker_url
from edge_node.cli import build_parser
from operations.mosquitto import free_port
from provisioning.provision import UsageError, config_document, validate

SECRET = "hunter2-s3cret"
WITH_CREDENTIALS = [
    f"mqtt://ops:{SECRET}@127.0.0.1:1883",
    f"mqtts://ops:{SECRET}@broker.example",
    f"mqtt://:{SECRET}@broker.example",
    f"mqtt://ops:{SECRET}@broker.example:99999",  # a bad port too: still no echo
    f"mqtt://broker.example/?password={SECRET}",
    f"mqtt://broker.example#{SECRET}",
]


def test_the_one_parser():
    assert parse_broker_url("mqtt://b.example") == BrokerAddress("mqtt://b.example", "b.example", 1883, False)
    assert parse_broker_url("mqtts://b.example:9000").port == 9000
    assert parse_broker_url("mqtts://b.example").port == 8883
    for url in WITH_CREDENTIALS:
        with pytest.raises(ValueError) as raised:
            parse_broker_url(url)
        assert SECRET not in str(raised.value) and "\n" not in str(raised.value)


def _edge_node(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "edge_node", *argv], capture_output=True, text=True, timeout=60
    )


@pytest.mark.parametrize("url", WITH_CREDENTIALS[:2] + WITH_CREDENTIALS[4:5])
def test_every_tool_refuses_credentials_in_the_url_in_one_line_without_echoing_them(url, tmp_path):
    for argv in (
        ["fleet", "--broker", url, "--listen", "0"],
        ["simulate", "--broker", url, "--nodes", "1", "--seconds", "1", "--workdir", str(tmp_path)],
        ["ingest", "--broker", url, "--db", f"sqlite:///{tmp_path}/city.db"],
    ):
        result = _edge_node(*argv)
        assert result.returncode == 2, (argv, result.stderr)
        assert result.stderr.count("\n") == 1 and "--broker" in result.stderr, result.stderr
        assert SECRET not in result.stderr + result.stdout


def test_a_password_over_plain_mqtt_is_refused_unless_insecure(tmp_path):
    secret = tmp_path / "ops.secret"
    secret.write_text(SECRET + "\n")
    url = f"mqtt://127.0.0.1:{free_port()}"  # nobody there: with --insecure it gets as far as connecting
    refused = _edge_node("fleet", "--broker", url, "--username", "ops", "--password-file", str(secret))
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1
    assert "travels in clear" in refused.stderr and "--insecure" in refused.stderr
    allowed = _edge_node(
        "fleet",
        "--broker",
        url,
        "--username",
        "ops",
        "--password-file",
        str(secret),
        "--insecure",
        "--listen",
        "0",
    )
    assert allowed.returncode == 1 and "cannot reach broker" in allowed.stderr
    for result in (refused, allowed):
        assert SECRET not in result.stderr + result.stdout
    credentials = ["--username", "ops", "--password-file", str(secret)]
    for argv in (
        [
            "simulate",
            "--broker",
            url,
            *credentials,
            "--nodes",
            "1",
            "--seconds",
            "1",
            "--workdir",
            str(tmp_path),
        ],
        ["ingest", "--broker", url, *credentials, "--db", f"sqlite:///{tmp_path}/city.db"],
    ):
        result = _edge_node(*argv)
        assert result.returncode == 2 and "travels in clear" in result.stderr, (argv, result.stderr)
        assert result.stderr.count("\n") == 1 and SECRET not in result.stderr + result.stdout


def _provision_args(tmp_path: Path, *extra: str):
    secret = tmp_path / "secret"
    secret.write_text(SECRET + "\n")
    return build_parser().parse_args(
        [
            "provision",
            "--node-id",
            "trs-0001",
            "--site",
            "bench",
            "--broker",
            "mqtt://broker.example",
            "--username",
            "trs-0001",
            "--password-file",
            str(secret),
            "--root",
            str(tmp_path / "root"),
            *extra,
        ]
    )


def test_provision_refuses_a_clear_password_and_writes_allow_insecure_when_told(tmp_path):
    with pytest.raises(UsageError) as raised:
        validate(_provision_args(tmp_path))
    assert str(raised.value).startswith("--broker: a password over mqtt:// travels in clear")
    plan = validate(_provision_args(tmp_path, "--insecure"))
    assert config_document(plan, {}, None)["broker"]["allow_insecure"] is True
