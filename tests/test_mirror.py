"""The suppression mirror, over real HTTP against the sandbox: seed, catch-up, clears, failures."""

import datetime as dt
import os
import subprocess
import sys
import threading

import pytest
import requests
import responses

from remixcrm_plugin_ctct import runtime
from remixcrm_plugin_ctct.admin import cli
from remixcrm_plugin_ctct.ctct.client import ApiError, CtctClient, contacts_query
from remixcrm_plugin_ctct.delivery.mirror import OVERLAP, SYNCED_AT, WATERMARK, Mirror
from remixcrm_plugin_ctct.sandbox import SEEDED_LIST_ID, Sandbox
from remixcrm_plugin_ctct.sandbox.activities import apply as sandbox_import
from remixcrm_plugin_ctct.store.interfaces import Suppression
from remixcrm_plugin_ctct.store.outbox import Outbox
from remixcrm_plugin_ctct.store.suppressions import SqliteSuppressions

TOKEN = "mirror-test-token"
T0 = dt.datetime(2026, 11, 2, 9, 0, tzinfo=dt.UTC).timestamp()


@pytest.fixture
def mocked():
    """Plain ``responses`` (conftest's stubs the mirror's reads; these tests script them)."""
    with responses.RequestsMock(assert_all_requests_are_fired=True) as rsps:
        yield rsps


@pytest.fixture
def sb():
    with Sandbox(access_token=TOKEN) as sandbox:
        clock = [T0]
        sandbox.api.clock = lambda: clock[0]  # the sandbox's contacts and its Date header
        sandbox.clock = clock
        yield sandbox


@pytest.fixture
def store(tmp_path):
    outbox = Outbox(tmp_path / "data")
    yield SqliteSuppressions(outbox)
    outbox.close()


class Calls:
    """What the coordinator passes as ``call``: one request per call, counted; ``before`` runs first."""

    def __init__(self, sb):
        self.client, self.count, self.before = CtctClient(sb.api_base_url, TOKEN), 0, None

    def __call__(self, request):
        self.count += 1
        if self.before is not None:
            self.before(self.count)
        return request(self.client)


def advance(sb, seconds):
    sb.clock[0] += seconds


def sign_up(sb, email):
    status, _ = sb.api.sign_up({"email_address": email, "list_memberships": [SEEDED_LIST_ID]})
    assert status in (200, 201)


def test_the_seed_pages_through_unsubscribed_and_deleted_contacts(sb, store):
    for n in range(7):
        sb.api.seed_contact(f"gone{n}@example.com", permission_to_send="unsubscribed")
    for n in range(4):
        sb.api.seed_contact(f"deleted{n}@example.com", deleted=True)
    for n in range(3):
        sb.api.seed_contact(f"active{n}@example.com")
    mirror, calls = Mirror(store, page_limit=3), Calls(sb)
    assert mirror.synced_at() is None
    assert mirror.refresh(calls, now=T0) is True
    assert calls.count == 4  # 11 suppressed, 3 a page
    assert store.counts() == {"unsubscribed": 7, "deleted": 4}
    assert mirror.watermark() == T0  # Constant Contact's clock (the Date header), not ours
    found = mirror.filter(["GONE3@Example.com", "deleted2@example.com", "active0@example.com", "new@example.com"])
    assert set(found) == {"gone3@example.com", "deleted2@example.com"}  # keyed lower-cased, any case in
    gone = found["gone3@example.com"]
    assert (gone.reason, gone.at, gone.source) == ("unsubscribed", T0, "Contact")
    assert gone.contact_id == sb.api.contacts["gone3@example.com"]["contact_id"]
    assert found["deleted2@example.com"].reason == "deleted"


