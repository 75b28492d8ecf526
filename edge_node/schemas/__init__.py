"""JSON Schemas of the wire contract (DESIGN §4): reading, status, heartbeat; envelope and reply
(remote commands, issue 13)."""

import json
from importlib.resources import files


def load(name: str) -> dict:
    """The schema `name` ("reading", "status", "heartbeat", "envelope", "reply") as a dict."""
    return json.loads(files(__package__).joinpath(f"{name}.json").read_text())
