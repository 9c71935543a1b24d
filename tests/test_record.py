from remixcrm_plugin_ctct.payload import Contact
from remixcrm_plugin_ctct.record import Event, to_contact


def test_an_event_survives_its_record_and_its_journal_line():
    ev = Event.of(Contact("7", "Ada@Example.com", {"first_name": "Ada"}, False), "client_created", 12.5)
    rec = ev.to_record()
    assert list(rec)[0] == "email"  # the journal finds a record's start by it
    assert rec["email_opt_in"] is False and rec["seq"] == ev.seq
    assert Event.from_record(rec) == ev
    assert ev.encode().startswith(b'{"email":') and ev.encode().endswith(b"}\n")
    assert ev.to_contact() == Contact("7", "Ada@Example.com", {"first_name": "Ada"}, False)


def test_unknown_consent_is_left_out_and_old_records_without_seq_count_as_zero():
    ev = Event.of(Contact("1", "a@example.com", {}), "e", 1.0)
    assert "email_opt_in" not in ev.to_record()
    old = Event.from_record({"email": "a@example.com", "client_id": 1, "event": "e", "fields": {}, "at": 1.0})
    assert (old.client_id, old.seq, old.email_opt_in) == ("1", 0, None)


def test_the_sequence_grows_with_each_event_of_this_process():
    first, second = (Event.of(Contact("1", "a@example.com", {}), "e", 1.0) for _ in range(2))
    assert second.seq > first.seq


def test_an_outbox_row_becomes_the_contact_to_push():
    state = {"email": "a@example.com", "fields": {"first_name": "A"}, "email_opt_in": True}
    assert to_contact("9", state) == Contact("9", "a@example.com", {"first_name": "A"}, True)
    assert to_contact("9", {"email": "a@example.com"}) == Contact("9", "a@example.com", {}, None)
