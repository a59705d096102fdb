"""Payload encryption for Temporal: every payload our clients and workers send (workflow inputs,
activity inputs and results, update and query arguments, memos) is stored in Temporal's history as
AES-GCM ciphertext, so that whoever reads the history (a database dump, the Web UI, the CLI) sees
no task input, result or header.

The format is Temporal's encryption sample (temporalio/samples-python `encryption/codec.py`):
the whole serialized payload, encrypted with a 12-byte random nonce in front, under metadata
`encoding: binary/encrypted` and `encryption-key-id`. Codec servers written after that sample (in
any SDK's language) can therefore decode our payloads for the Web UI given the same key.

Keys rotate: the first configured key encrypts, every configured key decrypts. The codec runs
where the SDK converts payloads, outside workflow code (the sandbox only ever sees decoded
values), so workflows stay deterministic and replay the same with or without it.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from temporalio.api.common.v1 import Payload
from temporalio.converter import (
    DataConverter,
    DefaultFailureConverter,
    DefaultPayloadConverter,
    PayloadCodec,
)

ENCODING = b"binary/encrypted"
KEY_ID_METADATA = "encryption-key-id"
#: AES-256 only: one key size, no weak choice to make.
KEY_BYTES = 32
NONCE_BYTES = 12
KEY_ID_PATTERN = r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}"


class PayloadKeyError(ValueError):
    """The configured payload keys cannot be used (the message never holds key material)."""


class PayloadDecryptionError(ValueError):
    """A payload this process cannot decrypt: a key it does not hold, or the wrong key.

    A plain (retryable) error on purpose: in a worker it fails the workflow task, which Temporal
    retries, so that the run goes on once the worker is given the right key.
    """


def parse_keys(text: str, source: str = "WFO_PAYLOAD_KEYS") -> list[tuple[str, bytes]]:
    """`id:base64key` entries, separated by commas or new lines (`#` starts a comment), in order."""
    keys: list[tuple[str, bytes]] = []
    entries = [e.strip() for line in text.splitlines() for e in line.split("#", 1)[0].split(",")]
    for position, entry in enumerate((e for e in entries if e), start=1):
        key_id, sep, encoded = entry.partition(":")
        key_id = key_id.strip()
        if not sep or not re.fullmatch(KEY_ID_PATTERN, key_id):
            raise PayloadKeyError(
                f"{source}: entry {position} must be 'id:base64key' with an id of 1-64 letters, digits or . _ -"
            )
        if any(key_id == known for known, _ in keys):
            raise PayloadKeyError(f"{source}: key id {key_id!r} appears twice")
        keys.append((key_id, _decode_key(encoded.strip(), key_id, source)))
    if not keys:
        raise PayloadKeyError(f"{source} holds no key")
    return keys


def _decode_key(encoded: str, key_id: str, source: str) -> bytes:
    try:
        # Standard or URL-safe base64, padding optional.
        key = base64.urlsafe_b64decode(
            encoded.replace("+", "-").replace("/", "_") + "=" * (-len(encoded) % 4)
        )
    except (binascii.Error, ValueError):
        raise PayloadKeyError(f"{source}: key {key_id!r} is not base64") from None
    if len(key) != KEY_BYTES:
        raise PayloadKeyError(
            f"{source}: key {key_id!r} must be {KEY_BYTES} random bytes (AES-256), base64-encoded; it has {len(key)} "
            "(generate one with: python -c 'import base64, os; print(base64.b64encode(os.urandom(32)).decode())')"
        )
    return key


def read_key_file(path: Path) -> list[tuple[str, bytes]]:
    try:
        text = path.read_text()
    except OSError as exc:
        raise PayloadKeyError(f"WFO_PAYLOAD_KEY_FILE {str(path)!r} cannot be read ({exc.strerror})") from None
    return parse_keys(text, f"WFO_PAYLOAD_KEY_FILE {str(path)!r}")


class EncryptionCodec(PayloadCodec):
    """AES-GCM over whole payloads; the first key encrypts, any of them decrypts."""

    def __init__(self, keys: Sequence[tuple[str, bytes]]) -> None:
        if not keys:
            raise PayloadKeyError("the payload codec needs at least one key")
        self.key_id = keys[0][0]
        self._encryptor = AESGCM(keys[0][1])
        self._decryptors = {key_id: AESGCM(key) for key_id, key in keys}

    async def encode(self, payloads: Iterable[Payload]) -> list[Payload]:
        key_id = self.key_id.encode()
        return [
            Payload(
                metadata={"encoding": ENCODING, KEY_ID_METADATA: key_id},
                data=self._encrypt(p.SerializeToString()),
            )
            for p in payloads
        ]

    async def decode(self, payloads: Iterable[Payload]) -> list[Payload]:
        # Payloads written before encryption was turned on pass as they are: old histories stay readable.
        return [self._decrypt(p) if p.metadata.get("encoding") == ENCODING else p for p in payloads]

    def _encrypt(self, data: bytes) -> bytes:
        nonce = os.urandom(NONCE_BYTES)
        return nonce + self._encryptor.encrypt(nonce, data, None)

    def _decrypt(self, payload: Payload) -> Payload:
        key_id = payload.metadata.get(KEY_ID_METADATA, b"").decode(errors="replace")
        decryptor = self._decryptors.get(key_id)
        if decryptor is None:
            raise PayloadDecryptionError(
                f"a payload is encrypted with key id {key_id!r}, which this process does not hold "
                f"(it holds {', '.join(map(repr, self._decryptors))}): add that key to WFO_PAYLOAD_KEYS"
            )
        try:
            return Payload.FromString(
                decryptor.decrypt(payload.data[:NONCE_BYTES], payload.data[NONCE_BYTES:], None)
            )
        except InvalidTag:
            raise PayloadDecryptionError(
                f"a payload under key id {key_id!r} does not decrypt with this process's key of that id "
                "(a different key under the same id, or altered data)"
            ) from None


def data_converter(keys: Sequence[tuple[str, bytes]] | None) -> DataConverter:
    """The data converter of every client and worker: the default one, encrypting when keys are set."""
    if not keys:
        return DataConverter.default
    return dataclasses.replace(DataConverter.default, payload_codec=EncryptionCodec(keys))


def context_free(converter: DataConverter) -> bool:
    """Whether `converter` never uses serialization or storage contexts: the default one, with or
    without our codec. The workflow runner then need not ask the sandbox for them per payload
    (activities/publisher.py); a converter with other parts gets the contexts as usual."""
    return (
        converter.payload_converter_class is DefaultPayloadConverter
        and converter.failure_converter_class is DefaultFailureConverter
        and converter.external_storage is None
        and (converter.payload_codec is None or type(converter.payload_codec) is EncryptionCodec)
    )
