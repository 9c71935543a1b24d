import os
import subprocess
import sys
from pathlib import Path

import pytest

from remixcrm_plugin_ctct import __version__
from remixcrm_plugin_ctct.admin import cli

SCRIPT = Path(sys.executable).parent / "remixcrm-ctct"


def run(args, tmp_path, via_script=True):
    # a throwaway HOME: the demo must never read or write the user's real config or data
    env = {
        **os.environ,
        "HOME": str(tmp_path / "home"),
        "XDG_CONFIG_HOME": str(tmp_path / "home" / ".config"),
        "XDG_DATA_HOME": str(tmp_path / "home" / ".local"),
    }
    for var in ("REMIXCRM_CONFIG", "REMIXCRM_DATA_DIR"):
        env.pop(var, None)
    command = [str(SCRIPT)] if via_script else [sys.executable, "-m", "remixcrm_plugin_ctct"]
    return subprocess.run(command + args, capture_output=True, text=True, env=env, timeout=60)


def test_demo_runs_end_to_end_on_the_sandbox(tmp_path):
    assert SCRIPT.exists(), "the remixcrm-ctct console script is not installed"
    proc = run(["demo"], tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "plugin loaded through entry point remixcrm:constant_contact" in out
    assert "contacts in sandbox list (3):" in out
    for email in ("ada@example.com", "grace@example.org", "alan@example.net"):
        assert email in out
    assert out.count("✓") == 9 and "✗" not in out
    assert "✓ client 101's opt-out reached RemixCRM with its client id, by the person" in out
    assert "✓ custom field 'Plan' of ada@example.com: 'Gold' (sent as custom_field_id " in out
    assert "client 106  unsubscribed earlier         expected stays unsubscribed         got stays unsubscribed" in out
    assert "client 102  new client, consent unknown  expected implicit via import        got implicit via import" in out
    assert (
        "client 101  new client                   expected explicit via sign_up_form  got explicit via sign_up_form"
        in out
    )
    assert "token refreshed without a human: 1 refresh call(s), 0 invalid_grant" in out
    assert "all sample clients handled as expected" in out
    assert not (tmp_path / "home").exists()  # nothing written to the user's dirs


def test_python_dash_m_and_version(tmp_path):
    proc = run(["--version"], tmp_path, via_script=False)
    assert proc.returncode == 0 and proc.stdout.strip() == f"remixcrm-plugin-ctct {__version__}"


def test_no_command_prints_help_and_fails(capsys):
    assert cli.main([]) == 2
    assert "demo" in capsys.readouterr().out


def test_unknown_command_is_an_error():
    with pytest.raises(SystemExit) as info:
        cli.main(["frobnicate"])
    assert info.value.code == 2


def test_demo_dry_run_writes_nothing(tmp_path):
    proc = run(["demo", "--dry-run"], tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "write calls made: 0" in proc.stdout and "contacts in sandbox list (0)" in proc.stdout
    assert "would create: POST /contacts/sign_up_form" in proc.stdout and "skipped: unsubscribed" in proc.stdout
