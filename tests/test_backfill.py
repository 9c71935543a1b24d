"""`remixcrm-ctct backfill FILE`: reading hostile exports, the dry run, resuming after a kill,
progress output, and delivery through the outbox."""

import csv
import io
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time

import pytest
from conftest import ACCESS_TOKEN, RAW

from remixcrm_plugin_ctct import runtime
from remixcrm_plugin_ctct.admin import backfill, backfill_command, backfill_file, cli, safe_read
from remixcrm_plugin_ctct.admin.backfill_file import BackfillFile, Refused
from remixcrm_plugin_ctct.delivery.send import QUOTA_KEY
from remixcrm_plugin_ctct.sandbox import Sandbox
from remixcrm_plugin_ctct.store.outbox import Outbox

HEADER = "id,email,first_name,last_name,phone,company,job_title,email_opt_in\n"


def write(tmp_path, name: str, data: bytes | str):
    path = tmp_path / name
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return path


def lines_of(path) -> list:
    with BackfillFile(path) as f:
        return list(f.rows())


def tally_of(path, **kwargs) -> backfill.Tally:
    with BackfillFile(path) as f:
        return backfill.read(f, **kwargs)


def run(capsys, *args):
    code = cli.main(["backfill", *map(str, args)])
    return code, capsys.readouterr().out


def many(count: int, start: int = 0) -> str:
    return HEADER + "".join(f"{i},c{i}@example.com,Name{i},,,,,\n" for i in range(start, start + count))


# --- reading both formats ---


def test_csv_with_bom_semicolons_any_case_extra_and_missing_columns_blank_lines_and_quoted_newlines(tmp_path):
    data = (
        b"\xef\xbb\xbfEMAIL; Id ;First_Name;notes\n"
        b"a@example.com;1;Ann;x\n"
        b"\n"
        b'b@example.com;2;"Bo\nBo";y\n'
        b"c@example.com;3\n"
    )
    with BackfillFile(write(tmp_path, "export.csv", data)) as f:
        found = list(f.rows())
        assert f.format == backfill_file.CSV and f.delimiter == ";" and f.ignored == ["notes"]
    assert [(r.row, r.line) for r in found] == [(1, 2), (2, 4), (3, 6)]
    assert found[0].client == {"id": "1", "email": "a@example.com", "first_name": "Ann"}
    assert found[1].client["first_name"] == "Bo\nBo"
    assert found[2].client == {"id": "3", "email": "c@example.com"}


def test_windows_line_ends_and_a_missing_last_newline(tmp_path):
    data = "id,email,first_name\r\n1,a@example.com,Ann\r\n\r\n2,b@example.com,Bo"
    found = lines_of(write(tmp_path, "c.csv", data))
    assert [(r.line, r.client) for r in found] == [
        (2, {"id": "1", "email": "a@example.com", "first_name": "Ann"}),
        (4, {"id": "2", "email": "b@example.com", "first_name": "Bo"}),
    ]


def test_json_lines_by_extension_or_by_content(tmp_path):
    data = '{"id": 1, "email": "a@example.com", "email_opt_in": false, "crm_only": 1}\n\n[1, 2]\n{broken\n'
    for name in ("clients.jsonl", "clients.ndjson", "clients.txt"):
        with BackfillFile(write(tmp_path, name, data)) as f:
            found = list(f.rows())
            assert f.format == backfill_file.JSONL and f.ignored == ["crm_only"]
        assert found[0].client == {"id": 1, "email": "a@example.com", "email_opt_in": False}
        assert found[1].problem == "line 3 is a JSON list, not an object"
        assert found[2].problem.startswith("line 4 is not valid JSON")


def test_each_row_is_checked_as_the_hook_checks_a_client(tmp_path):
    data = (
        HEADER
        + "1,Ann@Example.com,Ann,,,,,yes\n"
        + "2,secret-address@nowhere,,,,,,\n"  # not an address: invalid, the email masked
        + "3,,,,,,,\n"  # no email
        + "4,no@example.com,,,,,,no\n"  # declined
        + f"5,long@example.com,{'A' * 80},,,,,maybe\n"  # truncated name, unknown consent: sent, with notes
        + ",noid@example.com,,,,,,\n"
    )
    tally = tally_of(write(tmp_path, "c.csv", data))
    assert tally.rows == 6 and tally.invalid == 3
    assert tally.counts() == {"to import": 2, "declined": 1, "consent unknown": 0, "suppressed": 0, "duplicates": 0}
    text = "\n".join(tally.problems)
    assert "line 3: client 2: email s***@nowhere is not a valid address" in text
    assert "line 4: client 3 has no email address" in text and "line 7 has no id" in text
    assert "secret-address" not in text
    notes = "\n".join(tally.noted)
    assert "line 6: client 5: first_name is 80 characters" in notes and "email_opt_in" in notes


