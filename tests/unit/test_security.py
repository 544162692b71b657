"""Signatures (CONTRACT.md), access-key hashes, signing secrets at rest, redaction."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import stat

import pytest
from cryptography.fernet import Fernet

from matomete_core.security import (
    SECRET_FIELDS, SecretBox, access_key_matches, canonical_bytes, hash_access_key, redact, sign,
    signature_matches)

SECRET = "s3cret-A"
MESSAGE = {"message_id": "pa-0001", "occurred_at": "2026-11-03T10:15:00+09:00", "provider_id": "PA",
           "order_id": "A-注文-778899", "passport_id": "user01", "content_id": "pack", "quantity": 1,
           "unit_price": 525}
# CONTRACT.md: the message without `signature`, sorted keys, separators "," and ":", non-ASCII kept
CANONICAL = ('{"content_id":"pack","message_id":"pa-0001","occurred_at":"2026-11-03T10:15:00+09:00",'
             '"order_id":"A-注文-778899","passport_id":"user01","provider_id":"PA","quantity":1,'
             '"unit_price":525}')


def by_hand(text: str, secret: str) -> str:
    return hmac.new(secret.encode("utf-8"), text.encode("utf-8"), hashlib.sha256).hexdigest()


# ---- sign ---------------------------------------------------------------------------------------

def test_sign_is_the_hmac_of_the_compact_sorted_utf8_json_per_the_contract():
    assert canonical_bytes(MESSAGE) == CANONICAL.encode("utf-8")
    assert sign(MESSAGE, SECRET) == by_hand(CANONICAL, SECRET)


def test_sign_keeps_non_ascii_characters_as_they_are():
    escaped = json.dumps(MESSAGE, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    assert "\\u6ce8" in escaped
    assert sign(MESSAGE, SECRET) != by_hand(escaped, SECRET)


def test_sign_ignores_the_signature_field_and_key_order():
    reordered = dict(reversed(list(MESSAGE.items())))
    assert sign({**reordered, "signature": "f" * 64}, SECRET) == sign(MESSAGE, SECRET)


def test_sign_is_lowercase_hex_of_64_characters():
    digest = sign(MESSAGE, SECRET)
    assert len(digest) == 64 and digest == digest.lower() and int(digest, 16) >= 0


def test_a_non_ascii_secret_is_used_as_utf8():
    assert sign(MESSAGE, "秘密のかぎ-123") == by_hand(CANONICAL, "秘密のかぎ-123")


# ---- signature_matches ----------------------------------------------------------------------------

@pytest.mark.parametrize("which", [0, 1, 2])
def test_a_signature_made_with_any_current_secret_matches(which):
    secrets = ["first-secret", "second-secret", "third-secret"]
    message = {**MESSAGE, "signature": by_hand(CANONICAL, secrets[which])}
    assert signature_matches(message, secrets)


def test_a_signature_made_with_another_secret_does_not_match():
    message = {**MESSAGE, "signature": by_hand(CANONICAL, "someone-else")}
    assert not signature_matches(message, ["first-secret", SECRET + "x"])
    assert not signature_matches(message, [])


@pytest.mark.parametrize("field, value", [
    ("unit_price", 0), ("quantity", 2), ("order_id", "A-注文-778890"), ("passport_id", "user02"),
    ("occurred_at", "2026-11-03T10:15:00+00:00"), ("extra", None),
])
def test_a_tampered_message_does_not_match(field, value):
    message = {**MESSAGE, "signature": sign(MESSAGE, SECRET)}
    assert signature_matches(message, [SECRET])
    assert not signature_matches({**message, field: value}, [SECRET])


def test_a_removed_field_does_not_match():
    message = {**MESSAGE, "signature": sign(MESSAGE, SECRET)}
    del message["unit_price"]
    assert not signature_matches(message, [SECRET])


@pytest.mark.parametrize("signature", [None, 12345, ["a"], {"sig": "x"}, b"bytes", "", "zz"])
def test_a_missing_or_non_string_signature_does_not_match(signature):
    assert not signature_matches(dict(MESSAGE), [SECRET])
    assert not signature_matches({**MESSAGE, "signature": signature}, [SECRET])


def test_an_uppercase_signature_does_not_match():
    assert not signature_matches({**MESSAGE, "signature": sign(MESSAGE, SECRET).upper()}, [SECRET])


# ---- access keys ---------------------------------------------------------------------------------

def test_access_key_hashes_are_salted_and_both_match():
    first, second = hash_access_key("ABCD1234"), hash_access_key("ABCD1234")
    assert first != second
    assert first.startswith("scrypt$") and "ABCD1234" not in first
    assert access_key_matches("ABCD1234", first) and access_key_matches("ABCD1234", second)


@pytest.mark.parametrize("key", ["ABCD1235", "abcd1234", "ABCD1234 ", "", "ABCD123"])
def test_a_wrong_access_key_does_not_match(key):
    assert not access_key_matches(key, hash_access_key("ABCD1234"))


def test_a_non_ascii_access_key_round_trips():
    assert access_key_matches("キー1234", hash_access_key("キー1234"))


@pytest.mark.parametrize("stored", ["", "ABCD1234", "plain$ABCD1234", "bcrypt$1$2$3$4$5", "scrypt$1$2"])
def test_a_stored_value_that_is_not_an_scrypt_hash_never_matches(stored):
    assert not access_key_matches("ABCD1234", stored)


# ---- SecretBox ------------------------------------------------------------------------------------

def test_a_secret_box_round_trips_and_does_not_keep_the_secret_in_clear():
    box = SecretBox(Fernet.generate_key())
    sealed = box.seal(["s3cret-A", "前の秘密"])
    assert "s3cret-A" not in sealed and "前の秘密" not in sealed
    assert box.open(sealed) == ["s3cret-A", "前の秘密"]


def test_a_wrong_key_raises_value_error():
    sealed = SecretBox(Fernet.generate_key()).seal(["s3cret-A"])
    with pytest.raises(ValueError):
        SecretBox(Fernet.generate_key()).open(sealed)


def test_a_tampered_sealed_value_raises_value_error():
    box = SecretBox(Fernet.generate_key())
    sealed = box.seal(["s3cret-A"])
    with pytest.raises(ValueError):
        box.open(sealed[:-4] + ("AAAA" if not sealed.endswith("AAAA") else "BBBB"))


def test_a_key_file_is_created_with_mode_0600_and_reused(tmp_path):
    # given no key file yet
    path = tmp_path / "keys" / "matomete.key"
    # when a box is made from the settings, twice
    first = SecretBox.from_settings(None, str(path))
    second = SecretBox.from_settings(None, str(path))
    # then the file is owner-only and the same key opens what the first sealed
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert second.open(first.seal(["s3cret-A"])) == ["s3cret-A"]


def test_an_explicit_secret_key_wins_over_the_key_file(tmp_path):
    key = Fernet.generate_key().decode()
    path = tmp_path / "unused.key"
    box = SecretBox.from_settings(key, str(path))
    assert not path.exists()
    assert SecretBox(key).open(box.seal(["x"])) == ["x"]


# ---- redact ---------------------------------------------------------------------------------------

def test_redact_replaces_every_secret_field_at_any_depth():
    # given a message with secrets at the top, in nested objects and inside lists
    message = {
        "message_id": "m-1", "signature": "a" * 64, "access_key": "ABCD1234",
        "nested": {"signing_secret": "s3cret-A", "keep": "visible",
                   "deeper": [{"access_key": "KEY2KEY2"}, {"list": [{"signature": {"even": "an object"}}]}]},
        "items": [{"signing_secret": "s3cret-B"}, "plain"],
    }
    # when
    out = redact(message)
    # then
    assert out == {
        "message_id": "m-1", "signature": "***", "access_key": "***",
        "nested": {"signing_secret": "***", "keep": "visible",
                   "deeper": [{"access_key": "***"}, {"list": [{"signature": "***"}]}]},
        "items": [{"signing_secret": "***"}, "plain"],
    }
    assert message["access_key"] == "ABCD1234"  # a copy, the original untouched


def test_redact_covers_the_secret_fields_named_by_the_contract():
    assert {"signature", "access_key", "signing_secret"} <= SECRET_FIELDS
    assert redact({f: "x" for f in SECRET_FIELDS}) == {f: "***" for f in SECRET_FIELDS}


def test_redact_leaves_nothing_of_a_secret_nested_beyond_its_depth_bound():
    deep: object = {"access_key": "DEEPKEY1"}
    for _ in range(50):
        deep = {"x": [deep]}
    assert "DEEPKEY1" not in json.dumps(redact(deep))


def test_redact_keeps_other_values_as_they_are():
    value = {"a": 1, "b": [1, 2.5, None, True], "c": "テキスト"}
    assert redact(value) == value
    assert redact("signature") == "signature"
    assert redact([{"signature": 1}]) == [{"signature": "***"}]
