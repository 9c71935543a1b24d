import os
import stat
import time

from remixcrm_plugin_ctct import outbox_admin
from remixcrm_plugin_ctct.journal import Journal, encode
from remixcrm_plugin_ctct.outbox import Outbox
from remixcrm_plugin_ctct.payload import Contact


def contact(n, email=None, **fields):
    return Contact(str(n), email or f"c{n}@example.com", fields)


def test_files_are_private(tmp_path):
    box = Outbox(tmp_path / "d")
    box.add(contact(1), "e")
    assert stat.S_IMODE(os.stat(box.path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(box.path.parent).st_mode) == 0o700


def test_pending_events_for_one_email_coalesce_newest_fields_winning(tmp_path):
    box = Outbox(tmp_path)
    box.add(Contact("1", "Ada@Example.com", {"first_name": "Ada", "phone_number": "1"}), "client_created")
    box.add(Contact("2", "ada@example.com", {"first_name": "Augusta"}, True), "lead_converted from lead 7")
    row = box.claim("me")
    assert row.contact == {"email": "ada@example.com", "fields": {"first_name": "Augusta", "phone_number": "1"}, "email_opt_in": True}
    assert (row.client_id, row.event) == ("2", "lead_converted from lead 7")
    assert box.claim("me") is None  # one push, not two
    assert [r["client_id"] for r in outbox_admin.for_client(box, "1")] == ["2"]  # client 1 is traceable


def test_a_lease_gives_a_row_to_one_owner_until_it_expires(tmp_path):
    box = Outbox(tmp_path)
    box.add(contact(1), "e")
    now = time.time()
    assert box.claim("a", now=now, lease=60).id == 1
    assert box.claim("b", now=now + 30) is None  # a still holds it
    stolen = box.claim("b", now=now + 61)  # a died: its lease expired
    assert stolen.id == 1 and stolen.attempts == 2


def test_a_second_event_waits_while_the_first_for_that_email_is_in_flight(tmp_path):
    box = Outbox(tmp_path)
    box.add(contact(1, "x@example.com"), "e")
    first = box.claim("a")
    box.add(contact(2, "x@example.com"), "e")  # arrives while the first is being sent
    assert box.claim("b") is None  # would be a simultaneous write to one contact: Constant Contact's 409
    box.delivered(first.id, "c", "created")
    assert box.claim("b").client_id == "2"


def test_a_retried_row_merges_with_a_newer_pending_one(tmp_path):
    box = Outbox(tmp_path)
    box.add(contact(1, "x@example.com", first_name="Old", job_title="CEO"), "e")
    first = box.claim("a")
    box.add(contact(2, "x@example.com", first_name="New"), "e")
    box.retry_later(first.id, time.time(), "503")
    (row,) = [box.claim("a")]
    assert row.contact["fields"] == {"first_name": "New", "job_title": "CEO"}
    assert box.claim("a") is None
    assert outbox_admin.summary(box).counts == {"sending": 1}


def test_release_hands_back_unfinished_rows_without_counting_the_attempt(tmp_path):
    box = Outbox(tmp_path)
    box.add(contact(1), "e")
    box.claim("me")
    assert box.release("me") == 1
    assert box.due_count() == 1 and box.claim("other").attempts == 1


def test_purge_forgets_emails_but_keeps_the_status_record(tmp_path):
    box = Outbox(tmp_path)
    box.add(contact(1), "e")
    row = box.claim("me")
    box.delivered(row.id, "contact-1", "created", now=time.time() - 31 * 86400)
    assert outbox_admin.purge(box, 30 * 86400) == 1
    (record,) = outbox_admin.for_client(box, "1")
    assert (record["state"], record["contact_id"], record["outcome"]) == ("delivered", "contact-1", "created")
    assert box._query("SELECT contact, email_key FROM events") == [(None, None)]


def test_retry_dead_gives_a_dead_row_a_new_life(tmp_path):
    box = Outbox(tmp_path)
    box.add(contact(1), "e")
    box.dead(box.claim("me").id, "400 bad")
    assert outbox_admin.retry(box) == 0
    assert outbox_admin.retry(box, dead=True) == 1
    assert box.claim("me").attempts == 1


def test_journal_lines_are_folded_exactly_once(tmp_path):
    box, journal = Outbox(tmp_path), Journal(tmp_path)
    for n in range(5):
        journal.append(encode(contact(n), "e", time.time()))
    assert journal.backlog(box.journal_offset)
    assert journal.fold_into(box) == 5
    assert journal.fold_into(box) == 0 and not journal.backlog(box.journal_offset)
    assert box.due_count() == 5
    assert stat.S_IMODE(os.stat(next((tmp_path / "journal").glob("*.jsonl"))).st_mode) == 0o600


def test_the_journal_makes_the_plugin_dir_private(tmp_path):
    journal = Journal(tmp_path / "remixcrm" / "constant_contact")
    journal.append(encode(contact(1), "e", time.time()))
    assert stat.S_IMODE(os.stat(tmp_path / "remixcrm" / "constant_contact").st_mode) == 0o700
    assert stat.S_IMODE(os.stat(journal.directory).st_mode) == 0o700


def test_a_dead_processs_journal_is_adopted(tmp_path):
    box = Outbox(tmp_path)
    orphan = tmp_path / "journal" / "99999-dead.jsonl"
    orphan.parent.mkdir(parents=True)
    orphan.write_bytes(encode(contact(1), "e", time.time()) + encode(contact(2), "e", time.time()) + b'{"half a li')
    assert Journal(tmp_path).fold_into(box) == 2  # the torn last line of a crash is left out
    assert box.due_count() == 2 and not orphan.exists()