def test_a_seed_of_10000_suppressed_contacts_costs_20_requests(sb, store):
    with sb.api.lock:  # seeding 10,000 through seed_contact would be slow; same shape
        for n in range(10_000):
            sb.api.contacts[f"u{n}@example.com"] = {
                "contact_id": f"c{n}",
                "email_address": f"u{n}@example.com",
                "list_memberships": [],
                "permission_to_send": "unsubscribed" if n % 2 else "implicit",
                "created": T0,
                "updated": T0,
                "opt_out": T0,
                **({"deleted_at": "2026-11-02"} if not n % 2 else {}),
            }
    calls = Calls(sb)
    assert Mirror(store).refresh(calls, now=T0)
    assert calls.count == 20
    assert store.counts() == {"unsubscribed": 5000, "deleted": 5000}


def test_an_opt_out_after_the_seed_is_caught_though_updated_after_misses_it(sb, store):
    sb.api.seed_contact("ada@example.com")
    advance(sb, 86400)  # the contact was last updated a day before the seed
    mirror, calls = Mirror(store), Calls(sb)
    mirror.refresh(calls, now=T0)
    advance(sb, 3600)
    sb.api.unsubscribe("ada@example.com")  # by the person: Constant Contact leaves updated_at alone
    since = mirror.watermark() - OVERLAP
    updated, _ = calls.client.list_contacts(status="all", updated_after=since, limit=500)
    assert updated == []  # what a mirror watching updated_after alone would see
    calls.count = 0
    assert mirror.refresh(calls, now=T0 + 3600)
    assert calls.count == 2  # optout_after + updated_after, one page each
    (ada,) = mirror.filter(["Ada@Example.com"]).values()
    opted_out = T0 + 86400 + 3600
    assert (ada.reason, ada.at, ada.source, ada.opted_out_at) == ("unsubscribed", opted_out, "Contact", opted_out)
    assert mirror.watermark() == opted_out


def test_a_deletion_after_the_seed_is_caught_and_wins_over_the_opt_out(sb, store):
    sb.api.seed_contact("bob@example.com", permission_to_send="unsubscribed")
    mirror, calls = Mirror(store), Calls(sb)
    mirror.refresh(calls, now=T0)
    advance(sb, 7200)
    sb.api.delete("bob@example.com")
    mirror.refresh(calls, now=T0 + 7200)
    (bob,) = mirror.filter(["bob@example.com"]).values()
    # deleted wins as the reason; the opt-out's time is kept
    assert (bob.reason, bob.at, bob.opted_out_at) == ("deleted", T0 + 7200, T0)
    assert store.counts() == {"deleted": 1}


def test_re_subscribed_and_revived_contacts_are_cleared(sb, store):
    sb.api.seed_contact("back@example.com", permission_to_send="unsubscribed")
    sb.api.seed_contact("revived@example.com", deleted=True)
    sb.api.seed_contact("still@example.com", permission_to_send="unsubscribed")
    mirror, calls = Mirror(store), Calls(sb)
    mirror.refresh(calls, now=T0)
    assert len(mirror.filter(["back@example.com", "revived@example.com", "still@example.com"])) == 3
    advance(sb, 600)
    sign_up(sb, "back@example.com")  # the person signs up again: explicit, updated_at moves
    sandbox_import(sb.api, [{"email": "revived@example.com"}], [SEEDED_LIST_ID])  # an import revives it
    assert mirror.refresh(calls, now=T0 + 600)
    assert set(mirror.filter(["back@example.com", "revived@example.com", "still@example.com"])) == {"still@example.com"}


def test_a_page_read_before_an_opt_out_does_not_clear_it(store):
    store.record([Suppression("ada@example.com", "unsubscribed", 2000.0, "Contact", "c1")])
    store.clear_stale({"ADA@example.com": 1500.0})  # active as of an older update: stale
    assert set(store.suppressed(["ada@example.com"])) == {"ada@example.com"}
    store.clear_stale({"ada@example.com": 2500.0})  # updated after the opt-out: re-subscribed
    assert store.suppressed(["ada@example.com"]) == {}


