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
- Secrets for one node (a new broker password): `new_node_key() -> PEM` (the node's X25519 key
  pair, made by `edge-node provision`), `node_public_key(pem)` and `node_key(path) ->
  "x25519:..."` (which makes the pair in `path` if missing: the fallback for nodes provisioned
  before provisioning made it), `encrypt_secret(node_public, bytes) -> str` on the operator's
  side, `decrypt_secret(path, str) -> bytes` on the node's. The sealed secret travels inside a
  signed envelope, so it is both private to the node and from a trusted operator.
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
    _write_private_key(path, pem)
    return Signer(key).public


def _write_private_key(path: str | os.PathLike[str], pem: bytes) -> None:
    """A new 0600 file; never over an existing one, never through a symlink."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "wb") as file:
        file.write(pem)
        file.flush()
        os.fsync(file.fileno())


def load_signer(path: str | os.PathLike[str]) -> Signer:
    """The private key in `path`; ValueError with one line if it is not an Ed25519 key."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    try:
        data = Path(path).read_bytes()
    except OSError as err:
        raise ValueError(f"{path}: cannot read: {err.strerror or err}") from None
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        raise ValueError(
            f"{path}: not a PEM private key without a passphrase (make one with `edge-node keygen`)"
        ) from None
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


# -- secrets for one node: X25519 + HKDF-SHA256 + ChaCha20-Poly1305 (a "sealed box") -------------

NODE_KEY_PREFIX = "x25519:"
_SECRET_INFO = b"edge-node secret v1"


def new_node_key() -> bytes:
    """A new X25519 private key for a node, PEM (PKCS#8): `edge-node provision` writes it."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    return X25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _load_node_key(pem: bytes):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError):
        raise ValueError("not a PEM private key without a passphrase") from None
    if not isinstance(key, X25519PrivateKey):
        raise ValueError("not an X25519 key (`edge-node provision` makes the node's)")
    return key


def node_public_key(pem: bytes) -> str:
    """The public key `x25519:BASE64` of a node's private key (PEM); ValueError saying why not."""
    from cryptography.hazmat.primitives import serialization

    raw = (
        _load_node_key(pem)
        .public_key()
        .public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    )
    return NODE_KEY_PREFIX + base64.b64encode(raw).decode()


def node_key(path: str | os.PathLike[str], *, create: bool = True) -> str:
    """The public key `x25519:BASE64` of the node's key pair in `path`, which the node tells a
    trusted operator. `create`: make the pair there (0600) if there is none yet (a node
    provisioned before provisioning made it); otherwise a missing file is an OSError."""
    try:
        pem = Path(path).read_bytes()
    except FileNotFoundError:
        if not create:
            raise
        pem = new_node_key()
        _write_private_key(path, pem)
    return node_public_key(pem)


def _secret_cipher(shared: bytes, ephemeral: bytes, recipient: bytes):
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    key = HKDF(hashes.SHA256(), 32, salt=ephemeral + recipient, info=_SECRET_INFO).derive(shared)
    return ChaCha20Poly1305(key)


def encrypt_secret(recipient_public: str, secret: bytes) -> str:
    """`secret` readable only by the holder of `recipient_public`'s private key (base64 text)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

    if not recipient_public.startswith(NODE_KEY_PREFIX):
        raise ValueError(f"a node key is {NODE_KEY_PREFIX}BASE64")
    recipient = base64.b64decode(recipient_public[len(NODE_KEY_PREFIX) :], validate=True)
    ephemeral_key = X25519PrivateKey.generate()
    ephemeral = ephemeral_key.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    shared = ephemeral_key.exchange(X25519PublicKey.from_public_bytes(recipient))
    nonce = os.urandom(12)
    sealed = _secret_cipher(shared, ephemeral, recipient).encrypt(nonce, secret, None)
    return base64.b64encode(ephemeral + nonce + sealed).decode()


def decrypt_secret(private_path: str | os.PathLike[str], token: str) -> bytes:
    """The secret `encrypt_secret` sealed for this node; ValueError if it was not, or was altered."""
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey

    try:
        data = base64.b64decode(token, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("the secret is not base64") from None
    if len(data) < 32 + 12 + 16:
        raise ValueError("the secret is too short to be sealed")
    key = _load_node_key(Path(private_path).read_bytes())
    ephemeral, nonce, sealed = data[:32], data[32:44], data[44:]
    recipient = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    shared = key.exchange(X25519PublicKey.from_public_bytes(ephemeral))
    try:
        return _secret_cipher(shared, ephemeral, recipient).decrypt(nonce, sealed, None)
    except InvalidTag:
        raise ValueError("the secret was not sealed for this node's key, or was altered") from None
