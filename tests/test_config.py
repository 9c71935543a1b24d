import datetime as dt
import logging
from pathlib import Path

import pytest

from conftest import ACCESS_TOKEN, LIST_ID, RAW, assert_no_secrets, render_config
from remixcrm_plugin_ctct import config


def load_text(tmp_path, text):
    path = tmp_path / "config.toml"
    path.write_text(text, encoding="utf-8")
    return config.load(path)


def test_env_var_overrides_the_config_location(tmp_path):
    assert config.config_path() == tmp_path / "config.toml"


def test_default_location_is_remixcrms_platform_config_dir(monkeypatch, tmp_path):
    monkeypatch.delenv("REMIXCRM_CONFIG")
    config._default_config_file.cache_clear()
    assert config.config_path() == tmp_path / "xdg-config" / "remixcrm" / "config.toml"


def test_data_dir_env_override_and_default(monkeypatch, tmp_path):
    assert config.data_dir() == tmp_path / "data" / "constant_contact"
    monkeypatch.delenv("REMIXCRM_DATA_DIR")
    assert config.data_dir() == tmp_path / "xdg-data" / "remixcrm" / "constant_contact"
    assert not config.data_dir().exists()  # finding it creates nothing


def test_full_config_is_parsed(tmp_path):
    loaded = load_text(tmp_path, render_config(token_expires_at=RAW("2026-11-27T19:00:00Z"), api_base_url="https://api.cc.email/v3/"))
    assert loaded.status == config.ACTIVE
    s = loaded.settings
    assert (s.list_id, s.access_token, s.client_id) == (LIST_ID, ACCESS_TOKEN, "app-key-1")
    assert s.token_expires_at == dt.datetime(2026, 11, 27, 19, tzinfo=dt.timezone.utc)
    assert s.api_base_url == "https://api.cc.email/v3"
    assert s.token_url == "https://authz.constantcontact.com/oauth2/default/v1/token"


@pytest.mark.parametrize("value", ["2026-11-27T19:00:00Z", "2026-11-27T20:00:00+01:00"])
def test_expiry_as_rfc3339_string(tmp_path, value):
    s = load_text(tmp_path, render_config(token_expires_at=value)).settings
    assert s.token_expires_at == dt.datetime(2026, 11, 27, 19, tzinfo=dt.timezone.utc)


def test_expiry_without_offset_is_read_as_utc(tmp_path):
    s = load_text(tmp_path, render_config(token_expires_at=RAW("2026-11-27T19:00:00"))).settings
    assert s.token_expires_at.utcoffset() == dt.timedelta(0)


@pytest.mark.parametrize(
    "text, reason",
    [
        (None, "no config file"),
        ("[other]\nx = 1\n", "no [email_marketing] section"),
        ('[email_marketing]\nprovider = "mailchimp"\n', "provider is 'mailchimp'"),
        ('[email_marketing]\nprovider = "none"\n', "provider is 'none'"),
        ("[email_marketing]\n", "provider is 'none'"),
    ],
)
def test_inactive_states(tmp_path, text, reason):
    loaded = config.load(tmp_path / "config.toml") if text is None else load_text(tmp_path, text)
    assert loaded.status == config.INACTIVE
    assert reason in loaded.message


@pytest.mark.parametrize(
    "values, expected",
    [
        ({"list_id": None}, "list_id is missing: set it in Settings → Integrations → Email Marketing → List ID"),
        ({"list_id": "my-list"}, "list_id 'my-list' is not a UUID"),
        ({"list_id": "  "}, "list_id is missing"),
        ({"api_base_url": "http://api.cc.email/v3"}, "api_base_url 'http://api.cc.email/v3' must be an https:// URL"),
        ({"token_url": "ftp://x"}, "token_url 'ftp://x' must be an https:// URL"),
        ({"token_expires_at": "tomorrow"}, "token_expires_at must be a date-time"),
        ({"list_id": RAW("42")}, "list_id must be a quoted string (got 42)"),
    ],
)
def test_bad_values_name_the_file_the_key_and_the_fix(tmp_path, values, expected):
    loaded = load_text(tmp_path, render_config(**values))
    assert loaded.status == config.INVALID
    assert str(tmp_path / "config.toml") in loaded.message
    assert expected in loaded.message


def test_wrongly_typed_secret_is_not_echoed(tmp_path):
    loaded = load_text(tmp_path, render_config(access_token=RAW("[\"SECRET-access-0123456789\"]")))
    assert "access_token must be a quoted string" in loaded.message
    assert_no_secrets(loaded.message)


def test_unknown_provider_is_invalid(tmp_path):
    loaded = load_text(tmp_path, render_config(provider="sendgrid"))
    assert loaded.status == config.INVALID
    assert "email_marketing.provider = 'sendgrid' is not one of constant_contact, mailchimp, none" in loaded.message


def test_constant_contact_chosen_without_its_section_is_invalid(tmp_path):
    loaded = load_text(tmp_path, '[email_marketing]\nprovider = "constant_contact"\n')
    assert loaded.status == config.INVALID
    assert "list_id is missing" in loaded.message


def test_malformed_toml_names_the_file_and_hides_the_content(tmp_path):
    loaded = load_text(tmp_path, render_config() + 'broken = "SECRET-access-0123456789\n')
    assert loaded.status == config.INVALID
    assert "is not valid TOML" in loaded.message and str(tmp_path) in loaded.message
    assert_no_secrets(loaded.message)


@pytest.mark.parametrize("url", ["http://127.0.0.1:8080/v3", "http://localhost/v3", "http://[::1]:9/v3", "http://127.5.0.1/v3"])
def test_plain_http_only_for_loopback(tmp_path, url):
    assert load_text(tmp_path, render_config(api_base_url=url)).status == config.ACTIVE


def test_settings_repr_hides_secrets(tmp_path):
    settings = load_text(tmp_path, render_config()).settings
    assert_no_secrets(repr(settings))
    assert_no_secrets(repr(config.LoadedConfig(config.ACTIVE, "", Path("x"), settings)))


def test_watcher_announces_each_state_once_and_follows_live_edits(write_config, logs):
    watcher = config.ConfigWatcher()
    assert watcher.current().status == config.INACTIVE
    assert watcher.current().status == config.INACTIVE
    write_config()
    assert watcher.current().status == config.ACTIVE
    write_config(provider="mailchimp")
    assert watcher.current().status == config.INACTIVE
    write_config(provider="mailchimp")  # touched again, same content: nothing new to say
    assert watcher.current().status == config.INACTIVE
    write_config(list_id=None)
    for _ in range(3):
        assert watcher.current().status == config.INVALID
    records = [(r.levelno, r.getMessage().split(":")[0]) for r in logs.records]
    assert records == [
        (logging.INFO, "constant contact sync is off"),
        (logging.INFO, "constant contact sync is on"),
        (logging.INFO, "constant contact sync is off"),
        (logging.ERROR, "constant contact sync is paused, config problem"),
    ]
    assert_no_secrets(logs.text)
