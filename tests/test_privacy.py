"""Pseudonyms, withheld profile fields and masked URLs: what may reach MLflow and logs."""

from __future__ import annotations

import json
import stat

import polars as pl
import pytest

from tailor import columns as C
from tailor.data.privacy import pseudonym_key, pseudonymise, public_quarantine
from tailor.settings import load_settings, mask_url


def test_pseudonyms_are_keyed_stable_and_the_key_is_private(tmp_path):
    key = pseudonym_key(None, tmp_path)
    assert pseudonym_key(None, tmp_path) == key  # made once per workdir
    mode = stat.S_IMODE((tmp_path / "pseudonym.key").stat().st_mode)
    assert mode == 0o600
    a = pseudonymise(["user-42", "user-42", "user-43"], key)
    assert a[0] == a[1] != a[2] and all(p.startswith("p_") and "user" not in p for p in a)
    # Another key, other pseudonyms: without the key a short id cannot be looked up.
    assert pseudonymise(["user-42"], b"other")[0] != a[0]
    assert pseudonym_key("configured", tmp_path) == b"configured"


def test_the_public_quarantine_withholds_profiles_and_ids():
    rows = [
        ("users.csv", "duplicate user_id", {"user_id": "7", "age": "24", "zip_code": "94110"}),
        ("events.csv", "unknown item", {"user_id": "7", "item_id": "x9", "timestamp": "1"}),
        ("items.csv", "empty text", {"item_id": "i3", "title": ""}),
    ]
    quarantine = pl.DataFrame(
        [(s, r, json.dumps(row)) for s, r, row in rows],
        schema={C.SOURCE: pl.Utf8, C.REASON: pl.Utf8, C.ROW: pl.Utf8},
        orient="row",
    )
    public = public_quarantine(quarantine, b"k", "users.csv")
    assert public.height == 3 and public[C.REASON].to_list() == [r for _, r, _ in rows]
    users, events, items = (json.loads(r) for r in public[C.ROW].to_list())
    pseudonym = pseudonymise(["7"], b"k")[0]
    assert users == {"user_id": pseudonym, "age": "<withheld>", "zip_code": "<withheld>"}
    assert events == {"user_id": pseudonym, "item_id": "x9", "timestamp": "1"}
    assert items == {"item_id": "i3", "title": ""}


def test_urls_are_masked_and_keys_never_dumped():
    assert mask_url("postgresql://tailor:s3cret@db:5432/x") == "postgresql://tailor:***@db:5432/x"
    assert mask_url("sqlite:////tmp/a.db") == "sqlite:////tmp/a.db"
    settings = load_settings(
        serve={"write_keys": ["wk-1234567890abcdef"], "read_keys": ["rk-4567890abcdefgh"]},
        refresh={"store_url": "postgresql://u:pw-789@h/d"},
        tracking={"pseudonym_key": "pk-0000000000000000"},
    )
    for text in (json.dumps(settings.flat()), settings.public_json()):
        for secret in (
            "wk-1234567890abcdef",
            "rk-4567890abcdefgh",
            "pw-789",
            "pk-0000000000000000",
        ):
            assert secret not in text
    assert settings.flat()["refresh.store_url"] == "postgresql://u:***@h/d"


def test_a_password_in_a_query_string_is_masked_too():
    assert mask_url("mysql://u@h/db?password=abc&x=1") == "mysql://u@h/db?password=***&x=1"
    masked = mask_url("postgresql://u:pw@h/db?sslpassword=s1&application_name=tailor")
    assert masked == "postgresql://u:***@h/db?sslpassword=***&application_name=tailor"


def test_keys_too_short_to_resist_guessing_are_refused():
    for section, field in (("serve", "write_keys"), ("serve", "read_keys")):
        with pytest.raises(ValueError, match="shorter than 16 characters"):
            load_settings(**{section: {field: ["short-key"]}})
    with pytest.raises(ValueError, match="pseudonym_key is shorter than 16"):
        load_settings(tracking={"pseudonym_key": "pk-1"})


def test_processes_making_the_key_at_once_agree_on_a_whole_one(tmp_path):
    from concurrent.futures import ProcessPoolExecutor

    for attempt in range(3):
        folder = tmp_path / str(attempt)
        with ProcessPoolExecutor(4) as pool:
            keys = list(pool.map(pseudonym_key, [None] * 8, [folder] * 8))
        assert len(set(keys)) == 1 and len(keys[0]) == 64
        assert [p.name for p in folder.iterdir()] == ["pseudonym.key"]  # no temporary left


def test_a_damaged_key_file_is_an_error_naming_it(tmp_path):
    (tmp_path / "pseudonym.key").write_text("")
    with pytest.raises(ValueError, match=r"pseudonym\.key: the pseudonym key holds 0 characters"):
        pseudonym_key(None, tmp_path)
