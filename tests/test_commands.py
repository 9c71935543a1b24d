"""`remixcrm-ctct status | retry | flush | purge` against a real outbox."""

import re
import time

from conftest import SIGN_UP_URL

from remixcrm_plugin_ctct import config, flush, runtime
from remixcrm_plugin_ctct.admin import cli
from remixcrm_plugin_ctct.delivery import retry_policy
from remixcrm_plugin_ctct.delivery.send import QUOTA_KEY
from remixcrm_plugin_ctct.store.outbox import THROTTLED
from remixcrm_plugin_ctct.store.tokens import TokenState


def run(capsys, *args):
    code = cli.main(list(args))
    return code, capsys.readouterr().out


def test_status_counts_and_answers_for_one_client(pm, write_config, mocked, capsys, monkeypatch):
    monkeypatch.setattr(retry_policy, "BASE_DELAY", 600.0)  # the 503 is retried later, not during the test
    write_config()
    mocked.post(SIGN_UP_URL, status=201, json={"contact_id": "contact-1"})
    mocked.post(SIGN_UP_URL, status=400, json=[{"error_key": "json.field.invalid", "error_message": "bad phone"}])
    mocked.post(SIGN_UP_URL, status=503, body="busy")
    for n in range(3):
        pm.hook.on_client_created(client={"id": n, "email": f"c{n}@example.com"})
        assert flush(5)
    code, out = run(capsys, "status")
    assert code == 0
    assert re.search(r"delivered\s+1\n", out) and re.search(r"dead\s+1\n", out) and re.search(r"pending\s+1\n", out)
    assert "last error" in out and "oldest unsent event" in out
    code, out = run(capsys, "status", "--client", "0")
    assert code == 0 and "client 0: reached Constant Contact: contact contact-1 created" in out
    code, out = run(capsys, "status", "--client", "1")
    assert code == 1 and "NOT sent, given up" in out and "400 json.field.invalid: bad phone" in out
    assert "retry --dead" in out
    code, out = run(capsys, "status", "--client", "2")
    assert code == 1 and "not sent yet: pending, 1 attempt(s)" in out and "503" in out
    code, out = run(capsys, "status", "--client", "nobody")
    assert code == 1 and "no event in the outbox" in out


def test_status_names_the_pauses(write_config, capsys, isolated):
    write_config()
    rt = runtime.runtime()
    rt.outbox.set_meta(QUOTA_KEY, repr(time.time() + 3600))
    refused = "Constant Contact refused the refresh token (invalid_grant)"
    rt.tokens.store.write(TokenState("a", "r", needs_reauth=refused))
    _, out = run(capsys, "status")
    assert "paused: daily quota used up; sending resumes at" in out
    assert "paused: needs re-authorisation: Constant Contact refused the refresh token" in out


def test_retry_dead_and_flush_send_it_again(pm, write_config, mocked, capsys):
    write_config()
    mocked.post(SIGN_UP_URL, status=400, json=[{"error_key": "json.field.invalid", "error_message": "bad"}])
    pm.hook.on_client_created(client={"id": 1, "email": "c1@example.com"})
    assert flush(5)
    mocked.replace("POST", SIGN_UP_URL, status=201, json={"contact_id": "c"})
    code, out = run(capsys, "retry", "--dead")
    assert code == 0 and "1 event(s) due now (dead ones included)" in out
    code, out = run(capsys, "flush", "--timeout", "10")
    # this process's sender may already have sent it (it is running since the hook): either way
    # flush succeeds and the client reached Constant Contact
    assert code == 0 and ("delivered 1, pending 0, dead 0" in out or out.strip() == "nothing to send")
    assert flush(5)
    code, out = run(capsys, "status", "--client", "1")
    assert code == 0 and "reached Constant Contact" in out


def test_purge_keeps_status_records(pm, write_config, mocked, capsys):
    write_config(retention_days=0.000001)
    mocked.post(SIGN_UP_URL, status=201, json={"contact_id": "c"})
    pm.hook.on_client_created(client={"id": 1, "email": "c1@example.com"})
    assert flush(5)
    time.sleep(0.2)  # let the delivered row age past a retention of 0.09 s (a clock, not synchronisation)
    code, out = run(capsys, "purge")
    assert code == 0 and "forgot the emails and names of 1 event(s)" in out
    _, out = run(capsys, "status", "--client", "1")
    assert "reached Constant Contact" in out


def test_status_says_in_one_line_that_the_outbox_file_is_damaged(write_config, capsys, isolated):
    write_config()
    config.data_dir().mkdir(mode=0o700, parents=True)
    (config.data_dir() / "outbox.sqlite3").write_bytes(b"not SQLite: half of a backup copied over it\n" * 200)
    code, out = run(capsys, "status")
    assert code != 0 and capsys.readouterr().err == ""
    (line,) = out.splitlines()
    assert "the outbox file" in line and "outbox.sqlite3 is damaged" in line and "move it aside" in line
    code, out = run(capsys, "status", "--client", "1")
    assert code != 0 and "is damaged" in out and len(out.splitlines()) == 1


def test_status_says_the_governor_file_is_damaged_and_shows_the_rest(write_config, capsys, isolated):
    write_config()
    config.data_dir().mkdir(mode=0o700, parents=True)
    (config.data_dir() / "governor.sqlite3").write_bytes(b"\x00garbage" * 1000)
    code, out = run(capsys, "status")
    assert code != 0 and capsys.readouterr().err == ""
    assert re.search(r"pending\s+0\n", out)
    assert "the rate governor file" in out and "governor.sqlite3 is damaged" in out and "move it aside" in out


def test_status_counts_throttled_answers_today(write_config, capsys):
    write_config()
    rt = runtime.runtime()
    rt.outbox.bump_counter(THROTTLED)
    rt.outbox.bump_counter(THROTTLED)
    _, out = run(capsys, "status")
    assert "throttled answers today (UTC): 2" in out