def test_a_failure_mid_paging_keeps_the_watermark_and_the_next_pass_completes(sb, store):
    sb.api.seed_contact("first@example.com", permission_to_send="unsubscribed")
    for n in range(5):
        sb.api.seed_contact(f"later{n}@example.com")
    mirror, calls = Mirror(store, page_limit=2), Calls(sb)
    mirror.refresh(calls, now=T0)
    advance(sb, 3600)
    for n in range(5):
        sb.api.unsubscribe(f"later{n}@example.com")
    calls.count = 0
    calls.before = lambda n: sb.faults.fail_next(1, 503) if n == 2 else None  # the second page fails
    with pytest.raises(ApiError) as failed:
        mirror.refresh(calls, now=T0 + 3600)
    assert failed.value.status == 503
    assert (mirror.watermark(), mirror.synced_at()) == (T0, T0)
    assert store.counts()["unsubscribed"] < 6  # half applied: harmless, the next pass reads it again
    calls.before = None
    assert mirror.refresh(calls, now=T0 + 3601)  # not fresh: the failed pass did not count
    assert store.counts() == {"unsubscribed": 6}
    assert mirror.watermark() == T0 + 3600


def test_a_refresh_within_max_age_makes_no_request_in_any_process(sb, store):
    mirror, calls = Mirror(store), Calls(sb)
    assert mirror.refresh(calls, now=T0, max_age=60)
    calls.count = 0
    assert mirror.refresh(calls, now=T0 + 59, max_age=60) is False
    assert Mirror(store).refresh(calls, now=T0 + 30) is False  # another process: the time is shared
    assert calls.count == 0
    assert mirror.refresh(calls, now=T0 + 60, max_age=60)
    assert calls.count == 2


