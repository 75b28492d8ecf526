"""Ed25519 signatures for what an operator sends a node: remote commands today, software updates
tomorrow. The cryptography comes from `cryptography` (pyca), imported only when a key is made or
a signature checked: it costs a node ~7 MB of RSS, which an idle daemon does not pay.

The API, for every user of it:

- `generate_key(path) -> public`: a new private key, PEM (PKCS#8) in a 0600 file; its public
  key as one line `ed25519:BASE64`.
- `load_signer(path) -> Signer`: `.public` (the `ed25519:...` line) and `.seal(document)`.
- `Signer.seal(document: dict) -> dict`: `{"body": JSON text of document, "key": public,
  "sig": BASE64}`. The signature covers the body's exact bytes, so nothing has to be
  canonicalised: what was signed is what is parsed.
- `unseal(sealed, trusted_keys) -> dict`: the document, or `SignatureError` saying why not
  (`unsigned`, `untrusted key`, `bad signature`).
- `parse_public_key(text) -> bytes`: the 32 raw bytes of an `ed25519:...` line, or ValueError.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
from collections.abc import Iterable
from pathlib import Path

PUBLIC_PREFIX = "ed25519:"
MAX_BODY_CHARS = 16_384


class SignatureError(ValueError):
    """A sealed document that must not be trusted; `str()` is one line saying why."""


def parse_public_key(text: str) -> bytes:
    if not isinstance(text, str) or not text.startswith(PUBLIC_PREFIX):
        raise ValueError(f"must be {PUBLIC_PREFIX}BASE64 (as `edge-node keygen` prints it)")
    try:
        raw = base64.b64decode(text[len(PUBLIC_PREFIX) :], validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"must be {PUBLIC_PREFIX}BASE64: not valid base64") from None
    if len(raw) != 32:
        raise ValueError(f"an Ed25519 public key is 32 bytes (got {len(raw)})")
    return raw


def format_public_key(raw: bytes) -> str:
    return PUBLIC_PREFIX + base64.b64encode(raw).decode()


class Signer:
    def __init__(self, private_key) -> None:
        from cryptography.hazmat.primitives import serialization

        self._key = private_key
        self.public = format_public_key(
            private_key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        )

    def sign(self, data: bytes) -> str:
        return base64.b64encode(self._key.sign(data)).decode()

    def seal(self, document: dict) -> dict:
        body = json.dumps(document, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
        return {"body": body, "key": self.public, "sig": self.sign(body.encode())}


def generate_key(path: str | os.PathLike[str]) -> str:
    """Write a new private key to `path` (0600, refusing to overwrite) and return its public key."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "wb") as file:
        file.write(pem)
        file.flush()
        os.fsync(file.fileno())
    return Signer(key).public


def load_signer(path: str | os.PathLike[str]) -> Signer:
    """The private key in `path`; ValueError with one line if it is not an Ed25519 key."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    data = Path(path).read_bytes()
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as err:
        raise ValueError(f"{path}: not a PEM private key without a passphrase ({err})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"{path}: not an Ed25519 key (make one with `edge-node keygen`)")
    return Signer(key)


def unseal(sealed, trusted_keys: Iterable[str]) -> dict:
    """The document inside `sealed` if a trusted key signed exactly its body."""
    if not isinstance(sealed, dict) or not {"body", "key", "sig"} <= sealed.keys():
        raise SignatureError("unsigned: a signed envelope {body, key, sig} is required")
    body, key, sig = sealed["body"], sealed["key"], sealed["sig"]
    if not all(isinstance(v, str) for v in (body, key, sig)) or len(body) > MAX_BODY_CHARS:
        raise SignatureError("malformed envelope: body, key and sig must be strings")
    trusted = set(trusted_keys)
    if key not in trusted:
        shown = key[:20] + "..." if len(key) > 20 else key
        raise SignatureError(f"signed by an untrusted key {shown!r}")
    try:
        signature = base64.b64decode(sig, validate=True)
    except (binascii.Error, ValueError):
        raise SignatureError("bad signature: not base64") from None
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    try:
        Ed25519PublicKey.from_public_bytes(parse_public_key(key)).verify(signature, body.encode())
    except (InvalidSignature, ValueError):
        raise SignatureError("bad signature: the envelope was altered or not signed by that key") from None
    try:
        document = json.loads(body)
    except (ValueError, RecursionError):
        raise SignatureError("malformed envelope: the signed body is not JSON") from None
    if not isinstance(document, dict):
        raise SignatureError("malformed envelope: the signed body is not a JSON object")
    return document
