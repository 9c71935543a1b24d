"""The fields mapping ([email_marketing.constant_contact.fields]): read from a hostile config
without pausing anything, applied at the hook with the vendor's limits, resolved to custom field
ids at send time, and carried by both lanes over real HTTP (the sandbox)."""

import datetime as dt
import logging

import pytest
from conftest import ACCESS_TOKEN, RAW

from remixcrm_plugin_ctct import config, fieldmap, flush, payload
from remixcrm_plugin_ctct.admin import check, cli
from remixcrm_plugin_ctct.sandbox import Sandbox

pytestmark = pytest.mark.usefixtures("quick_polls")


@pytest.fixture
def sandbox():
    with Sandbox(access_token=ACCESS_TOKEN) as sb:
        yield sb


def loaded(write_config, **values) -> config.LoadedConfig:
    return config.load(write_config(**values))


# --- the config ---


def test_a_good_mapping_is_read_in_order(write_config):
    found = loaded(
        write_config, fields={"plan": "custom:Plan", "address1": " Street ", "zip": "zip", "dob": "birthday"}
    )
    assert found.status == config.ACTIVE and found.warnings == ()
    assert found.fields == (
        ("plan", "custom:Plan"),
        ("address1", "street"),
        ("zip", "postal_code"),
        ("dob", "birthday"),
    )


def test_hostile_entries_are_each_ignored_with_one_error_and_nothing_pauses(write_config, pm, logs):
    hostile = {
        "plan": "custom:Plan",  # the one good entry
        "_private": "custom:X",
        "__class__": "street",
        "a b": "city",
        "x" * 65: "city",
        "number": 5,
        "empty": "custom:",
        "long": "custom:" + "n" * 51,
        "newline": "custom:a\nb",
        "nonsense": "favourite_colour",
        "again": "custom:plan",  # the same field as "plan", spelled in another case
        "month": "birthday_month",  # without birthday_day
        "nested": RAW('{ a = "b" }'),
        "array": RAW('["custom:A"]'),
    }
    found = loaded(write_config, fields=hostile)
    assert found.status == config.ACTIVE  # a bad mapping never pauses sending
    assert found.fields == (("plan", "custom:Plan"),)
    assert len(found.warnings) == len(hostile) - 1
    assert all("email_marketing.constant_contact.fields" in w for w in found.warnings)
    pm.hook.on_client_created(client={"id": 1, "email": "a@example.com", "plan": "Gold"})
    errors = [r for r in logs.records if r.levelno == logging.ERROR]
    assert len(errors) == len(hostile) - 1 and all("ignored" in r.getMessage() for r in errors)
    pm.hook.on_client_created(client={"id": 2, "email": "b@example.com"})
    assert len([r for r in logs.records if r.levelno == logging.ERROR]) == len(hostile) - 1  # said once


@pytest.mark.parametrize(
    "value", [RAW('"custom:Plan"'), RAW("42"), RAW("[1, 2]"), RAW("true"), RAW("1979-05-27T07:32:00Z")]
)
def test_a_fields_key_that_is_not_a_table_is_one_error(write_config, value):
    found = loaded(write_config, fields=value)
    assert found.status == config.ACTIVE and found.fields == ()
    assert len(found.warnings) == 1 and "must be a table" in found.warnings[0]


def test_more_than_100_entries_are_cut_with_one_error(write_config):
    found = loaded(write_config, fields={f"k{n}": f"custom:F{n}" for n in range(120)})
    assert len(found.fields) == 100 and len(found.warnings) == 1 and "100" in found.warnings[0]


def test_a_mapping_is_read_even_when_the_rest_of_the_config_is_invalid(write_config):
    found = loaded(write_config, list_id="not-a-uuid", fields={"plan": "custom:Plan"})
    assert found.status == config.INVALID and found.fields == (("plan", "custom:Plan"),)


# --- at the hook ---


def contact(client: dict, mapping: dict) -> payload.Contact:
    problems: list[str] = []
    field_map = config.fields.parse(mapping, problems)
    assert problems == []
    found = payload.contact_from_client({"id": 7, "email": "a@example.com", **client}, field_map)
    assert isinstance(found, payload.Contact)
    return found


