import datetime as dt
import json
import logging
import os
import threading
from pathlib import Path

import pytest
from conftest import ACCESS_TOKEN, LIST_ID, RAW, SIGN_UP_URL, api_calls, assert_no_secrets, render_config

from remixcrm_plugin_ctct import config, flush


def load_text(tmp_path, text):
    path = tmp_path / "config.toml"
    path.write_text(text, encoding="utf-8")
    return config.load(path)


def test_env_var_overrides_the_config_location(tmp_path):
    assert config.config_path() == tmp_path / "config.toml"


def test_default_location_is_remixcrms_platform_config_dir(monkeypatch, tmp_path):
    monkeypatch.delenv("REMIXCRM_CONFIG")
    config.forget_default_location()
    assert config.config_path() == tmp_path / "xdg-config" / "remixcrm" / "config.toml"


def test_data_dir_env_override_and_default(monkeypatch, tmp_path):
    assert config.data_dir() == tmp_path / "data" / "constant_contact"
    monkeypatch.delenv("REMIXCRM_DATA_DIR")
    assert config.data_dir() == tmp_path / "xdg-data" / "remixcrm" / "constant_contact"
    assert not config.data_dir().exists()  # finding it creates nothing


def test_full_config_is_parsed(tmp_path):
    loaded = load_text(
        tmp_path, render_config(token_expires_at=RAW("2026-11-27T19:00:00Z"), api_base_url="https://api.cc.email/v3/")
    )
    assert loaded.status == config.ACTIVE
    s = loaded.settings
    assert (s.list_id, s.access_token, s.client_id) == (LIST_ID, ACCESS_TOKEN, "app-key-1")
    assert s.token_expires_at == dt.datetime(2026, 11, 27, 19, tzinfo=dt.UTC)
    assert s.api_base_url == "https://api.cc.email/v3"
    assert s.token_url == "https://authz.constantcontact.com/oauth2/default/v1/token"


@pytest.mark.parametrize("value", ["2026-11-27T19:00:00Z", "2026-11-27T20:00:00+01:00"])
def test_expiry_as_rfc3339_string(tmp_path, value):
    s = load_text(tmp_path, render_config(token_expires_at=value)).settings
    assert s.token_expires_at == dt.datetime(2026, 11, 27, 19, tzinfo=dt.UTC)


def test_expiry_without_offset_is_read_as_utc(tmp_path):
    s = load_text(tmp_path, render_config(token_expires_at=RAW("2026-11-27T19:00:00"))).settings
    assert s.token_expires_at.utcoffset() == dt.timedelta(0)


