"""Sealing: AES-256-GCM for values at rest, and the keyring of ``[store] encryption_key``.

Two users share the primitive (:func:`seal` / :func:`unseal`: a 12-byte random nonce, then the
ciphertext with its 16-byte tag, bound to associated data): the core's ``stash_data()`` (a key per
stash, carried by its secret) and the store's encryption at rest (:mod:`mailgate.store.sealed`).

Formats at rest, versioned and naming the key (its id: the first 4 bytes of HMAC-SHA256(key, "mailgate
key id"), so no key is ever stored, and several keys can be configured during a rotation):

- text columns: ``mgs1:<key id, 8 hex>:<base64 of nonce + ciphertext>``;
- byte columns (raw messages): ``b"\\x00mgs1" + key id (4 bytes) + nonce + ciphertext`` (a message
  never starts with a NUL byte);
- compared-only columns (the raw content hash, the dedupe key): ``mgh1:<hex HMAC-SHA256>`` under the
  store's index key, which is random, stored once (sealed) in ``settings``, and never rotates, so
  that those values stay comparable across a key rotation.

A value without the marker is clear (written before encryption was switched on) and is read as it is.
"""

from __future__ import annotations

import binascii
import functools
import hashlib
import hmac
import os
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from mailgate.config import StoreConfig, decode_key
from mailgate.errors import ConfigError, StoreError

NONCE = 12
TEXT_PREFIX = "mgs1:"
BYTES_PREFIX = b"\x00mgs1"
HASH_PREFIX = "mgh1:"
_HEX = frozenset("0123456789abcdef")
_MIN_TEXT = len(TEXT_PREFIX) + 9 + 40  # key id, colon, and 28 bytes (nonce + tag) in base64


class SealError(StoreError):
    """A value at rest cannot be opened: no key, a key that is not configured, or a value altered."""


def seal(key: bytes | AESGCM, plain: bytes | bytearray, aad: bytes) -> bytes:
    """``plain`` sealed under ``key`` (AES-GCM), bound to ``aad``: nonce + ciphertext + tag."""
    nonce = os.urandom(NONCE)
    return nonce + (key if isinstance(key, AESGCM) else AESGCM(key)).encrypt(nonce, plain, aad)


def unseal(key: bytes | AESGCM, sealed: bytes, aad: bytes) -> bytes | None:
    """What :func:`seal` sealed, or None if the key, the associated data or the bytes do not match."""
    if len(sealed) < NONCE + 16:
        return None
    try:
        return (key if isinstance(key, AESGCM) else AESGCM(key)).decrypt(sealed[:NONCE], sealed[NONCE:], aad)
    except InvalidTag:
        return None


@functools.lru_cache(maxsize=16)
def key_id(key: bytes) -> str:
    """The public name of a key: 8 hex digits derived from it (not a secret, not the key)."""
    return hmac.new(key, b"mailgate key id", hashlib.sha256).hexdigest()[:8]


def _b64(raw: bytes) -> str:
    return binascii.b2a_base64(raw, newline=False).decode("ascii")  # binascii: several times faster than base64's


def _unb64(text: str) -> bytes:
    return binascii.a2b_base64(text.encode("ascii"), strict_mode=True)


def is_sealed_text(value: str | None) -> bool:
    return (value is not None and value.startswith(TEXT_PREFIX) and len(value) >= _MIN_TEXT and value[13] == ":"
            and _HEX.issuperset(value[5:13]))


def is_sealed_bytes(value: bytes | None) -> bool:
    return value is not None and value[:5] == BYTES_PREFIX and len(value) >= 9 + NONCE + 16


def text_key_id(value: str) -> str | None:
    """The key id of a sealed text value; None if clear."""
    return value[5:13] if is_sealed_text(value) else None


def bytes_key_id(value: bytes) -> str | None:
    return value[5:9].hex() if is_sealed_bytes(value) else None