def test_duplicates_coalesce_and_the_later_row_wins(tmp_path):
    data = HEADER + "1,a@example.com,,,,,,\n2,b@example.com,,,,,,\n3,A@EXAMPLE.COM,,,,,,false\n4,b@example.com,,,,,,\n"
    counts = tally_of(write(tmp_path, "c.csv", data)).counts()
    assert counts["duplicates"] == 2 and counts["declined"] == 1 and counts["to import"] == 1


def test_unknown_consent_skip_and_the_suppression_mirror_are_counted(tmp_path):
    data = HEADER + "1,a@example.com,,,,,,\n2,left@example.com,,,,,,true\n3,yes@example.com,,,,,,1\n"
    asked = []

    def suppressed(emails):
        asked.extend(emails)
        return {"left@example.com": object()}

    tally = tally_of(write(tmp_path, "c.csv", data), unknown_consent="skip", suppressed=suppressed)
    assert tally.counts() == {"to import": 1, "declined": 0, "consent unknown": 1, "suppressed": 1, "duplicates": 0}
    assert sorted(asked) == ["left@example.com", "yes@example.com"]  # only what would be sent is looked up


# --- hostile input ---


def test_bytes_that_are_not_utf8_nul_and_lone_surrogates_spoil_only_their_row(tmp_path):
    data = (
        HEADER.encode()
        + b"1,caf\xe9@example.com,,,,,,\n"
        + b"2,ok@example.com,Jos\xe9,,,,,\n"
        + b"3,nul\x00@example.com,,,,,,\n"
        + b"4,fine@example.com,,,,,,\n"
    )
    found = lines_of(write(tmp_path, "c.csv", data))
    assert [r.problem for r in found[:3]] == [
        "line 2 holds a byte that is not UTF-8 (0xe9); save the export as UTF-8",
        "line 3 holds a byte that is not UTF-8 (0xe9); save the export as UTF-8",
        "line 4 holds a NUL character; the export is damaged",
    ]
    assert found[3].client["email"] == "fine@example.com"
    jsonl = '{"id": 1, "email": "a@example.com", "first_name": "\\ud800x"}\n{"id": 2, "email": "\\udc00@example.com"}\n'
    tally = tally_of(write(tmp_path, "c.jsonl", jsonl))
    assert tally.counts()["to import"] == 1 and tally.invalid == 1
    assert "broken character" in tally.problems[0]


def test_overlong_lines_and_fields_are_row_problems_and_memory_stays_bounded(tmp_path, monkeypatch):
    monkeypatch.setattr(safe_read, "MAX_LINE", 200)
    monkeypatch.setattr(backfill_file, "MAX_FIELD", 100)
    data = HEADER + f"1,a@example.com,{'x' * 5000}\n" + f'2,b@example.com,"{"y" * 150}"\n' + "3,c@example.com\n"
    jsonl = "".join(
        json.dumps({"id": i, "email": f"{i}@example.com", "first_name": "z" * n}) + "\n"
        for i, n in ((1, 5000), (2, 10), (3, 10))
    )
    for name, text, line in (("c.csv", data, 2), ("c.jsonl", jsonl, 1)):
        found = lines_of(write(tmp_path, name, text))
        assert len(found) == 3 and found[-1].client is not None, name
        assert f"line {line} is longer than 200 characters" in found[0].problem, name
    found = lines_of(write(tmp_path, "c.csv", data))
    assert "field larger than field limit" in found[1].problem
    assert csv.field_size_limit() == 131072  # the csv module's own limit is left as it was


def test_huge_ids_are_cut_or_refused_never_fatal(tmp_path):
    data = json.dumps({"id": "7" * 5000, "email": "a@example.com"}) + "\n" + '{"id": ' + "9" * 5000 + "}\n"
    tally = tally_of(write(tmp_path, "c.jsonl", data))
    assert tally.counts()["to import"] == 1 and tally.invalid == 1
    assert "is not valid JSON" in tally.problems[0] and any("cut to its first 256" in n for n in tally.noted)


