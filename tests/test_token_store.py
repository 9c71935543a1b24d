import json
import os
import stat

from conftest import ACCESS_TOKEN, REFRESH_TOKEN, assert_no_secrets

from remixcrm_plugin_ctct.store.tokens import TokenState, TokenStore, fingerprint


def test_round_trip_and_private_files(tmp_path):
    store = TokenStore(tmp_path / "data" / "constant_contact")
    assert store.read() is None
    state = TokenState(ACCESS_TOKEN, REFRESH_TOKEN, 1_900_000_000.0, 86400.0, seeded_from="abc")
    store.write(state)
    assert store.read() == state
    assert stat.S_IMODE(os.stat(store.path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(store.directory).st_mode) == 0o700
    assert [p.name for p in store.directory.iterdir()] == ["tokens.json"]  # no temp file left behind


def test_rewrites_replace_the_file_atomically(tmp_path):
    store = TokenStore(tmp_path)
    store.write(TokenState("a1", "r1"))
    before = store.signature()
    inode = os.stat(store.path).st_ino
    store.write(TokenState("a2", "r2"))
    assert store.read().access_token == "a2"
    assert store.signature() != before
    assert os.stat(store.path).st_ino != inode  # a new file renamed over the old: never half-written


def test_a_damaged_file_reads_as_absent(tmp_path):
    store = TokenStore(tmp_path)
    store.path.write_text("{not json")
    assert store.read() is None
    store.path.write_text(json.dumps({"access_token": "a", "unknown_future_key": 1}))
    assert store.read() == TokenState("a")


def test_reprs_and_fingerprints_hide_secrets(tmp_path):
    state = TokenState(ACCESS_TOKEN, REFRESH_TOKEN)
    assert_no_secrets(repr(state) + repr(TokenStore(tmp_path)) + fingerprint(ACCESS_TOKEN, REFRESH_TOKEN))
    assert fingerprint(ACCESS_TOKEN, REFRESH_TOKEN) == fingerprint(ACCESS_TOKEN, REFRESH_TOKEN)
    assert fingerprint(ACCESS_TOKEN, REFRESH_TOKEN) != fingerprint(ACCESS_TOKEN, None)


def test_lock_file_is_private(tmp_path):
    store = TokenStore(tmp_path / "d")
    with store.lock():
        lock_path = store.directory / "tokens.lock"
        assert stat.S_IMODE(os.stat(lock_path).st_mode) & 0o077 == 0