@dataclass(frozen=True)
class Keyring:
    """The configured keys: the current one seals, every one opens. ``index_key`` (the store's own,
    loaded from the store) makes the keyed hashes."""

    current: bytes
    keys: dict[str, bytes] = field(default_factory=dict)  # key id -> key, the current one included
    # the ciphers, made once (AESGCM's key set-up costs more than sealing a few KB)
    _aead: dict[str, AESGCM] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self._aead.update((kid, AESGCM(key)) for kid, key in {**self.keys, self.current_id: self.current}.items())

    @property
    def current_id(self) -> str:
        return key_id(self.current)

    def seal_text(self, plain: str, aad: str) -> str:
        kid = self.current_id
        return f"{TEXT_PREFIX}{kid}:{_b64(seal(self._aead[kid], plain.encode(), aad.encode()))}"

    def seal_bytes(self, plain: bytes | bytearray, aad: str) -> bytes:
        kid = self.current_id
        return BYTES_PREFIX + bytes.fromhex(kid) + seal(self._aead[kid], plain, aad.encode())

    def open_text(self, value: str, aad: str, where: str) -> str:
        if not is_sealed_text(value):
            return value  # clear: written before encryption was switched on
        kid = value[5:13]
        try:
            sealed = _unb64(value[14:])
        except (binascii.Error, ValueError):
            sealed = b""
        plain = unseal(self._key(kid, where), sealed, aad.encode())
        if plain is None:
            raise SealError(f"{where}: the sealed value does not open under its key {kid}: "
                            "it was altered or moved to another row")
        return plain.decode()

    def open_bytes(self, value: bytes, aad: str, where: str) -> bytes:
        if not is_sealed_bytes(value):
            return value
        kid = value[5:9].hex()
        plain = unseal(self._key(kid, where), value[9:], aad.encode())
        if plain is None:
            raise SealError(f"{where}: the sealed value does not open under its key {kid}: "
                            "it was altered or moved to another row")
        return plain

    def _key(self, kid: str, where: str) -> AESGCM:
        key = self._aead.get(kid)
        if key is None:
            raise SealError(f"{where} is sealed under key {kid}, which is not configured (configured: "
                            f"{', '.join(sorted(self.keys))}); add the key it was written with to "
                            "[store] old_encryption_keys, then run: mailgate db rekey")
        return key


def keyed_hash(index_key: bytes, value: str) -> str:
    """A value that is only ever compared (a content hash, a dedupe key), kept comparable but not readable."""
    return HASH_PREFIX + hmac.new(index_key, value.encode(), hashlib.sha256).hexdigest()


def is_keyed_hash(value: str) -> bool:
    return value.startswith(HASH_PREFIX)


def keyring_from(config: StoreConfig) -> Keyring | None:
    """The keyring ``[store]`` configures, or None when encryption at rest is off. ConfigError naming
    the setting for a key that is not one, a file that cannot be read, or both ways of setting it."""
    if config.encryption_key and config.encryption_key_file:
        raise ConfigError("[store] encryption_key and encryption_key_file are both set; set one of them")
    if config.encryption_key_file:
        try:
            text = Path(config.encryption_key_file).read_bytes().decode("ascii")
        except OSError as exc:
            raise ConfigError(f"[store] encryption_key_file {config.encryption_key_file}: cannot read it "
                              f"({exc.strerror or exc})") from None
        except UnicodeDecodeError:
            raise ConfigError(f"[store] encryption_key_file {config.encryption_key_file} must hold the key "
                              "in base64") from None
        current = decode_key(text, f"[store] encryption_key_file ({config.encryption_key_file})")
    elif config.encryption_key:
        current = decode_key(config.encryption_key, "[store] encryption_key")
    elif config.old_encryption_keys:
        raise ConfigError("[store] old_encryption_keys is set without encryption_key: set the current key "
                          "(old keys only read rows during a rotation)")
    else:
        return None
    keys = {key_id(current): current}
    for n, text in enumerate(config.old_encryption_keys, 1):
        key = decode_key(text, f"[store] old_encryption_keys (entry {n})")
        keys.setdefault(key_id(key), key)
    return Keyring(current, keys)
