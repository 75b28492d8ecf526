"""Broker URLs: the one parser behind every tool that takes one (the daemon's `broker.url`,
provision, check-broker, fleet, simulate, ingest, alerts, remote).

`mqtt://HOST[:PORT]` or `mqtts://HOST[:PORT]`, nothing else. Credentials never go in a URL (a
URL is shown, logged and kept in shell history): a URL holding any is refused before anything
else is looked at, and no message here echoes a URL that holds one, or its query. A password
over plain `mqtt://` travels in clear, so `refuse_clear_password` refuses it unless the user
said `--insecure` (`broker.allow_insecure = true` in a node's config).
"""

from __future__ import annotations

import json
from typing import NamedTuple
from urllib.parse import urlsplit


class BrokerAddress(NamedTuple):
    url: str  # as given: it holds no credentials, so it may be shown
    host: str
    port: int
    tls: bool


def _show(url: str) -> str:
    shown = json.dumps(url, ensure_ascii=False)
    return shown if len(shown) <= 60 else shown[:57] + "..."


def parse_broker_url(url: str, *, credentials_hint: str = "--username and --password-file") -> BrokerAddress:
    """The URL's parts; ValueError with the problem in one line (naming `credentials_hint` as
    the place for credentials) otherwise."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as err:
        if "@" in url:
            raise ValueError(f"must not contain credentials; use {credentials_hint}") from None
        raise ValueError(f"not a valid URL: {err}") from None
    if parts.username is not None or parts.password is not None or "@" in parts.netloc:
        raise ValueError(f"must not contain credentials; use {credentials_hint}")  # first: never echo them
    if parts.query or parts.fragment:
        raise ValueError(
            f"must not have a path, query or fragment (got {_show(url.split('?')[0].split('#')[0])}...)"
        )
    if parts.scheme not in ("mqtt", "mqtts"):
        raise ValueError(f"must start with mqtt:// or mqtts:// (got {_show(url)})")
    if not parts.hostname:
        raise ValueError(f"needs a host (got {_show(url)})")
    if port == 0:
        raise ValueError(f"port must be 1..65535 (got {_show(url)})")
    if parts.path not in ("", "/"):
        raise ValueError(f"must not have a path, query or fragment (got {_show(url)})")
    tls = parts.scheme == "mqtts"
    return BrokerAddress(url, parts.hostname, port or (8883 if tls else 1883), tls)


def refuse_clear_password(
    tls: bool, has_password: bool, *, insecure: bool, insecure_hint: str = "--insecure"
) -> None:
    """ValueError when a password would travel in clear (no TLS) and the user did not say so."""
    if has_password and not tls and not insecure:
        raise ValueError(
            f"a password over mqtt:// travels in clear: use an mqtts:// broker, or {insecure_hint} "
            "on a network you trust"
        )
