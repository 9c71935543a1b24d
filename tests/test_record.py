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


# --- the hook's fast path: the same bytes as the general path, or None ---------------------

import itertools  # noqa: E402
import random  # noqa: E402

import pytest  # noqa: E402

from remixcrm_plugin_ctct import payload, record  # noqa: E402
from remixcrm_plugin_ctct.fieldmap import EVENT  # noqa: E402

TRICKY_TEXT = [
    "Ada",
    "  Ada  ",
    "",
    "   ",
    "O'Brien",
    'say "hi"',
    "back\\slash",
    "tab\there",
    "new\nline",
    "\x00nul",
    "\x7fdel",
    "x" * 50,
    "x" * 51,
    " " + "x" * 50 + " ",
    "Zoë",
    "\ud800lone",
    "</script>",
    "\u2028",
]
TRICKY_EMAIL = [
    "ada@example.com",
    "  Ada@Example.COM ",
    "ada@example",
    "ada@@example.com",
    "a b@example.com",
    "",
    "x" * 40 + "@example.com",
    "zoë@example.com",
    "ada@example.com\n",
    '"q"@example.com',
]
TRICKY_ID = ["c1", 42, -7, 1 << 70, "", " sp ", "x" * 256, "x" * 257, "ïd", True, 3.5, None, "a\nb"]
OPT_IN = [None, True, False, "yes", 1, 0, "maybe"]
KEYS = ["first_name", "last_name", "phone", "company", "job_title"]


def general_line(event: str, client, at: float) -> bytes | None:
    """What the hook's general path writes (intake, with no field map and no lead)."""
    contact = payload.contact_from_client(client)
    if isinstance(contact, payload.Skipped):
        return None
    contact.fields[EVENT + event] = at
    return Event.of(contact, event, at).encode()


def clients(seed: int, n: int):
    rng = random.Random(seed)
    for _ in range(n):
        client: dict = {"email": rng.choice(TRICKY_EMAIL)}
        if rng.random() < 0.9:
            client["id"] = rng.choice(TRICKY_ID)
        if rng.random() < 0.5:
            client["email_opt_in"] = rng.choice(OPT_IN)
        for key in KEYS:
            roll = rng.random()
            if roll < 0.5:
                client[key] = rng.choice(TRICKY_TEXT)
            elif roll < 0.55:
                client[key] = rng.choice([None, 5551234, True, b"bytes", float("nan")])
        if rng.random() < 0.1:
            client["unknown_key"] = object()
        yield client


@pytest.mark.parametrize("event", ["client_created", "lead_converted"])
def test_the_fast_path_writes_exactly_what_the_general_path_writes(monkeypatch, event):
    taken = 0
    for client in clients(seed=13, n=4000):
        monkeypatch.setattr(record, "_seq", itertools.count(7))
        fast = record.plain_line(event, dict(client), 1764230400.123456)
        monkeypatch.setattr(record, "_seq", itertools.count(7))
        general = general_line(event, dict(client), 1764230400.123456)
        if fast is not None:
            taken += 1
            assert fast == general, client
    assert taken > 200  # the plain case is common, so the comparison means something


@pytest.mark.parametrize(
    "client",
    [
        {"id": "c1", "email": "ada@example.com", "email_opt_in": False},  # a "no" is logged by the general path
        {"id": "c1", "email": "zoë@example.com"},
        {"id": "c1", "email": "ada@example.com", "first_name": "x" * 51},  # cut, with a WARNING
        {"id": "c1", "email": "not an address"},
        {"id": True, "email": "ada@example.com"},
        {"id": 1 << 70, "email": "ada@example.com"},
    ],
)
def test_what_needs_a_word_in_the_log_or_a_change_takes_the_general_path(client):
    assert record.plain_line("client_created", client, 1.0) is None


def test_a_mapping_that_is_not_a_plain_dict_takes_the_general_path():
    class Record(dict):
        def get(self, key, default=None):
            return "evil@example.com" if key == "email" else super().get(key, default)

    assert record.plain_line("client_created", Record(id="c1", email="ada@example.com"), 1.0) is None
