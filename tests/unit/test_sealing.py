"""The sealing codec (:mod:`mailgate.store.sealing`) and the keys ``[store]`` configures."""

from __future__ import annotations

import asyncio
import base64
from pathlib import Path

import pytest

from mailgate.config import StoreConfig
from mailgate.errors import ConfigError
from mailgate.store.base import Store
from mailgate.store.sealed import PASSED_UNREVIEWED, SealedStore, _pass_through
from mailgate.store.sealed_automations import SealedAutomations
from mailgate.store.sealing import (
    Keyring,
    SealError,
    bytes_key_id,
    is_sealed_bytes,
    is_sealed_text,
    key_id,
    keyed_hash,
    keyring_from,
    seal,
    text_key_id,
    unseal,
)

K1 = bytes(range(32))
K2 = bytes(range(32, 64))


def ring(current: bytes, *old: bytes) -> Keyring:
    config = StoreConfig(encryption_key=base64.b64encode(current).decode(),
                         old_encryption_keys=tuple(base64.b64encode(k).decode() for k in old))
    found = keyring_from(config)
    assert found is not None
    return found


def test_sealed_text_names_its_key_hides_the_text_and_opens_only_in_its_place() -> None:
    r = ring(K1)
    sealed = r.seal_text('{"note": "secret words"}', "sessions.answers\x00s1")
    assert is_sealed_text(sealed) and text_key_id(sealed) == key_id(K1) == r.current_id
    assert "secret" not in sealed and sealed != r.seal_text('{"note": "secret words"}', "sessions.answers\x00s1")  # a fresh nonce
    assert r.open_text(sealed, "sessions.answers\x00s1", "here") == '{"note": "secret words"}'
    with pytest.raises(SealError, match="altered or moved"):
        r.open_text(sealed, "sessions.answers\x00s2", "sessions.answers of s2")  # moved to another row
    tampered = sealed[:-2] + ("A" if sealed[-2] != "A" else "B") + sealed[-1]
    with pytest.raises(SealError, match="altered or moved"):
        r.open_text(tampered, "sessions.answers\x00s1", "here")


def test_clear_values_read_as_they_are() -> None:
    r = ring(K1)
    for clear in ('{"a": 1}', "mgs1:not sealed", "", "plain error message"):
        assert not is_sealed_text(clear)
        assert r.open_text(clear, "x", "here") == clear
    raw = b"Subject: hi\r\n\r\nbody\r\n"
    assert not is_sealed_bytes(raw) and r.open_bytes(raw, "raw", "here") == raw


def test_sealed_bytes_name_their_key() -> None:
    r = ring(K1)
    sealed = r.seal_bytes(b"Subject: hi\r\n\r\nbody\r\n", "raw\x00h")
    assert is_sealed_bytes(sealed) and bytes_key_id(sealed) == key_id(K1) and b"body" not in sealed
    assert r.open_bytes(sealed, "raw\x00h", "here") == b"Subject: hi\r\n\r\nbody\r\n"


def test_rotation_reads_old_keys_and_writes_the_current_one_only() -> None:
    old = ring(K1).seal_text("answers", "t.c\x00r")
    rotating = ring(K2, K1)
    assert rotating.open_text(old, "t.c\x00r", "here") == "answers"
    assert text_key_id(rotating.seal_text("answers", "t.c\x00r")) == key_id(K2)
    with pytest.raises(SealError, match=rf"sealed under key {key_id(K1)}, which is not configured.*old_encryption_keys"):
        ring(K2).open_text(old, "t.c\x00r", "sessions.answers of s1")


def test_the_primitive_refuses_a_wrong_key_or_associated_data() -> None:
    sealed = seal(K1, b"data", b"where")
    assert unseal(K1, sealed, b"where") == b"data"
    assert unseal(K2, sealed, b"where") is None and unseal(K1, sealed, b"elsewhere") is None
    assert unseal(K1, sealed[:10], b"where") is None


def test_keyed_hashes_compare_but_depend_on_the_key() -> None:
    assert keyed_hash(K1, "abc") == keyed_hash(K1, "abc") != keyed_hash(K2, "abc")
    assert keyed_hash(K1, "abc") != keyed_hash(K1, "abd") and keyed_hash(K1, "abc").startswith("mgh1:")


def test_keys_are_configured_inline_or_in_a_file(tmp_path: Path) -> None:
    assert keyring_from(StoreConfig()) is None  # off by default
    path = tmp_path / "key"
    path.write_text(base64.b64encode(K1).decode() + "\n")
    from_file = keyring_from(StoreConfig(encryption_key_file=str(path)))
    assert from_file is not None and from_file.current == K1
    urlsafe = base64.urlsafe_b64encode(K2).decode().rstrip("=")
    assert ring(K1).current == K1 and keyring_from(StoreConfig(encryption_key=urlsafe)).current == K2  # type: ignore[union-attr]


@pytest.mark.parametrize(("config", "says"), [
    (StoreConfig(encryption_key="c2hvcnQ="), r"\[store\] encryption_key is not a key: it must be the base64 of 32"),
    (StoreConfig(encryption_key="not base64!"), r"\[store\] encryption_key is not a key"),
    (StoreConfig(encryption_key=base64.b64encode(K1).decode(), old_encryption_keys=("bad",)),
     r"\[store\] old_encryption_keys \(entry 1\) is not a key"),
    (StoreConfig(old_encryption_keys=(base64.b64encode(K1).decode(),)), "old_encryption_keys is set without encryption_key"),
    (StoreConfig(encryption_key=base64.b64encode(K1).decode(), encryption_key_file="/x"), "both set"),
    (StoreConfig(encryption_key_file="/nonexistent/mailgate-key"), r"encryption_key_file /nonexistent/mailgate-key: cannot read it"),
])
def test_bad_keys_are_refused_naming_the_setting(config: StoreConfig, says: str) -> None:
    with pytest.raises(ConfigError, match=says):
        keyring_from(config)


def test_every_store_method_is_decided_by_the_sealed_store() -> None:
    """A Store method added without a decision here is passed through in clear: decide it in
    mailgate/store/sealed.py (seal what it writes, open what it reads, or pass it through by name)."""
    assert PASSED_UNREVIEWED == ()
    public = [name for name, value in vars(Store).items() if callable(value) and not name.startswith("_")]
    assert set(Store.__abstractmethods__) <= set(public)
    # every one, the ones with a default body too (a default would do nothing where the backend does something)
    undecided = [name for name in public
                 if next(c for c in SealedStore.__mro__ if name in vars(c)) not in (SealedStore, SealedAutomations)]
    assert undecided == []


def test_a_store_method_left_undecided_passes_through_as_it_is_called() -> None:
    class Inner:
        def now(self) -> float:
            return 12.5

        async def count_inbound(self) -> int:
            return 7

    store = SealedStore(Inner(), ring(K1))  # type: ignore[arg-type]
    assert _pass_through("now")(store) == 12.5  # a plain method stays plain
    assert asyncio.run(_pass_through("count_inbound")(store)) == 7
