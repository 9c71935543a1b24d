"""Importing the plugin starts nothing: no threads, sockets, config reads or state files."""

import json
import subprocess
import sys

from remixcrm_plugin_ctct.config import config_toml

PROBE = r"""
import json, os, sys, threading
events = []
def audit(event, args):
    if event in ("open", "socket.connect", "socket.bind", "_thread.start_new_thread", "os.mkdir"):
        events.append([event, str(args[0]) if args else ""])
before = threading.active_count()
sys.addaudithook(audit)
import remixcrm_plugin_ctct, remixcrm_plugin_ctct.hooks
from remixcrm_plugin_ctct import hookspecs
pm = hookspecs.make_plugin_manager()
after = threading.active_count()
sys.stdout.write(json.dumps({"threads": [before, after], "events": events}))
"""


def test_import_and_entry_point_load_start_nothing(tmp_path):
    env = {"REMIXCRM_CONFIG": str(tmp_path / "config.toml"), "REMIXCRM_DATA_DIR": str(tmp_path / "data"), "PATH": ""}
    (tmp_path / "config.toml").write_text(config_toml())
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, check=True).stdout
    report = json.loads(out)
    assert report["threads"][0] == report["threads"][1]
    kinds = {e[0] for e in report["events"]}
    assert not kinds & {"socket.connect", "socket.bind", "_thread.start_new_thread"}
    # (imports may open .py files and make __pycache__ dirs; the plugin's own paths stay untouched)
    touched = [e for e in report["events"] if str(tmp_path) in e[1]]
    assert touched == []  # neither the config nor the data dir
