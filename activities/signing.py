"""Standard Webhooks signatures (https://www.standardwebhooks.com/).

Every request carries `webhook-id` (the message id, the same on every attempt),
`webhook-timestamp` (seconds since the epoch, fresh on every attempt) and `webhook-signature`:
`v1,` + base64 of HMAC-SHA256 over `<id>.<timestamp>.<body>`. The key is the secret's bytes;
a secret written as `whsec_<base64>` (the form the specification suggests, and the form this
service generates) stands for the bytes that base64 decodes to.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
import time

SECRET_PREFIX = "whsec_"
#: How far a receiver lets `webhook-timestamp` stray from its clock (either way) by default:
#: an older request is a replay, a much newer one a forgery or a broken clock.
DEFAULT_TOLERANCE_SECONDS = 300.0


def generate_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def signing_key(secret: str) -> bytes:
    if secret.startswith(SECRET_PREFIX):
        try:
            return base64.b64decode(secret.removeprefix(SECRET_PREFIX), validate=True)
        except (binascii.Error, ValueError):
            pass  # not base64 after all: the text itself is the key
    return secret.encode()


def sign(secret: str, message_id: str, timestamp: int, body: bytes) -> str:
    signed = f"{message_id}.{timestamp}.".encode() + body
    digest = hmac.new(signing_key(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def headers(secret: str | None, message_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """The Standard Webhooks headers of one attempt (unsigned without a secret)."""
    result = {"webhook-id": message_id, "webhook-timestamp": str(timestamp)}
    if secret:
        result["webhook-signature"] = sign(secret, message_id, timestamp, body)
    return result


def verify(
    secret: str,
    message_id: str,
    timestamp: str,
    body: bytes,
    signature_header: str,
    *,
    tolerance_seconds: float = DEFAULT_TOLERANCE_SECONDS,
    now: float | None = None,
) -> bool:
    """What a receiver does: the timestamp within `tolerance_seconds` of `now` (default: the
    clock), and any of the space-separated `v1,` signatures matching. A signature alone would let
    anyone who captured one request replay it forever."""
    if not timestamp.isascii() or not timestamp.isdecimal() or len(timestamp) > 12:
        return False
    sent = int(timestamp)
    if abs((time.time() if now is None else now) - sent) >= tolerance_seconds:
        return False
    expected = sign(secret, message_id, sent, body).encode()
    return any(hmac.compare_digest(expected, candidate.encode()) for candidate in signature_header.split())