def test_values_are_mapped_and_held_to_the_vendor_limits(logs):
    found = contact(
        {
            "plan": "G" * 300,
            "addr": "S" * 300,
            "town": "Bath",
            "dob": dt.date(1990, 4, 23),
            "since": "2006-11-15T10:00:00",
            "seats": 12,
            "vip": True,
        },
        {"plan": "custom:Plan", "addr": "street", "town": "city", "dob": "birthday", "since": "anniversary"}
        | {"seats": "custom:Seats", "vip": "custom:VIP"},
    )
    fields = found.fields
    assert fields["custom:Plan"] == "G" * 255 and fields["street"] == "S" * 255 and fields["city"] == "Bath"
    assert (fields["birthday_month"], fields["birthday_day"], fields["anniversary"]) == (4, 23, "2006-11-15")
    assert fields["custom:Seats"] == "12" and fields["custom:VIP"] == "true"
    warned = [r.getMessage() for r in logs.records if r.levelno == logging.WARNING]
    assert any("client 7: plan is 300 characters" in w for w in warned)
    assert any("client 7: addr is 300 characters" in w for w in warned)


@pytest.mark.parametrize(
    ("target", "value"),
    [
        ("birthday", "23/04"),
        ("birthday", "1990-02-30"),
        ("anniversary", "yesterday"),
        ("anniversary", "2006-02-30"),
        ("custom:Plan", ["a"]),
        ("custom:Plan", {"a": 1}),
        ("street", object()),
    ],
)
def test_a_value_that_cannot_be_sent_is_left_out_with_a_warning_naming_client_and_key(logs, target, value):
    found = contact({"odd": value}, {"odd": target})
    assert not {k for k in found.fields if not k.startswith("event:")} - set(payload.TEXT_FIELDS)
    assert any("client 7: odd" in r.getMessage() for r in logs.records if r.levelno == logging.WARNING)


def test_a_mapped_key_whose_reading_raises_costs_only_that_field(logs):
    class Client:
        id, email = 8, "b@example.com"

        @property
        def plan(self):
            raise RuntimeError("detached")

    field_map = (("plan", "custom:Plan"),)
    found = payload.contact_from_client(Client(), field_map)
    assert isinstance(found, payload.Contact) and "custom:Plan" not in found.fields
    assert "could not read plan (RuntimeError)" in logs.text


def test_only_properties_the_schemas_define_are_sent():
    fields = {"first_name": "Ada", "custom:Plan": "Gold", "street": "1 Main St", "postal_code": "BA1"}
    fields |= {"birthday_month": 4, "birthday_day": 23, "event:client_created": 1.0, "made_up": "x"}
    c = payload.Contact("1", "a@example.com", fields)
    assert payload.sign_up_body(c, ["L"], {"Plan": "id-1"}) == {
        "email_address": "a@example.com",
        "first_name": "Ada",
        "street_address": {"kind": "home", "street": "1 Main St", "postal_code": "BA1"},
        "birthday_month": 4,
        "birthday_day": 23,
        "custom_fields": [{"custom_field_id": "id-1", "value": "Gold"}],
        "list_memberships": ["L"],
    }
    assert fieldmap.import_fields(fields, {"Plan": "Plan"}) == {
        "street": "1 Main St",
        "zip": "BA1",
        "birthday_month": 4,
        "birthday_day": 23,
        "cf:Plan": "Gold",
    }


# --- over real HTTP ---

MAPPING = {"plan": "custom:Plan", "address1": "street", "dob": "birthday"}
CLIENT = {"email": "ada@example.com", "plan": "Gold", "address1": "1 Main St", "dob": "1990-04-23"}


