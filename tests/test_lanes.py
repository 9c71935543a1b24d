"""The lane rule is written twice (SQL for claims, Python for the last word before a send): they
must agree on every case, or a row could bounce between the lanes. And import bodies stay inside
Constant Contact's limits."""

import itertools
import json
import sqlite3

from remixcrm_plugin_ctct.delivery import import_batches
from remixcrm_plugin_ctct.store import lanes, newest, outbox_sql


def test_the_sql_and_the_python_lane_rules_agree_on_every_case():
    conn = sqlite3.connect(":memory:")
    conn.executescript(outbox_sql.SCHEMA)
    cases = itertools.product(
        [True, False, None],  # the newest answer
        [5.0, 15.0, None],  # when that answer was given (the row's first event is at 10)
        ["client_created", "lead_converted", lanes.BACKFILL],
        ["implicit", "skip", "explicit"],
        [True, False],  # a newest-state row exists (older outboxes may lack one)
        [False, True],  # that answer came from a backfill file
    )
    seen = set()
    for case in cases:
        opt_in, given, event, unknown, has_latest, by_backfill = case
        conn.execute("DELETE FROM events")
        conn.execute("DELETE FROM latest")
        contact: dict = {"email": "a@b.co", "fields": {}}
        stamps: dict = {"email": [1, 0], "fields": {}}
        if opt_in is not None:
            contact["email_opt_in"] = opt_in
        if given is not None:
            stamps["email_opt_in"] = [given, 0]
        if by_backfill:
            stamps[newest.OPT_IN_BY] = lanes.BACKFILL
        conn.execute(outbox_sql.INSERT_PENDING, ("a@b.co", "1", "", event, json.dumps(contact), 10.0, 10.0, 10.0))
        if has_latest:
            row = ("a@b.co", json.dumps(contact), json.dumps(stamps), "1", event, 1.0, 0, 1.0)
            conn.execute(outbox_sql.UPSERT_LATEST, row)
        (by_sql,) = conn.execute(f"SELECT {lanes.IMPORT_SQL} FROM events e", lanes.sql_args(unknown)).fetchone()
        in_force = newest.consent_in_force(contact, json.dumps(stamps) if has_latest else None, 10.0, event)
        by_python = lanes.lane_of(in_force.get("email_opt_in"), event, unknown)
        assert by_sql in (0, 1), case
        assert (lanes.IMPORT if by_sql else lanes.SIGN_UP) == by_python, case
        seen.add(by_python)
    assert seen == {lanes.IMPORT, lanes.SIGN_UP}


def test_the_lanes_as_documented():
    assert lanes.lane_of(None, "client_created", "implicit") == lanes.IMPORT
    assert lanes.lane_of(True, "client_created", "implicit") == lanes.SIGN_UP
    assert lanes.lane_of(False, lanes.BACKFILL, "implicit") == lanes.SIGN_UP  # skipped there, no request
    assert lanes.lane_of(True, lanes.BACKFILL, "explicit") == lanes.IMPORT  # history never re-subscribes
    assert lanes.lane_of(None, "client_created", "explicit") == lanes.SIGN_UP


def test_bodies_stay_under_the_contact_and_size_limits_and_keep_the_order():
    items = [(n, {"email": f"person.number.{n}@example.com", "first_name": "Ä" * 50}) for n in range(1000)]
    packed = import_batches.batches(items, "list-1", max_contacts=300, max_bytes=50_000)
    assert [k for keys, _ in packed for k in keys] == list(range(1000))
    for keys, body in packed:
        decoded = json.loads(body)
        assert len(body) <= 50_000 and len(keys) <= 300
        assert [r["email"] for r in decoded["import_data"]] == [items[k][1]["email"] for k in keys]
        assert decoded["list_ids"] == ["list-1"]
    full = import_batches.batches([(n, {"email": f"p{n}@example.com"}) for n in range(40_001)], "l")
    assert [len(keys) for keys, _ in full] == [40_000, 1]


def test_an_import_contact_uses_the_import_schema_names():
    stored = {"email": "a@example.com", "fields": {"phone_number": "555", "company_name": "ACME"}}
    assert import_batches.import_contact(stored) == {"email": "a@example.com", "phone": "555", "company_name": "ACME"}
