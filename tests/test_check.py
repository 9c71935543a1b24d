"""`remixcrm-ctct check` on a good setup and on each broken one, against the sandbox."""

import json
import time

import pytest
from conftest import RAW, assert_no_secrets

from remixcrm_plugin_ctct.admin import cli
from remixcrm_plugin_ctct.ctct.token_manager import describe_expiry
from remixcrm_plugin_ctct.sandbox import SANDBOX_CLIENT_ID, SEEDED_LIST_ID, Sandbox

OTHER_LIST = "00000000-0000-4000-8000-000000000000"


def setup(write_config, sandbox, expired=False, **values):
    pair = sandbox.authz.seed(expired=expired)
    keys = {
        "access_token": pair["access_token"],
        "refresh_token": pair["refresh_token"],
        "client_id": SANDBOX_CLIENT_ID,
        "client_secret": None,
        "token_url": sandbox.token_url,
        "api_base_url": sandbox.api_base_url,
        "token_expires_at": RAW("2000-01-01T00:00:00Z" if expired else "2099-01-01T00:00:00Z"),
    }
    write_config(**{**keys, **values})
    return pair


def check(capsys, *extra):
    code = cli.main(["check", *extra])
    out = capsys.readouterr().out
    return code, out


def test_a_good_setup_passes_and_shows_the_list(write_config, capsys):
    with Sandbox(access_token=None) as sandbox:
        pair = setup(write_config, sandbox)
        code, out = check(capsys)
    assert code == 0 and "sending would work" in out
    for line in (
        "✓ provider selected",
        "✓ list id",
        "✓ token present",
        "✓ token works",
        "✓ scopes",
        "✓ list exists: 'RemixCRM clients', 0 member(s)",
        "✓ access-token expiry",
        "✓ refresh possible",
        "✓ data dir writable",
        "✓ outbox: 0 pending, 0 dead",
    ):
        assert line in out, line
    assert pair["access_token"] not in out and pair["refresh_token"] not in out
    assert_no_secrets(out)


def test_json_for_machines(write_config, capsys):
    with Sandbox(access_token=None) as sandbox:
        setup(write_config, sandbox)
        code, out = check(capsys, "--json")
    report = json.loads(out)
    assert code == 0 and report["ok"] is True
    assert {c["name"] for c in report["checks"]} >= {
        "provider selected",
        "token works",
        "list exists",
        "refresh possible",
    }


@pytest.mark.parametrize(
    "broken, line",
    [
        ("wrong list", "✗ list exists: no list 00000000-0000-4000-8000-000000000000 in this account"),
        ("deleted list", "✗ list exists: list 'RemixCRM clients' was deleted"),
        ("expired token, no refresh", "✗ token works: rejected (401) and refresh failed"),
        (
            "revoked refresh",
            "✗ token works: rejected (401) and refresh failed: constant contact refused the refresh token",
        ),
        ("missing scope", "✗ scopes: the token may not read lists"),
        ("provider mailchimp", "✗ provider selected: provider is 'mailchimp'"),
        ("no token", "✗ token present: no access token in the config or the token store"),
    ],
)
def test_each_broken_setup_gives_its_line_and_a_failing_exit_code(write_config, capsys, broken, line):
    with Sandbox(
        access_token=None, scope="offline_access" if broken == "missing scope" else "contact_data offline_access"
    ) as sandbox:
        if broken == "wrong list":
            setup(write_config, sandbox, list_id=OTHER_LIST)
        elif broken == "deleted list":
            sandbox.api.delete_list(SEEDED_LIST_ID)
            setup(write_config, sandbox)
        elif broken == "expired token, no refresh":
            setup(write_config, sandbox, expired=True, refresh_token=None)
        elif broken == "revoked refresh":
            setup(write_config, sandbox, expired=True)
            sandbox.authz.revoke_refresh_tokens()
        elif broken == "missing scope":
            setup(write_config, sandbox)
        elif broken == "provider mailchimp":
            setup(write_config, sandbox, provider="mailchimp")
        elif broken == "no token":
            setup(write_config, sandbox, access_token=None, refresh_token=None)
        code, out = check(capsys)
    assert code == 1 and "sending would NOT work" in out
    assert line.lower() in out.lower(), out
    assert "fix:" in out


def test_an_expired_token_that_can_be_refreshed_is_fine(write_config, capsys):
    with Sandbox(access_token=None) as sandbox:
        setup(write_config, sandbox, expired=True)
        code, out = check(capsys)
        assert sandbox.authz.token_calls == 1
    assert code == 0 and "✓ token works: it had expired; refreshed just now and saved" in out


def test_an_expiry_in_the_year_10000_is_a_config_problem_not_a_crash(write_config, capsys):
    with Sandbox(access_token=None) as sandbox:
        setup(write_config, sandbox, token_expires_at=RAW("9999-12-31T23:59:59-01:00"))  # 10000-01-01 in UTC
        code, out = check(capsys)
    assert code == 1 and "✗ config readable:" in out
    assert "token_expires_at 9999-12-31T23:59:59-01:00 is not a real expiry" in out


def test_an_absurd_expiry_from_the_token_endpoint_is_described_not_a_crash(write_config, capsys):
    # expires_in above 10⁹ is read as an epoch time: here, one in the year 33658
    with Sandbox(access_token=None, access_lifetime=1e12) as sandbox:
        setup(write_config, sandbox, expired=True)
        code, out = check(capsys)
    assert code == 0 and "✓ token works: it had expired; refreshed just now and saved" in out
    assert "! access-token expiry: expires at an impossible time (1000000000000 s after 1970" in out


@pytest.mark.parametrize(
    "expires_at, expected",
    [
        (None, "an unknown time"),
        (float("nan"), "an unknown time"),
        (float("inf"), "an unknown time"),
        (253402300800.0, "an impossible time"),
        (1e300, "an impossible time"),
        (-1e20, "an impossible time"),
        (253402300799.0, "9999-12-31T23:59:59Z (in "),
    ],
)
def test_describe_expiry_never_raises(expires_at, expected):
    assert describe_expiry(expires_at).startswith(expected)


def test_far_expiries_are_told_in_days():
    assert describe_expiry(time.time() + 3 * 86400 + 7300).endswith("(in 3 d 2 h)")
