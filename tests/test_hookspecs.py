"""The written contract (hookspecs.md), the declared specs and the installed entry point agree."""

import inspect
import re
import tomllib
from importlib.metadata import entry_points
from pathlib import Path

import pluggy

from remixcrm_plugin_ctct import hooks, hookspecs

ROOT = Path(__file__).resolve().parent.parent
DOC = (ROOT / "hookspecs.md").read_text(encoding="utf-8")


def declared_specs() -> dict[str, list[str]]:
    return {
        name: list(inspect.signature(fn).parameters)
        for name, fn in vars(hookspecs).items()
        if callable(fn) and getattr(fn, "remixcrm_spec", None) is not None
    }


def documented_hooks() -> dict[str, list[str]]:
    hooks_section = DOC.split("## Hooks", 1)[1].split("\n## ", 1)[0]
    found = re.findall(r"^### `(\w+)\(([^)]*)\)`", hooks_section, re.M)
    return {name: [a.strip() for a in args.split(",") if a.strip()] for name, args in found}


def test_every_hook_is_documented_with_its_exact_signature():
    assert declared_specs() == {
        "on_client_created": ["client"],
        "on_lead_converted": ["lead", "client"],
        "email_marketing_opt_outs": ["since"],
    }
    assert documented_hooks() == declared_specs()


def test_hookimpls_match_the_specs_and_take_no_defaults():
    for name, args in declared_specs().items():
        impl = getattr(hooks, name)
        params = inspect.signature(impl).parameters
        assert list(params) == args
        # pluggy passes nothing to a parameter that has a default
        assert all(p.default is inspect.Parameter.empty for p in params.values())


def test_installed_entry_point_is_the_documented_one():
    (ep,) = [ep for ep in entry_points(group="remixcrm") if ep.name == "constant_contact"]
    assert ep.value == "remixcrm_plugin_ctct.hooks"
    assert 'constant_contact = "remixcrm_plugin_ctct.hooks"' in DOC
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert pyproject["project"]["entry-points"]["remixcrm"] == {"constant_contact": ep.value}


def test_real_plugin_manager_loads_the_installed_plugin(pm):
    plugin = pm.get_plugin("constant_contact")
    assert plugin is hooks
    pm.check_pending()
    impls = {impl.plugin_name for impl in pm.hook.on_client_created.get_hookimpls()}
    assert "constant_contact" in impls


def test_the_opt_outs_hook_is_optional_for_hosts_whose_specs_predate_it():
    pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)

    class OldSpecs:  # a RemixCRM that only knows the two event hooks
        on_client_created = hookspecs.on_client_created
        on_lead_converted = hookspecs.on_lead_converted

    pm.add_hookspecs(OldSpecs)
    pm.register(hooks, name="constant_contact")
    pm.check_pending()  # no PluginValidationError for email_marketing_opt_outs


def test_check_pending_catches_a_plugin_that_breaks_the_contract():
    pm = hookspecs.make_plugin_manager(load_entry_points=False)

    class Bad:
        @hookspecs.hookimpl
        def on_client_deleted(self, client):
            pass

    pm.register(Bad())
    try:
        pm.check_pending()
    except pluggy.PluginValidationError:
        pass
    else:
        raise AssertionError("an unknown hook name was accepted")
