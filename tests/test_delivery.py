"""``Delivery.work_row``: one leased row, one outcome — written to the outbox, or a Pause returned
for the worker to hold (the row then stays leased: the worker hands it back after pausing)."""

import time

import pytest
from conftest import ACCESS_TOKEN, API, RAW, SIGN_UP_URL, add_event

from remixcrm_plugin_ctct import config
from remixcrm_plugin_ctct.ctct.token_manager import TokenManager
from remixcrm_plugin_ctct.delivery import retry_policy
from remixcrm_plugin_ctct.delivery.governors import Governors
from remixcrm_plugin_ctct.delivery.send import QUOTA_KEY, Delivery
from remixcrm_plugin_ctct.payload import Contact
from remixcrm_plugin_ctct.store.outbox import Outbox
from remixcrm_plugin_ctct.store.tokens import TokenStore

TOKEN_URL = "https://authz.constantcontact.com/oauth2/default/v1/token"


@pytest.fixture
def parts(tmp_path, write_config):
    write_config()
    data = tmp_path / "parts"
    outbox = Outbox(data)
    delivery = Delivery(outbox, TokenManager(TokenStore(data)), Governors(data), config.ConfigWatcher())
    yield outbox, delivery
    outbox.close()


def leased(outbox: Outbox, n: int = 1, **extra):
    add_event(outbox, Contact(str(n), f"c{n}@example.com", {"first_name": "C"}, **extra), "client_created")
    (row,) = outbox.claim_many("test", 1)
    return row


def only_row(outbox: Outbox, client_id: str = "1") -> dict:
    (row,) = outbox.for_client(client_id)
    return row


def test_created_and_updated(parts, mocked):
    outbox, delivery = parts
    mocked.post(SIGN_UP_URL, status=201, json={"contact_id": "new-1"})
    mocked.post(SIGN_UP_URL, status=200, json={"contact_id": "old-2"})
    assert delivery.work_row(leased(outbox, 1)) is None
    assert delivery.work_row(leased(outbox, 2)) is None
    one, two = only_row(outbox, "1"), only_row(outbox, "2")
    assert (one["state"], one["contact_id"], one["outcome"]) == ("delivered", "new-1", "created")
    assert (two["state"], two["contact_id"], two["outcome"]) == ("delivered", "old-2", "updated")


def test_skipped_when_the_client_declined(parts, mocked):
    outbox, delivery = parts
    assert delivery.work_row(leased(outbox, email_opt_in=False)) is None  # no request at all
    row = only_row(outbox)
    assert row["state"] == "skipped" and row["outcome"] == "skipped: declined marketing email"


def test_a_dry_run_records_what_it_would_send(parts, write_config, mocked):
    outbox, delivery = parts
    write_config(dry_run=RAW("true"))
    mocked.get(f"{API}/contacts", json={"contacts": []})  # a dry run looks up, to predict created or updated
    assert delivery.work_row(leased(outbox)) is None
    row = only_row(outbox)
    assert row["state"] == "dry_run" and row["outcome"].startswith("would create: POST /contacts/sign_up_form")


def test_a_transient_error_is_retried_later(parts, mocked):
    outbox, delivery = parts
    mocked.post(SIGN_UP_URL, status=503, body="busy")
    assert delivery.work_row(leased(outbox)) is None
    row = only_row(outbox)
    assert row["state"] == "pending" and row["attempts"] == 1 and "503" in row["last_error"]
    assert row["next_attempt_at"] > time.time() - 1


def test_a_row_failing_past_its_max_age_is_dead(parts, mocked):
    outbox, delivery = parts
    mocked.post(SIGN_UP_URL, status=503, body="busy")
    row = leased(outbox)._replace(created_at=time.time() - retry_policy.DEFAULT_MAX_AGE - 3600)
    assert delivery.work_row(row) is None
    assert only_row(outbox)["state"] == "dead" and "gave up after 72 h" in only_row(outbox)["last_error"]


def test_a_bad_payload_is_dead_at_once(parts, mocked):
    outbox, delivery = parts
    mocked.post(SIGN_UP_URL, status=400, json=[{"error_key": "json.field.invalid", "error_message": "bad phone"}])
    assert delivery.work_row(leased(outbox)) is None
    row = only_row(outbox)
    assert row["state"] == "dead" and "bad phone" in row["last_error"]


def test_a_401_after_a_refresh_pauses_until_the_config_or_tokens_change(parts, write_config, mocked):
    outbox, delivery = parts
    mocked.post(SIGN_UP_URL, status=401, json=[{"error_key": "unauthorized", "error_message": "no"}])
    mocked.post(TOKEN_URL, json={"access_token": "fresh", "refresh_token": "r2", "expires_in": 86400})
    mocked.post(SIGN_UP_URL, status=401, json=[{"error_key": "unauthorized", "error_message": "still no"}])
    pause = delivery.work_row(leased(outbox))
    assert pause is not None and pause.reason == "a refused access token" and "401" in pause.error
    assert pause.until is None and not pause.changed()
    assert only_row(outbox)["state"] == "sending"  # left to the worker: it pauses first, then hands it back
    write_config(access_token="pasted-anew")
    assert pause.changed()


def test_a_403_pauses_until_a_change_or_the_recheck(parts, mocked):
    outbox, delivery = parts
    mocked.post(SIGN_UP_URL, status=403, json=[{"error_key": "forbidden", "error_message": "no scope"}])
    pause = delivery.work_row(leased(outbox))
    assert pause is not None and pause.reason.startswith("Constant Contact's 403")
    assert pause.until == pytest.approx(time.time() + retry_policy.FORBIDDEN_RECHECK, abs=5)
    assert pause.row_due_at(1.0) == 1.0  # a fix may come any time: the row is due at once
    assert only_row(outbox)["state"] == "sending"


def test_the_daily_quota_pauses_every_process_until_midnight(parts, mocked):
    outbox, delivery = parts
    mocked.post(SIGN_UP_URL, status=429, json=[{"error_key": "quota_exceeded", "error_message": "quota"}])
    pause = delivery.work_row(leased(outbox))
    midnight = retry_policy.next_utc_midnight(time.time())
    assert pause is not None and pause.until == midnight and pause.row_due_at(time.time()) == midnight
    assert float(outbox.get_meta(QUOTA_KEY)) == midnight  # other processes stop too
    assert delivery.shared_pause() == pause
    assert only_row(outbox)["state"] == "sending"


def test_an_invalid_config_pauses_until_the_file_changes(parts, write_config, mocked):
    outbox, delivery = parts
    write_config(list_id="not-a-uuid")
    pause = delivery.work_row(leased(outbox))
    assert pause is not None and pause.reason == "the config (invalid)" and not pause.changed()
    write_config()
    assert pause.changed()
    assert only_row(outbox)["state"] == "sending"


def test_no_shared_pause_by_default(parts):
    assert parts[1].shared_pause() is None


def test_the_access_token_from_the_config_is_used(parts, mocked):
    outbox, delivery = parts
    call = mocked.post(SIGN_UP_URL, status=201, json={"contact_id": "x"})
    delivery.work_row(leased(outbox))
    assert call.calls[0].request.headers["Authorization"] == f"Bearer {ACCESS_TOKEN}"
    assert API in call.calls[0].request.url