@pytest.mark.parametrize(
    "name, data, expected",
    [
        ("c.csv", b"", "is empty"),
        ("c.csv", b"first_name,last_name\nA,B\n", "has no id and no email column"),
        ("c.csv", b"id,email,EMAIL\n1,a@example.com,b@example.com\n", "names the column email twice"),
        ("c.csv", "id,email\n1,a@example.com\n".encode("utf-16"), "is UTF-16 text"),
        ("c.json", b'[{"id": 1, "email": "a@example.com"}]', "holds a JSON array"),
        ("c.csv", b"id,email,caf\xe9\n", "the header row is not UTF-8"),
    ],
)
def test_files_that_cannot_be_a_backfill_are_refused_with_the_fix(tmp_path, capsys, name, data, expected):
    code, out = run(capsys, write(tmp_path, name, data), "--dry-run")
    assert code == 1 and expected in out and out.startswith("✗ ")


def test_a_fifo_a_device_a_directory_or_nothing_is_refused_without_blocking(tmp_path, capsys):
    fifo = tmp_path / "pipe.csv"
    os.mkfifo(fifo)  # no writer: opening it for reading the usual way would block forever
    for path, expected in (
        (fifo, "is a FIFO (named pipe), not a regular file"),
        ("/dev/zero", "is a character device, not a regular file"),
        (tmp_path, "is a directory, not a regular file"),
        (tmp_path / "missing.csv", "no such file"),
    ):
        code, out = run(capsys, path)
        assert code == 1 and expected in out, path


# --- the dry run ---


def test_the_dry_run_counts_everything_and_writes_nothing(tmp_path, isolated, write_config, capsys):
    write_config()
    data = many(3) + "9,bad@@example.com,,,,,,\n" + "4,c0@example.com,,,,,,no\n"
    code, out = run(capsys, write(tmp_path, "c.csv", data), "--dry-run")
    assert code == 4  # an invalid row: worth a look
    assert re.search(r"to import\s+2 contact", out) and re.search(r"declined\s+1 ", out)
    assert re.search(r"duplicates coalesced\s+1 row", out) and re.search(r"invalid\s+1 row", out)
    assert "line 5: client 9: email b***@example.com is not a valid address" in out
    assert "suppressed                    - (not checked" in out and "nothing was written" in out
    assert not (isolated / "data").exists()  # no outbox, no progress, no lock
    code, _ = run(capsys, write(tmp_path, "ok.csv", many(2)), "--dry-run")
    assert code == 0 and not (isolated / "data").exists()


# --- resuming after a kill ---


class Killed(BaseException):
    """What a kill -9 looks like from inside: the run stops between two statements."""


def spy_on_chunks(monkeypatch, kill_after: int | None = None) -> list:
    """Every record that reached the outbox, across runs; with ``kill_after``, the run dies
    right after that many chunks were committed."""
    recorded: list[dict] = []
    real = Outbox.add_records

    def add_records(self, records, journal=None, offset=0, start=None):
        if journal and journal.startswith("backfill-"):
            if kill_after is not None and len([r for r in recorded if r is None]) >= kill_after:
                raise Killed()
            real(self, records, journal, offset, start)
            recorded.extend(records)
            recorded.append(None)  # a chunk's end
            return True
        return real(self, records, journal, offset, start)

    monkeypatch.setattr(Outbox, "add_records", add_records)
    return recorded


def paused_config(write_config):
    write_config()
    runtime.runtime().outbox.set_meta(QUOTA_KEY, repr(time.time() + 3600))  # nothing is sent: no HTTP at all


def test_killed_after_k_chunks_a_rerun_records_every_row_exactly_once(tmp_path, write_config, capsys, monkeypatch):
    paused_config(write_config)
    path = write(tmp_path, "c.csv", many(95))
    with pytest.MonkeyPatch.context() as patch:
        first = spy_on_chunks(patch, kill_after=3)
        with pytest.raises(Killed):
            cli.main(["backfill", str(path), "--chunk", "10"])
    key = "backfill-" + BackfillFile(path).fingerprint()
    outbox = runtime.runtime().outbox
    assert outbox.journal_offset(key) == 30 and len(outbox.rows()) == 30
    second = spy_on_chunks(monkeypatch)
    code, out = run(capsys, path, "--chunk", "10")
    assert code == 3 and "paused by the daily quota" in out  # recorded; sending waits for midnight UTC
    assert "continuing: an earlier run recorded rows 1-30" in out
    emails = [r["email"] for r in first + second if r is not None]
    assert sorted(emails) == sorted(f"c{i}@example.com" for i in range(95))  # each once, none twice
    assert outbox.journal_offset(key) == 95 and len(outbox.rows()) == 95
    code, out = run(capsys, path, "--chunk", "10")  # a third run records nothing more
    assert "recorded 0 client(s) now; rows 1-95 were recorded by an earlier run" in out
    assert len(outbox.rows()) == 95