@pytest.mark.parametrize(
    "text, reason",
    [
        (None, "no config file"),
        ("[other]\nx = 1\n", "no [email_marketing] section"),
        (config.config_toml("mailchimp"), "provider is 'mailchimp'"),
        (config.config_toml("none"), "provider is 'none'"),
        (config.config_toml(None), "provider is 'none'"),  # no provider key
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
    loaded = load_text(tmp_path, render_config(access_token=RAW('["SECRET-access-0123456789"]')))
    assert "access_token must be a quoted string" in loaded.message
    assert_no_secrets(loaded.message)


def test_unknown_provider_is_invalid(tmp_path):
    loaded = load_text(tmp_path, render_config(provider="sendgrid"))
    assert loaded.status == config.INVALID
    assert "email_marketing.provider = 'sendgrid' is not one of constant_contact, mailchimp, none" in loaded.message


def test_constant_contact_chosen_without_its_section_is_invalid(tmp_path):
    loaded = load_text(tmp_path, config.config_toml())
    assert loaded.status == config.INVALID
    assert "list_id is missing" in loaded.message


def test_malformed_toml_names_the_file_and_hides_the_content(tmp_path):
    loaded = load_text(tmp_path, render_config() + 'broken = "SECRET-access-0123456789\n')
    assert loaded.status == config.INVALID
    assert "is not valid TOML" in loaded.message and str(tmp_path) in loaded.message
    assert_no_secrets(loaded.message)


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1:8080/v3", "http://localhost/v3", "http://[::1]:9/v3", "http://127.5.0.1/v3"]
)
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


# --- hostile files and values (issue 9, items 8 and 9): reported as one ERROR, never raised ---


def write_bytes(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    st = path.stat()  # a rewrite within the same clock tick must still look changed to the watcher
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    return path


NESTED = "\n[other]\ndeep = " + "[" * 3000 + "]" * 3000 + "\n"


@pytest.mark.parametrize(
    "values, expected",
    [
        ({"api_base_url": "http://[::1/v3"}, "api_base_url 'http://[::1/v3' must be an https:// URL"),
        ({"api_base_url": "https://api.cc.email:99999/v3"}, "api_base_url 'https://api.cc.email:99999/v3' must be an"),
        ({"token_url": "https://user:pw@authz.example/token"}, "token_url must not contain a user name or password"),
        ({"daily_quota": RAW("inf")}, "daily_quota must be a whole number from 1 to"),
        ({"daily_quota": RAW("nan")}, "daily_quota must be a whole number from 1 to"),
        ({"daily_quota": RAW("0.5")}, "daily_quota must be a whole number from 1 to"),
        ({"daily_quota": RAW("9" * 40)}, "daily_quota must be a whole number from 1 to"),
        ({"requests_per_second": RAW("nan")}, "requests_per_second must be a number from 0.001 to"),
        ({"requests_per_second": RAW("inf")}, "requests_per_second must be a number from 0.001 to"),
        ({"requests_per_second": RAW("9" * 400)}, "requests_per_second must be a number from 0.001 to"),
        ({"requests_per_second": RAW("1e-300")}, "requests_per_second must be a number from 0.001 to"),
        ({"max_age_hours": RAW("nan")}, "max_age_hours must be a number above 0"),
        ({"retention_days": RAW("inf")}, "retention_days must be a number above 0"),
        ({"optout_poll_minutes": RAW("0.5")}, "optout_poll_minutes must be 0 (off) or a number of minutes from 1"),
        ({"optout_poll_minutes": RAW("-1")}, "optout_poll_minutes must be 0 (off) or a number of minutes from 1"),
        ({"optout_poll_minutes": RAW("1441")}, "optout_poll_minutes must be 0 (off) or a number of minutes from 1"),
        ({"optout_poll_minutes": "15"}, "optout_poll_minutes must be 0 (off) or a number of minutes from 1"),
        ({"optout_poll_minutes": RAW("true")}, "optout_poll_minutes must be 0 (off) or a number of minutes from 1"),
        ({"token_expires_at": RAW("9999-12-31T23:59:59-01:00")}, "token_expires_at 9999-12-31T23:59:59-01:00 is not a"),
        ({"token_expires_at": RAW("0001-01-01T00:00:00+01:00")}, "token_expires_at 0001-01-01T00:00:00+01:00 is not a"),
        ({"list_id": RAW("{ id = 1 }")}, "list_id must be a quoted string (got {'id': 1})"),
        ({"client_id": RAW('"app key\\u0001"')}, "client_id must be one word of printable ASCII characters"),
        (
            {"access_token": RAW('"SECRET-access-0123456789\\nX-Injected: 1"')},
            "access_token must be one word of printable",
        ),
    ],
)
def test_hostile_values_are_one_clear_problem_each(tmp_path, values, expected):
    loaded = load_text(tmp_path, render_config(**values))
    assert loaded.status == config.INVALID
    assert expected in loaded.message
    assert loaded.message.count("email_marketing.constant_contact.") == 1  # one problem, not a cascade
    assert_no_secrets(loaded.message)


@pytest.mark.parametrize("minutes, expected", [(None, 15.0), (0, 0), (1, 1), (1440, 1440), (2.5, 2.5)])
def test_optout_poll_minutes_is_0_for_off_or_1_to_1440(tmp_path, minutes, expected):
    loaded = load_text(tmp_path, render_config(optout_poll_minutes=RAW(str(minutes)) if minutes is not None else None))
    assert loaded.status == config.ACTIVE and loaded.settings.optout_poll_minutes == expected


def test_the_section_must_be_a_table_and_echoed_values_are_capped(tmp_path):
    loaded = load_text(tmp_path, config.config_toml() + "constant_contact = 5\n")
    assert "email_marketing.constant_contact must be a table" in loaded.message
    # "\\n" is a TOML escape: the value holds real newlines
    loaded = load_text(tmp_path, render_config(list_id=RAW('"' + "x\\n" * 50_000 + '"')))
    assert loaded.status == config.INVALID and "list_id 'x\\nx\\n" in loaded.message
    assert len(loaded.message) < 1000  # this text ends up in a log line


def test_a_non_utf8_byte_outside_our_section_is_ignored(tmp_path):
    data = render_config().encode() + b'\n[crm.clients]\ncity = "Montr\xe9al"  # RemixCRM\'s own Latin-1 text\n'
    loaded = config.load(write_bytes(tmp_path / "config.toml", data))
    assert loaded.status == config.ACTIVE and loaded.settings.list_id == LIST_ID


@pytest.mark.parametrize(
    "data, expected",
    [
        (
            render_config(client_id="CLIENT").encode().replace(b"CLIENT", b"caf\xe9"),
            "email_marketing.constant_contact.client_id is not UTF-8 text "
            "(the file's first such byte: byte 0xe9 at offset",
        ),
        (render_config().encode() + b"\n[other]\ncaf\xe9 = 1\n", "is not UTF-8 text (byte 0xe9 at offset"),
        (render_config().encode("utf-16"), "is not UTF-8 text (byte 0xff at offset 0)"),
    ],
)
def test_non_utf8_text_we_need_is_named_with_its_offset(tmp_path, data, expected):
    loaded = config.load(write_bytes(tmp_path / "config.toml", data))
    assert loaded.status == config.INVALID
    assert expected in loaded.message and "save it as UTF-8" in loaded.message


def test_a_utf8_signature_at_the_start_is_accepted(tmp_path):
    loaded = config.load(write_bytes(tmp_path / "config.toml", b"\xef\xbb\xbf" + render_config().encode()))
    assert loaded.status == config.ACTIVE


def test_deep_nesting_is_reported_not_raised(tmp_path):
    loaded = load_text(tmp_path, render_config() + NESTED)
    assert loaded.status == config.INVALID and "nests arrays or tables too deeply" in loaded.message


def test_load_never_raises_even_on_a_bug_of_ours(tmp_path, monkeypatch):
    def bug(*args, **kwargs):
        raise KeyError("SECRET-access-0123456789")

    monkeypatch.setattr(config.settings, "parse_section", bug)
    loaded = load_text(tmp_path, render_config())
    assert loaded.status == config.INVALID and "could not be read (KeyError)" in loaded.message
    assert_no_secrets(loaded.message)
    settings, problem = config.load_for_tokens(tmp_path / "config.toml")
    assert settings is None and "KeyError" in problem


def _unblock_fifo(path: Path) -> None:
    """Give a reader stuck in open() on the FIFO its EOF (code that opens FIFOs would hang forever)."""
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
    except OSError:
        pass  # no reader waiting


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
def test_a_fifo_is_not_opened(tmp_path):
    path = tmp_path / "config.toml"
    os.mkfifo(path)
    answer = []
    reader = threading.Thread(target=lambda: answer.append(config.load(path)), daemon=True)
    reader.start()
    reader.join(5)
    _unblock_fifo(path)
    assert answer and answer[0].status == config.INVALID
    assert "is a FIFO (named pipe), not a regular file; point REMIXCRM_CONFIG at" in answer[0].message


@pytest.mark.skipif(not os.path.exists("/dev/zero"), reason="no /dev/zero here")
def test_a_symlink_to_a_device_is_not_read(tmp_path):
    path = tmp_path / "config.toml"
    path.symlink_to("/dev/zero")
    loaded = config.load(path)
    assert loaded.status == config.INVALID and "is a character device, not a regular file" in loaded.message


def test_a_huge_file_is_refused_unread(tmp_path, monkeypatch):
    opened, real_read, me = [], os.read, threading.get_ident()

    def spy(fd, n):  # the size seen at open must refuse it, before a byte is read
        if threading.get_ident() == me:
            opened.append(n)
        return real_read(fd, n)

    monkeypatch.setattr(os, "read", spy)
    path = write_bytes(tmp_path / "config.toml", render_config().encode() + b"# padding\n" * 500_000)
    loaded = config.load(path)
    assert loaded.status == config.INVALID and opened == []
    size = path.stat().st_size
    assert f"is {size} bytes, over the {config.MAX_CONFIG_BYTES} bytes a config file may have" in loaded.message


# --- through the hooks: nothing fired while the config is broken is lost ---


def _fire(pm, n: int) -> None:
    pm.hook.on_client_created(client={"id": n, "email": f"c{n}@example.com"})


BROKEN = {
    "malformed url": render_config(api_base_url="http://[::1/v3").encode(),
    "daily_quota inf": render_config(daily_quota=RAW("inf")).encode(),
    "daily_quota 0.5": render_config(daily_quota=RAW("0.5")).encode(),
    "requests_per_second nan": render_config(requests_per_second=RAW("nan")).encode(),
    "year 10000": render_config(token_expires_at=RAW("9999-12-31T23:59:59-01:00")).encode(),
    "latin-1 in our section": render_config(client_id="CLIENT").encode().replace(b"CLIENT", b"caf\xe9"),
    "deep nesting": (render_config() + NESTED).encode(),
    "5 MB": render_config().encode() + b"#" * 5_000_000,
}


@pytest.mark.parametrize("broken", BROKEN)
def test_events_fired_under_a_broken_config_are_sent_once_it_is_fixed(pm, isolated, write_config, mocked, logs, broken):
    write_bytes(isolated / "config.toml", BROKEN[broken])
    for n in range(2):
        assert _fire(pm, n) is None
    assert flush(5) and len(api_calls(mocked)) == 0
    errors = [r.getMessage() for r in logs.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and errors[0].startswith("constant contact sync is paused, config problem"), errors
    for n in range(2):
        mocked.post(SIGN_UP_URL, status=201, json={"contact_id": f"c-{n}"})
    write_config()  # fixed: the pause lifts by itself, no new event needed
    assert flush(5)
    sent = sorted(json.loads(c.request.body)["email_address"] for c in api_calls(mocked))
    assert sent == ["c0@example.com", "c1@example.com"]
    assert "sending resumes" in logs.text


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
def test_a_fifo_as_config_never_blocks_the_hook_and_its_events_are_kept(pm, isolated, write_config, mocked, logs):
    path = isolated / "config.toml"
    os.mkfifo(path)
    host = threading.Thread(target=_fire, args=(pm, 1), daemon=True)
    try:
        host.start()
        host.join(5)
        assert not host.is_alive(), "the hook is stuck reading the FIFO"
        _fire(pm, 2)  # another event, another thread's view: answered from the reading already made
    finally:
        _unblock_fifo(path)
    errors = [r.getMessage() for r in logs.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "is a FIFO (named pipe)" in errors[0]
    path.unlink()
    for n in range(2):
        mocked.post(SIGN_UP_URL, status=201, json={"contact_id": f"c-{n}"})
    write_config()
    assert flush(5) and len(api_calls(mocked)) == 2


def test_a_slow_read_never_holds_up_other_threads(write_config):
    reading, release = threading.Event(), threading.Event()

    def slow_load(path):
        if slow:
            reading.set()
            release.wait(10)  # a slow disk
        return config.load(path)

    slow = []
    watcher = config.ConfigWatcher(load=slow_load)
    write_config(provider="mailchimp")
    assert watcher.current().status == config.INACTIVE
    before = watcher.signature()
    slow.append(True)
    write_config()
    noticed = threading.Thread(target=watcher.current, daemon=True)
    noticed.start()
    assert reading.wait(5)
    answers = []
    other = threading.Thread(
        target=lambda: answers.append((watcher.current().status, watcher.signature())), daemon=True
    )
    other.start()
    other.join(5)
    release.set()
    noticed.join(5)
    # meanwhile the other thread got the previous reading at once, under a signature of its own:
    # a pause taken on that reading must lift when the new reading lands, and one taken before
    # must not look settled (unchanged) while the change is being read
    assert [status for status, _ in answers] == [config.INACTIVE]
    during = answers[0][1]
    assert during != before
    assert watcher.current().status == config.ACTIVE and watcher.signature() not in (before, during)


def _a_fix_being_read(write_config):
    """A watcher that read a config without our section; then the fix is written, and another
    thread's reading of it is held until ``release`` is set. Returns (watcher, release, reader)."""
    reading, release = threading.Event(), threading.Event()

    def slow_load(path):
        if slow:
            reading.set()
            release.wait(10)
        return config.load(path)

    slow = []
    watcher = config.ConfigWatcher(load=slow_load)
    write_config(provider="mailchimp")
    assert watcher.current().status == config.INACTIVE
    slow.append(True)
    write_config()  # the fix
    reader = threading.Thread(target=watcher.current, daemon=True)
    reader.start()
    assert reading.wait(5)
    return watcher, release, reader


def test_a_signature_taken_while_a_fix_is_read_waits_for_it_to_land(write_config):
    """A pause taken while another thread reads the fixed config, and a flush() looking at that
    pause, both saw the same "being read" signature and called the pause settled: flush()
    returned with the events unsent (tests/test_config.py's broken-config cases, 1 run in 10)."""
    waiting = threading.Event()
    watcher, release, _ = _a_fix_being_read(write_config)
    seen = watcher.signature(wait=0)  # a pause taken now, on the previous reading
    real_wait = watcher._landed.wait

    def wait(timeout=None):
        waiting.set()
        return real_wait(timeout)

    watcher._landed.wait = wait
    later = []
    looker = threading.Thread(target=lambda: later.append(watcher.signature(wait=10)), daemon=True)
    looker.start()
    assert waiting.wait(5)  # it waits for the reading under way...
    release.set()
    looker.join(5)
    assert later and later[0] != seen  # ...and sees it land: the pause lifts, flush() does not settle
    assert watcher.current().status == config.ACTIVE


def test_a_pause_on_a_broken_config_lifts_when_the_fix_lands_just_after_the_reading():
    from types import SimpleNamespace

    from remixcrm_plugin_ctct.delivery.send import Delivery

    version = [0]

    class Watcher:
        def current(self):
            version[0] += 1  # the fix lands right after this reading (another thread's, or a write completing)
            return config.LoadedConfig(config.INVALID, "broken", Path("config.toml"))

        def signature(self):
            return version[0]

    tokens = SimpleNamespace(store=SimpleNamespace(signature=lambda: None))
    delivery = Delivery(SimpleNamespace(), tokens, None, Watcher())
    pause = delivery.work_row(SimpleNamespace(id=1))
    assert pause is not None and pause.over(0.0)  # a signature taken after the reading would wait forever


def test_an_event_kept_in_memory_is_not_paused_for_good_by_a_fix_read_meanwhile(write_config):
    """The memory lane (the outbox not writable) read the config, then took the pause's signature.
    While another thread read the fix, the config it got was the previous, broken reading, and the
    signature waited for the fix to land and took it in: the pause never lifted (until some other
    change), the event stayed in memory and was lost at exit, and flush() called that settled."""
    from types import SimpleNamespace

    from remixcrm_plugin_ctct.delivery.memory_lane import MemoryEvent
    from remixcrm_plugin_ctct.delivery.pauses import Pause
    from remixcrm_plugin_ctct.delivery.send import Delivery
    from remixcrm_plugin_ctct.delivery.sign_up import Result

    watcher, release, reader = _a_fix_being_read(write_config)
    real_wait = watcher._landed.wait

    def wait(timeout=None):
        release.set()  # the reading lands while this thread waits for it
        return real_wait(timeout)

    watcher._landed.wait = wait
    tokens = SimpleNamespace(store=SimpleNamespace(signature=lambda: None))
    delivery = Delivery(SimpleNamespace(), tokens, None, watcher)
    delivery.sign_up = SimpleNamespace(send=lambda *args, **kwargs: Result("skipped", outcome="stub"))
    record = {"client_id": "1", "email": "a@example.com", "fields": {}, "event": "client_created", "at": 1.0}
    outcome = delivery.work_memory(MemoryEvent(record))
    reader.join(5)
    assert watcher.current().status == config.ACTIVE
    if isinstance(outcome, Pause):
        assert outcome.over(0.0), "the fix has landed, yet the pause holds"


@pytest.mark.parametrize("answer", ["needs re-authorisation", "401", "403"])
def test_a_config_fix_landing_while_a_send_fails_lifts_the_pause_it_causes(write_config, answer):
    """A send that fails for the tokens or the account (a refused refresh, a 401 even after a
    refresh, a 403) pauses until the config or the tokens change. The pause's signature was taken
    after the send: a fix to the config (new tokens pasted in Settings) landing during the send,
    or being read by another thread meanwhile (signature() waits for that reading), was taken in
    and never lifted the pause; flush() called it settled."""
    from types import SimpleNamespace

    from remixcrm_plugin_ctct.ctct.client import ApiError
    from remixcrm_plugin_ctct.ctct.token_manager import NeedsReauth
    from remixcrm_plugin_ctct.delivery.send import Delivery
    from remixcrm_plugin_ctct.delivery.sign_up import Result

    write_config()
    loaded = config.ConfigWatcher().current()
    assert loaded.status == config.ACTIVE
    version = [0]

    class Watcher:
        def current(self):
            return loaded

        def signature(self):
            return version[0]

    def send(*args, **kwargs):
        version[0] += 1  # the fix lands while this send learns that the old tokens are no good
        if answer == "needs re-authorisation":
            raise NeedsReauth("refused")
        return Result("failed", error=ApiError(int(answer), "unauthorized", "no"))

    tokens = SimpleNamespace(store=SimpleNamespace(signature=lambda: None))
    delivery = Delivery(SimpleNamespace(), tokens, None, Watcher())
    delivery.sign_up = SimpleNamespace(send=send)
    contact = {"email": "a@example.com", "fields": {}, "email_opt_in": True}
    row = SimpleNamespace(id=1, client_id="1", contact=contact, event="client_created", created_at=1.0)
    pause = delivery.work_row(row)
    assert pause is not None and pause.changed is not None and pause.changed()


# --- config_toml(): the one writer of config.toml text (demo, sandbox, benches, these tests) ---


def test_config_toml_round_trips_every_kind_of_value():
    import tomllib

    awkward = 'say "hi" \\ C:\\path\ttab\nline\x01\x7f café'
    when = dt.datetime(2026, 11, 27, 19, 0, 5, tzinfo=dt.UTC)
    text = config.config_toml(
        list_id=LIST_ID,
        client_id=awkward,
        dry_run=True,
        consent_guard=False,
        daily_quota=12,
        max_age_hours=1e-06,
        requests_per_second=float("inf"),
        token_expires_at=when,
        refresh_token=None,
        **{"odd key.x": 1},
    )
    doc = tomllib.loads(text)
    table = doc["email_marketing"]["constant_contact"]
    assert doc["email_marketing"]["provider"] == "constant_contact"
    assert table == {
        "list_id": LIST_ID,
        "client_id": awkward,
        "dry_run": True,
        "consent_guard": False,
        "daily_quota": 12,
        "max_age_hours": 1e-06,
        "requests_per_second": float("inf"),
        "token_expires_at": when,
        "odd key.x": 1,
    }  # (refresh_token=None: left out)
    assert "token_expires_at = 2026-11-27T19:00:05Z\n" in text


def test_config_toml_text_is_read_back_as_the_same_settings(tmp_path):
    when = dt.datetime(2030, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
    keys = {
        "list_id": LIST_ID,
        "access_token": ACCESS_TOKEN,
        "token_expires_at": when,
        "client_id": "app-key-1",
        "api_base_url": "http://127.0.0.1:9/v3",
        "daily_quota": 7,
        "retention_days": 0.5,
        "dry_run": True,
    }
    loaded = load_text(tmp_path, config.config_toml(**keys))
    assert loaded.status == config.ACTIVE
    assert loaded.settings == config.Settings(**keys)


def test_config_toml_without_provider_or_keys():
    assert config.config_toml(None) == "[email_marketing]\n"
    assert config.config_toml("mailchimp") == '[email_marketing]\nprovider = "mailchimp"\n'
    assert config.config_toml(list_id=config.Raw("42")).endswith("\nlist_id = 42\n")
    with pytest.raises(TypeError):
        config.config_toml(list_id=object())


def test_load_for_tokens_reads_the_file_once(tmp_path, monkeypatch):
    reads = []
    real = config.reading.read_doc

    def counting(path):
        reads.append(path)
        return real(path)

    monkeypatch.setattr(config.reading, "read_doc", counting)
    path = tmp_path / "config.toml"
    path.write_text(render_config(provider="none", list_id=None), encoding="utf-8")
    settings, problem = config.load_for_tokens(path)
    assert problem == "" and settings.access_token == ACCESS_TOKEN and settings.list_id == ""
    assert reads == [path]


def test_sender_is_thread_by_default_process_when_asked_and_a_wrong_one_is_named(tmp_path):
    assert load_text(tmp_path, render_config()).sender == "thread"
    loaded = load_text(tmp_path, render_config(sender="process"))
    assert loaded.status == config.ACTIVE and loaded.sender == loaded.settings.sender == "process"
    wrong = load_text(tmp_path, render_config(sender="processes"))
    assert wrong.status == config.INVALID
    assert 'sender must be one of "thread", "process" (got \'processes\'; default "thread")' in wrong.message


def test_sender_is_read_even_when_another_key_is_broken(tmp_path):
    # a host told to keep delivery out of its process must not start threads over a bad list id
    loaded = load_text(tmp_path, render_config(sender="process", list_id="my-list"))
    assert loaded.status == config.INVALID and loaded.sender == "process"


@pytest.mark.parametrize("value", [None, "", "/etc/remixcrm/a.toml", "relative.toml", "/tmp/\udcff-not-utf8.toml"])
def test_the_hooks_reading_of_remixcrm_config_is_os_environ_get(monkeypatch, value):
    """config_file() reads os.environ's own dict on the hot path: it must say what os.environ.get says."""
    from remixcrm_plugin_ctct.config.locate import _default_config_file, config_file

    for first in ("/somewhere/else.toml", None):  # whatever was read before (the decoded value is kept)
        if first is None:
            monkeypatch.delenv("REMIXCRM_CONFIG", raising=False)
        else:
            monkeypatch.setenv("REMIXCRM_CONFIG", first)
        config_file()
        if value is None:
            monkeypatch.delenv("REMIXCRM_CONFIG", raising=False)
        else:
            monkeypatch.setenv("REMIXCRM_CONFIG", value)
        assert config_file() == (os.environ.get("REMIXCRM_CONFIG") or _default_config_file())


def test_a_replaced_os_environ_is_read_as_os_environ_get_reads_it(monkeypatch):
    from remixcrm_plugin_ctct.config.locate import config_file

    monkeypatch.setenv("REMIXCRM_CONFIG", "/the/real/environ.toml")
    monkeypatch.setattr(os, "environ", {**os.environ, "REMIXCRM_CONFIG": "/a/replaced/mapping.toml"})
    assert config_file() == "/a/replaced/mapping.toml"