def test_a_custom_field_arrives_by_id_through_sign_up_form(pm, write_config, sandbox):
    plan = sandbox.api.seed_custom_field("Plan")
    sandbox.api.seed_custom_field("Other")
    write_config(api_base_url=sandbox.api_base_url, fields=MAPPING)
    pm.hook.on_client_created(client={"id": 1, **CLIENT, "email_opt_in": True})
    assert flush(30, retries=True)
    (body,) = sandbox.api.sign_ups
    assert body["custom_fields"] == [{"custom_field_id": plan["custom_field_id"], "value": "Gold"}]
    assert body["street_address"] == {"kind": "home", "street": "1 Main St"}
    assert (body["birthday_month"], body["birthday_day"]) == (4, 23)
    assert sandbox.api.custom_values("ada@example.com") == {"Plan": "Gold"}
    (found,) = sandbox.api.find("ada@example.com")
    assert found["email_address"]["permission_to_send"] == "explicit"


def test_a_custom_field_arrives_through_the_import_with_unknown_consent(pm, write_config, sandbox):
    plan = sandbox.api.seed_custom_field("Plan")
    # the default lanes: unknown consent goes in by import; "custom:plan" finds the field named Plan
    write_config(api_base_url=sandbox.api_base_url, unknown_consent=None, fields={**MAPPING, "plan": "custom:plan"})
    pm.hook.on_client_created(client={"id": 1, **CLIENT})
    assert flush(30, retries=True)
    assert sandbox.api.sign_ups == []
    (found,) = sandbox.api.find("ada@example.com")
    assert found["email_address"]["permission_to_send"] == "implicit"
    assert found["custom_fields"] == [{"custom_field_id": plan["custom_field_id"], "value": "Gold"}]
    assert (found["street"], found["birthday_month"], found["birthday_day"]) == ("1 Main St", 4, 23)


def test_a_missing_custom_field_costs_the_field_not_the_event_and_check_names_the_fix(
    pm, write_config, sandbox, logs, capsys
):
    write_config(api_base_url=sandbox.api_base_url, unknown_consent=None, fields={"plan": "custom:Plan"})
    pm.hook.on_client_created(client={"id": 1, "email": "a@example.com", "plan": "Gold"})
    pm.hook.on_client_created(client={"id": 2, "email": "b@example.com", "plan": "Gold", "email_opt_in": True})
    assert flush(30, retries=True)
    assert {m["email_address"] for m in sandbox.members()} == {"a@example.com", "b@example.com"}
    missing = [r.getMessage() for r in logs.records if r.levelno == logging.ERROR and "'Plan'" in r.getMessage()]
    assert len(missing) == 1 and "Custom Fields" in missing[0]  # one ERROR for both lanes
    assert cli.main(["check"]) == 1
    out = capsys.readouterr().out
    assert "✗ custom field 'Plan': not in this Constant Contact account" in out
    assert "Contacts → Settings → Custom Fields" in out
    sandbox.api.seed_custom_field("Plan")
    assert cli.main(["check"]) == 0
    assert "✓ custom field 'Plan': exists (Plan, type string)" in capsys.readouterr().out


def test_check_shows_a_mapping_problem_and_a_non_text_type(write_config, sandbox, capsys):
    sandbox.api.seed_custom_field("Renewal", "date")
    write_config(api_base_url=sandbox.api_base_url, fields={"renewal": "custom:Renewal", "oops": "colour"})
    assert check.main(print) == 1
    out = capsys.readouterr().out
    assert "✗ field mapping:" in out and "oops" in out
    assert "! custom field 'Renewal': exists (Renewal, type date); values are sent as text" in out


def test_import_sends_the_first_25_custom_fields_and_warns_once(pm, write_config, sandbox, logs):
    for n in range(30):
        sandbox.api.seed_custom_field(f"F{n}")
    write_config(
        api_base_url=sandbox.api_base_url, unknown_consent=None, fields={f"k{n}": f"custom:F{n}" for n in range(30)}
    )
    for client in (1, 2):
        pm.hook.on_client_created(
            client={"id": client, "email": f"p{client}@example.com", **{f"k{n}": "v" for n in range(30)}}
        )
    assert flush(30, retries=True)
    for client in (1, 2):
        assert set(sandbox.api.custom_values(f"p{client}@example.com")) == {f"F{n}" for n in range(25)}
    warned = [r.getMessage() for r in logs.records if "an import takes 25 per contact" in r.getMessage()]
    assert len(warned) == 1