def test_threads_that_refresh_together_make_one_pass(sb, store):
    mirror, calls = Mirror(store), Calls(sb)
    start = threading.Barrier(4)
    results = []

    def refresh():
        start.wait()
        results.append(mirror.refresh(calls, now=T0))

    threads = [threading.Thread(target=refresh) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [False, False, False, True]
    assert calls.count == 1


def test_record_keeps_the_newer_fact_and_the_time_it_was_first_recorded(store):
    old = Suppression("ada@example.com", "unsubscribed", 1000.0, "Contact", "c1")
    store.record([old], now=5000.0)
    store.record([old._replace(at=900.0, reason="deleted")], now=6000.0)  # older: ignored
    store.record([old._replace(contact_id=None)], now=7000.0)  # the same fact again (an overlap)
    assert store.suppressed(["ada@example.com"])["ada@example.com"] == old._replace(opted_out_at=None)
    recorded = store.outbox.connections.get().execute("SELECT recorded_at FROM suppressed").fetchall()
    assert recorded == [(5000.0,)]  # "new since" readers see each fact once
    store.record([old._replace(at=2000.0, reason="deleted", source=None)], now=8000.0)
    now_held = store.suppressed(["ada@example.com"])["ada@example.com"]
    assert (now_held.reason, now_held.source, now_held.contact_id) == ("deleted", "Contact", "c1")
    store.clear(["ADA@example.com"])
    assert store.counts() == {}


def test_50000_emails_in_one_lookup(store):
    store.record(Suppression(f"s{n}@example.com", "unsubscribed", 1.0, None, None) for n in range(0, 50_000, 7))
    found = store.suppressed(f"S{n}@example.com" for n in range(50_000))
    assert len(found) == len(range(0, 50_000, 7)) and "s7@example.com" in found


def test_watermarks_live_in_the_shared_meta_apart_from_the_outboxs_keys(store):
    store.set_meta(WATERMARK, "1.5")
    assert store.get_meta(WATERMARK) == "1.5" and store.outbox.get_meta(WATERMARK) is None
    store.set_meta(SYNCED_AT, None)
    assert store.get_meta(SYNCED_AT) is None


def test_list_contacts_sends_only_the_specs_parameters(sb):
    client = CtctClient(sb.api_base_url, TOKEN)
    with pytest.raises(ValueError, match="cursor"):
        client.list_contacts(cursor="x")
    query = contacts_query({"email": "Ada@Example.COM", "optout_after": 0, "include_count": True})
    assert query == {"email": "ada@example.com", "optout_after": "1970-01-01T00:00:00.000Z", "include_count": "true"}
    sb.api.seed_contact("ada@example.com")
    contacts, following = client.list_contacts(email="ADA@example.com")
    assert [c["email_address"]["address"] for c in contacts] == ["ada@example.com"] and following is None


def test_a_next_link_to_another_host_is_refused_and_the_proxy_prefix_is_kept():
    client = CtctClient("https://proxy.example.com/ctct/v3", TOKEN)
    with pytest.raises(ApiError, match="another host"):
        client.next_contacts("https://elsewhere.example.com/v3/contacts?cursor=abc")
    assert client._under_base("/v3/contacts?cursor=abc") == "/contacts?cursor=abc"
    assert client._under_base("/ctct/v3/contacts?cursor=abc") == "/contacts?cursor=abc"


@pytest.mark.parametrize(
    "params, message",
    [
        ({"offset": "5"}, "offset is not a parameter of GET /contacts"),
        ({"lists": SEEDED_LIST_ID}, "lists is a parameter of GET /contacts that the sandbox does not model"),
        ({"include": "friends"}, "include must be among"),
        ({"status": "unsubscribed,explicit"}, "status must be among"),
        ({"limit": "501"}, "limit must be from 1 to 500"),
        ({"cursor": "abc", "limit": "5"}, "cursor comes alone"),
    ],
)
def test_the_sandbox_refuses_parameters_the_spec_does_not_define(sb, params, message):
    answer = requests.get(
        f"{sb.api_base_url}/contacts", params=params, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=5
    )
    assert answer.status_code == 400 and message in answer.json()[0]["error_message"]


def test_status_shows_the_mirror_once_it_has_synced(write_config, capsys):
    write_config()
    store = SqliteSuppressions(runtime.runtime().outbox)
    assert cli.main(["status"]) == 0
    assert "suppressed:" not in capsys.readouterr().out  # never synced: nothing to show
    store.record([Suppression(f"u{n}@example.com", "unsubscribed", 1.0, None, None) for n in range(3)])
    store.record([Suppression("d@example.com", "deleted", 1.0, None, None)])
    store.set_meta(SYNCED_AT, repr(T0))
    assert cli.main(["status"]) == 0
    assert "suppressed: 3 unsubscribed, 1 deleted (synced 2026-11-02T09:00:00Z)" in capsys.readouterr().out


FORK_PROBE = r"""
import os, sys, threading
from remixcrm_plugin_ctct.delivery.mirror import Mirror
from remixcrm_plugin_ctct.store.interfaces import Suppression
from remixcrm_plugin_ctct.store.outbox import Outbox
from remixcrm_plugin_ctct.store.suppressions import SqliteSuppressions
mirror = Mirror(SqliteSuppressions(Outbox(sys.argv[1])))
mirror.store.record([Suppression("a@example.com", "deleted", 1.0, None, None)])
held, release = threading.Event(), threading.Event()
def hold():
    with mirror._lock:  # a parent thread mid-pass at the fork
        held.set()
        release.wait()
threading.Thread(target=hold).start()
held.wait()
pid = os.fork()
if pid == 0:
    ok = mirror._lock.acquire(timeout=5) and mirror.store.counts() == {"deleted": 1}
    os._exit(0 if ok else 1)
release.set()
sys.exit(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
"""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork (POSIX)")
def test_a_forked_child_gets_its_own_lock_and_connection(tmp_path):
    # in a subprocess: the pytest process itself never forks while it has threads
    done = subprocess.run([sys.executable, "-c", FORK_PROBE, str(tmp_path)], capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr.decode()


def test_a_next_link_that_loops_ends_the_pass_without_moving_the_watermark(store, mocked):
    client = CtctClient("https://api.cc.email/v3", TOKEN)
    looping = {"contacts": [], "_links": {"next": {"href": "/v3/contacts?cursor=again"}}}
    mocked.get("https://api.cc.email/v3/contacts", json=looping)  # the first page, then the loop
    mocked.get("https://api.cc.email/v3/contacts?cursor=again", json=looping)
    with pytest.raises(ApiError, match="repeated"):
        Mirror(store).refresh(lambda request: request(client), now=T0)
    assert Mirror(store).watermark() is None
    assert len(mocked.calls) == 2
