"""Pseudonyms, withheld profile fields and masked URLs: what may reach MLflow and logs."""

from __future__ import annotations

import json
import stat

import polars as pl

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
        serve={"write_keys": ["wk-123"], "read_keys": ["rk-456"]},
        refresh={"store_url": "postgresql://u:pw-789@h/d"},
        tracking={"pseudonym_key": "pk-000"},
    )
    for text in (json.dumps(settings.flat()), settings.public_json()):
        for secret in ("wk-123", "rk-456", "pw-789", "pk-000"):
            assert secret not in text
    assert settings.flat()["refresh.store_url"] == "postgresql://u:***@h/d"