def test_sign_up_form_sends_the_first_50_custom_fields_and_warns_once(pm, write_config, sandbox, logs):
    for n in range(55):
        sandbox.api.seed_custom_field(f"F{n}")
    write_config(api_base_url=sandbox.api_base_url, fields={f"k{n}": f"custom:F{n}" for n in range(55)})
    for client in (1, 2):
        values = {f"k{n}": "v" for n in range(55)}
        pm.hook.on_client_created(
            client={"id": client, "email": f"p{client}@example.com", "email_opt_in": True, **values}
        )
    assert flush(30, retries=True)
    assert [len(body["custom_fields"]) for body in sandbox.api.sign_ups] == [50, 50]
    assert len([r for r in logs.records if "sign_up_form takes 50 per contact" in r.getMessage()]) == 1


def test_the_custom_fields_are_read_once_not_per_contact(pm, write_config, sandbox):
    sandbox.api.seed_custom_field("Plan")
    write_config(api_base_url=sandbox.api_base_url, fields={"plan": "custom:Plan"})
    for n in range(5):
        pm.hook.on_client_created(client={"id": n, "email": f"p{n}@example.com", "plan": "Gold", "email_opt_in": True})
    assert flush(30, retries=True)
    assert len(sandbox.api.sign_ups) == 5
    assert sandbox.api.custom_field_reads == 1


def test_a_backfill_carries_the_mapped_columns(tmp_path, write_config, sandbox, capsys):
    from remixcrm_plugin_ctct.admin import cli

    plan = sandbox.api.seed_custom_field("Plan")
    write_config(api_base_url=sandbox.api_base_url, fields=MAPPING)
    export = tmp_path / "clients.csv"
    export.write_text("id,email,plan,address1,dob\n1,ada@example.com,Gold,1 Main St,1990-04-23\n", encoding="utf-8")
    assert cli.main(["backfill", str(export), "--timeout", "30"]) == 0
    (found,) = sandbox.api.find("ada@example.com")
    assert found["custom_fields"] == [{"custom_field_id": plan["custom_field_id"], "value": "Gold"}]
    assert found["street"] == "1 Main St" and found["email_address"]["permission_to_send"] == "implicit"
    out = capsys.readouterr().out
    assert "plan" not in out.split("ignored")[-1] if "ignored" in out else True  # the mapped column is read


class _Unanswerable:
    """What pandas' NA does: ``x != x`` answers a value whose truth raises (TypeError)."""

    def __ne__(self, other):
        return self

    def __eq__(self, other):
        return self

    def __bool__(self):
        raise TypeError("boolean value of NA is ambiguous")

    __hash__ = object.__hash__


@pytest.mark.parametrize(
    ("target", "value"),
    [
        ("birthday_month", "²"),  # str.isdigit() says yes, int() says no
        ("custom:Plan", _Unanswerable()),  # pandas.NA
        ("anniversary", "٢٠٠٦-١١-١٥"),  # digits, but not ones Constant Contact reads
    ],
)
def test_a_hostile_mapped_value_costs_that_field_not_the_client(logs, target, value):
    mapping = {"odd": target} | ({"day": "birthday_day"} if target == "birthday_month" else {})
    found = contact({"odd": value, "first_name": "Ada", "day": "3"}, mapping)
    assert found.fields["first_name"] == "Ada"
    assert not {k for k in found.fields if not k.startswith("event:")} - set(payload.TEXT_FIELDS)


def test_birthday_month_and_day_can_be_mapped_from_two_keys(write_config):
    found = loaded(write_config, fields={"bmonth": "birthday_month", "bday": "birthday_day"})
    assert found.warnings == ()
    assert found.fields == (("bmonth", "birthday_month"), ("bday", "birthday_day"))
    mapped = contact({"bmonth": 4, "bday": "23"}, {"bmonth": "birthday_month", "bday": "birthday_day"}).fields
    assert (mapped["birthday_month"], mapped["birthday_day"]) == (4, 23)
    clash = loaded(write_config, fields={"dob": "birthday", "bday": "birthday_day"})
    assert clash.fields == (("dob", "birthday"),) and len(clash.warnings) == 1