KILL_AFTER_TWO_CHUNKS = """
import os, signal, sys
from remixcrm_plugin_ctct.admin import cli
from remixcrm_plugin_ctct.store.outbox import Outbox
real, chunks = Outbox.add_records, []
def add_records(self, records, journal=None, offset=0, start=None):
    done = real(self, records, journal, offset, start)
    if journal and journal.startswith("backfill-"):
        chunks.append(offset)
        if len(chunks) == 2:
            os.kill(os.getpid(), signal.SIGKILL)  # no finally, no atexit: the real thing
    return done
Outbox.add_records = add_records
sys.exit(cli.main(["backfill", sys.argv[1], "--chunk", "10"]))
"""


def test_kill_9_mid_way_then_a_rerun_records_the_rest_once(tmp_path, write_config, capsys, monkeypatch):
    paused_config(write_config)
    path = write(tmp_path, "c.csv", many(45))
    killed = subprocess.run([sys.executable, "-c", KILL_AFTER_TWO_CHUNKS, str(path)], capture_output=True, timeout=60)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    key = "backfill-" + BackfillFile(path).fingerprint()
    outbox = runtime.runtime().outbox
    assert outbox.journal_offset(key) == 20 and len(outbox.rows()) == 20
    rest = spy_on_chunks(monkeypatch)
    code, out = run(capsys, path, "--chunk", "10")
    assert code == 3 and "continuing: an earlier run recorded rows 1-20" in out
    assert sorted(r["email"] for r in rest if r is not None) == sorted(f"c{i}@example.com" for i in range(20, 45))
    assert len(outbox.rows()) == 45


def test_an_edited_file_is_a_new_backfill(tmp_path, write_config, capsys, monkeypatch):
    paused_config(write_config)
    path = write(tmp_path, "c.csv", many(5))
    run(capsys, path)
    path.write_text(many(6))
    recorded = spy_on_chunks(monkeypatch)
    code, out = run(capsys, path)
    assert "continuing" not in out and "an edited file is a new backfill" in out
    assert len([r for r in recorded if r is not None]) == 6


def test_a_failing_disk_or_ctrl_c_keeps_what_was_recorded_and_says_how_to_go_on(
    tmp_path, write_config, capsys, monkeypatch
):
    paused_config(write_config)
    path = write(tmp_path, "c.csv", many(25))
    real, calls = Outbox.add_records, []

    def failing(self, records, journal=None, offset=0):
        calls.append(offset)
        if len(calls) == 2:
            raise sqlite3.OperationalError("disk I/O error")
        if len(calls) == 3:
            raise KeyboardInterrupt
        real(self, records, journal, offset)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Outbox, "add_records", failing)
        code, out = run(capsys, path, "--chunk", "10")
        assert code == 1 and "disk I/O error" in out and "rows 1-10 are recorded" in out
        assert "run the same command again" in out
        code, out = run(capsys, path, "--chunk", "10")
        assert code == 130 and "interrupted: rows 1-10 are recorded" in out
    code, out = run(capsys, path, "--chunk", "10")
    assert code == 3 and len(runtime.runtime().outbox.rows()) == 25


def test_a_second_run_of_the_same_file_waits_its_turn(tmp_path, write_config, capsys):
    from filelock import FileLock

    paused_config(write_config)
    path = write(tmp_path, "c.csv", many(2))
    key = "backfill-" + BackfillFile(path).fingerprint()
    with FileLock(str(runtime.runtime().data_dir / f"{key[:25]}.lock")):
        code, out = run(capsys, path)
    assert code == 1 and "another `remixcrm-ctct backfill` of this file is recording it" in out


def test_a_real_run_needs_an_active_config(tmp_path, write_config, capsys):
    write_config(provider="none")
    code, out = run(capsys, write(tmp_path, "c.csv", many(1)))
    assert code == 1 and "whose config is inactive" in out


