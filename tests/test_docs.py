"""The README, hookspecs.md and .ci/run say what the code does."""

import dataclasses
import re
from pathlib import Path

from remixcrm_plugin_ctct import config
from remixcrm_plugin_ctct.admin import cli

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")


def quickstart_commands() -> list[str]:
    section = README.split("## Quickstart", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```sh\n(.+?)\n```", section, re.S)


def test_quickstart_holds_exactly_two_commands_one_demo_one_tests():
    demo, tests = quickstart_commands()
    assert "\n" not in demo and "\n" not in tests
    assert demo.endswith("remixcrm-ctct demo") and "install" in demo
    assert tests.endswith("hatch test") and "install" in tests


def test_ci_runs_the_readme_test_command_verbatim():
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    _, tests = quickstart_commands()
    assert tests in ci.splitlines()


def test_every_config_key_is_in_the_readme_table():
    table_keys = set(re.findall(r"^\| `([\w.]+)` \|", README, re.M))
    assert {f.name for f in dataclasses.fields(config.Settings)} | {"email_marketing.provider"} <= table_keys


def test_every_command_is_documented():
    parser = cli.build_parser()
    (subparsers,) = [a for a in parser._actions if a.dest == "command"]
    for name in subparsers.choices:
        assert f"remixcrm-ctct {name}" in README


def test_every_module_and_room_is_in_the_how_it_works_tree():
    package = ROOT / "remixcrm_plugin_ctct"
    section = README.split("## How it works", 1)[1].split("\n## ", 1)[0]
    names = {p.name for p in package.glob("*.py") if not p.name.startswith("__")}
    names |= {f"{p.name}/" for p in package.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    for name in names:
        assert re.search(rf"^  {re.escape(name)}\s", section, re.M), name