def test_chunk_must_be_positive(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["backfill", str(tmp_path / "c.csv"), "--chunk", "0"])
    assert exit_.value.code == 2


# --- progress ---


def test_progress_off_a_terminal_is_plain_lines_every_step_or_few_seconds():
    out, now = io.StringIO(), [0.0]
    progress = backfill_command.Progress(out, tty=False, clock=lambda: now[0], every=5.0, step=10)
    for done in range(0, 1001):
        progress.show("sending", done, 1000)
    progress.show("sending", 1000, 1000)  # said once
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue()
    assert lines[0] == "sending: 0 of 1,000 (0%)" and lines[-1] == "sending: 1,000 of 1,000 (100%)"
    assert len(lines) == 11  # 0%, 10%, ... 90%, and 100%
    out.truncate(0)
    out.seek(0)
    progress.show("sending", 1, 3000)
    progress.show("sending", 2, 3000)
    now[0] = 6.0  # a slow stretch: a line every few seconds all the same
    progress.show("sending", 3, 3000)
    assert out.getvalue().splitlines() == ["sending: 1 of 3,000 (0%)", "sending: 3 of 3,000 (0%)"]


def test_progress_on_a_terminal_is_one_bar_redrawn():
    out = io.StringIO()
    progress = backfill_command.Progress(out, tty=True)
    progress.show("sending", 1, 2, "delivered 1")
    progress.show("sending", 2, 2, "delivered 2")
    progress.end()
    text = out.getvalue()
    assert text.count("\r") == 2 and text.endswith("2/2 delivered 2\n") and "[" + "#" * 30 + "]" in text


def test_a_run_off_a_terminal_prints_plain_progress_and_the_outcome(tmp_path, write_config, capsys):
    with Sandbox(access_token=ACCESS_TOKEN) as sandbox:
        write_config(api_base_url=sandbox.api_base_url)
        data = many(30) + "99,nobody,,,,,,\n" + "98,gone@example.com,,,,,,false\n"
        code, out = run(capsys, write(tmp_path, "c.csv", data), "--chunk", "7")
        assert {m["email_address"] for m in sandbox.members()} == {f"c{i}@example.com" for i in range(30)}
    assert code == 4  # one invalid row
    assert "\r" not in out and re.search(r"^reading: [\d,]+ of [\d,]+ \(\d+%\), \d+ rows$", out, re.M)
    assert re.search(r"^sending: 31 of 31 \(100%\), delivered 30, skipped 1$", out, re.M)
    assert "backfill rows: delivered 30, skipped 1" in out and "remixcrm-ctct status" in out
    code, out = run(capsys, "--timeout", "0", write(tmp_path, "c.csv", data))  # rerun: nothing new, still done
    assert code == 4 and "recorded 0 client(s) now" in out


def test_backfilled_unknown_consent_clients_arrive_implicit_through_an_import(tmp_path, write_config, capsys):
    with Sandbox(access_token=ACCESS_TOKEN) as sandbox:
        sandbox.api.seed_contact("left@example.com", permission_to_send="unsubscribed")
        write_config(api_base_url=sandbox.api_base_url, consent_guard=RAW("true"))
        data = HEADER + "1,new@example.com,,,,,,\n2,left@example.com,,,,,,\n3,yes@example.com,,,,,,true\n"
        code, _ = run(capsys, write(tmp_path, "c.csv", data))
        found = {c["email_address"]["address"]: c["email_address"] for c in sandbox.api.find(include_deleted=True)}
        assert sandbox.calls == []  # never sign_up_form, not even for the "yes" of a historical export
        assert found["new@example.com"]["permission_to_send"] == "implicit"
        assert found["left@example.com"]["permission_to_send"] == "unsubscribed"
        assert code == 0


def test_the_check_never_blocks_on_a_fifo_that_appears_after_the_stat(tmp_path, monkeypatch):
    """The path is stat-ed as a regular file, then swapped for a FIFO before the open."""
    path = write(tmp_path, "c.csv", many(1))
    real_stat = os.stat

    def swap(p, *a, **k):
        found = real_stat(p, *a, **k)
        if str(p) == str(path):
            path.unlink()
            os.mkfifo(path)
        return found

    monkeypatch.setattr(safe_read.os, "stat", swap)
    with pytest.raises(Refused, match="is a FIFO"):
        BackfillFile(path)
