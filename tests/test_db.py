"""db.py: SQLite files are opened only by SQLite, set up once per process without races,
private, fork-safe, and followed when replaced."""

import os
import sqlite3
import stat
import subprocess
import sys
import textwrap
import threading

import pytest
from conftest import add_event

from remixcrm_plugin_ctct import forksafe
from remixcrm_plugin_ctct.payload import Contact
from remixcrm_plugin_ctct.store import db
from remixcrm_plugin_ctct.store.outbox import Outbox

SCHEMA = "CREATE TABLE IF NOT EXISTS t (n INTEGER);"


def run_python(code: str, *args) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *map(str, args)], capture_output=True, text=True, timeout=60
    )


def test_commits_survive_when_two_threads_connect_at_once_and_another_process_leaves(tmp_path):
    """The field failure: a second thread's first connection used to open and close the file
    itself, which dropped the process's POSIX locks; another process closing its last
    connection then deleted the WAL, and every later commit of ours vanished."""
    path = tmp_path / "data" / "x.sqlite3"
    done = run_python(
        """
        import os, subprocess, sys, threading
        from remixcrm_plugin_ctct.store import db
        path, schema = sys.argv[1], sys.argv[2]
        conns = {}
        def connect(name):
            conns[name] = db.connect(path, schema)
        t = threading.Thread(target=connect, args=("a",)); t.start(); t.join()
        conns["a"].execute("INSERT INTO t VALUES (1)")
        db.forget_setups()  # thread b looked before thread a marked the file set up: the race, held open
        t = threading.Thread(target=connect, args=("b",)); t.start(); t.join()
        # another process comes and goes: as the last connection it knows of, it checkpoints and
        # deletes the WAL if it can lock the file exclusively
        subprocess.run([sys.executable, "-c", "import sqlite3, sys; c = sqlite3.connect(sys.argv[1]); "
                        "c.execute('SELECT count(*) FROM t').fetchall(); c.close()", path], check=True)
        conns["a"].execute("INSERT INTO t VALUES (2)")
        conns["b"].execute("INSERT INTO t VALUES (3)")
        print("committed", flush=True)
        os._exit(0)  # like kill -9 (or a process still running): nothing is closed or checkpointed on the way out
    """,
        path,
        SCHEMA,
    )
    assert done.returncode == 0 and "committed" in done.stdout, done.stderr
    assert sorted(sqlite3.connect(path).execute("SELECT n FROM t").fetchall()) == [(1,), (2,), (3,)]


def test_commits_survive_a_natural_race_of_first_connections(tmp_path):
    """The same without touching internals: two threads connect first at once, the second a
    little later each time (0 to 4 ms: into the first one's setup), for 40 files; then another
    process opens and closes each file. On the old code about a third of the files lost commits."""
    done = run_python(
        """
        import os, subprocess, sys, threading, time
        from remixcrm_plugin_ctct.store import db
        paths = [os.path.join(sys.argv[1], f"x{i}.sqlite3") for i in range(40)]
        pairs = []
        for i, path in enumerate(paths):
            start, got = threading.Barrier(2), []
            def connect(delay):
                start.wait()
                time.sleep(delay)
                got.append(db.connect(path, sys.argv[2]))
            threads = [threading.Thread(target=connect, args=(d,)) for d in (0, (i % 20) * 0.0002)]
            for t in threads: t.start()
            for t in threads: t.join()
            got[0].execute("INSERT INTO t VALUES (1)")
            pairs.append(got)
        subprocess.run([sys.executable, "-c", "import sqlite3, sys\\nfor p in sys.argv[1:]:\\n"
                        " c = sqlite3.connect(p); c.execute('SELECT count(*) FROM t').fetchall(); c.close()", *paths],
                       check=True)
        for a, b in pairs:
            a.execute("INSERT INTO t VALUES (2)")
            b.execute("INSERT INTO t VALUES (3)")
        print("committed", flush=True)
        os._exit(0)
    """,
        tmp_path,
        SCHEMA,
    )
    assert done.returncode == 0 and "committed" in done.stdout, done.stderr
    lost = [
        p.name for p in tmp_path.glob("*.sqlite3") if len(sqlite3.connect(p).execute("SELECT n FROM t").fetchall()) != 3
    ]
    assert lost == []


def test_the_database_file_is_never_opened_outside_sqlite_and_stays_private(tmp_path):
    path = tmp_path / "data" / "x.sqlite3"
    done = run_python(
        """
        import os, sys, threading
        os.umask(0o022)  # the usual umask: SQLite alone would make 0644 files
        opened = []
        path = sys.argv[1]
        def watch(event, args):
            if event == "open" and str(args[0]).startswith(path):
                opened.append(args[0])
        sys.addaudithook(watch)
        from remixcrm_plugin_ctct.store import db
        start = threading.Barrier(8)
        conns = []
        def connect():
            start.wait()
            conn = db.connect(path, sys.argv[2])
            conn.execute("INSERT INTO t VALUES (1)")
            conns.append(conn)
        threads = [threading.Thread(target=connect) for _ in range(8)]
        for t in threads: t.start()
        for t in threads: t.join()
        print(len(conns), repr(opened), flush=True)
        holder = db.Connections(path, sys.argv[2])
        holder.get().execute("INSERT INTO t VALUES (2)")
        print(len(conns), repr(opened), flush=True)
        os._exit(0)  # keep the -wal and -shm files for the look at their modes
    """,
        path,
        SCHEMA,
    )
    assert done.stdout.split("\n")[0] == "8 []"  # 8 connections, and not one open() of ours
    assert done.returncode == 0 and done.stdout.split("\n")[1] == "8 []", done.stderr
    for name in ("x.sqlite3", "x.sqlite3-wal", "x.sqlite3-shm"):
        assert stat.S_IMODE(os.stat(path.parent / name).st_mode) == 0o600, name
    assert stat.S_IMODE(os.stat(path.parent).st_mode) == 0o700


def test_a_transaction_commits_or_rolls_back_whole(tmp_path):
    conn = db.connect(tmp_path / "x.sqlite3", SCHEMA)
    with db.transaction(conn):
        conn.execute("INSERT INTO t VALUES (1)")
    with pytest.raises(ZeroDivisionError), db.transaction(conn):
        conn.execute("INSERT INTO t VALUES (2)")
        1 / 0
    assert conn.execute("SELECT n FROM t").fetchall() == [(1,)] and not conn.in_transaction


def test_one_connection_per_thread(tmp_path):
    holder = db.Connections(tmp_path / "x.sqlite3", SCHEMA)
    mine = holder.get()
    assert holder.get() is mine
    theirs = []
    t = threading.Thread(target=lambda: theirs.append(holder.get()))
    t.start()
    t.join()
    assert theirs[0] is not mine


@pytest.mark.skipif(not hasattr(os, "fork"), reason="POSIX only")
def test_a_forked_child_opens_its_own_connection_and_never_closes_the_parents(tmp_path):
    holder = db.Connections(tmp_path / "x.sqlite3", SCHEMA)
    parents = holder.get()
    parents.execute("INSERT INTO t VALUES (1)")
    other_ready, release = threading.Event(), threading.Event()
    others = []

    def other_thread():  # a parent thread with its own connection: it does not exist in the child
        others.append(holder.get())
        other_ready.set()
        release.wait(30)

    t = threading.Thread(target=other_thread)
    t.start()
    assert other_ready.wait(10)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report by exit status only
        code = 1
        try:
            childs = holder.get()
            childs.execute("INSERT INTO t VALUES (2)")
            parked = {id(c): c for c in forksafe.kept() if c is parents or c is others[0]}
            for c in parked.values():
                c.total_changes  # raises if it was closed here
            code = 0 if childs is not parents and childs is not others[0] and len(parked) == 2 else 3
        finally:
            os._exit(code)
    os.close(read)
    os.close(write)
    _, status = os.waitpid(pid, 0)
    release.set()
    t.join()
    assert os.waitstatus_to_exitcode(status) == 0
    parents.execute("INSERT INTO t VALUES (3)")  # the parent's connections still work
    assert sorted(holder.get().execute("SELECT n FROM t").fetchall()) == [(1,), (2,), (3,)]


def test_an_outbox_file_replaced_under_a_running_process_is_picked_up(tmp_path, monkeypatch):
    monkeypatch.setattr(db, "REPLACED_CHECK_EVERY", 0.0)  # look on every use, not every few seconds
    box = Outbox(tmp_path / "data")
    add_event(box, Contact("1", "a@example.com", {}), "e")
    assert box.due_count() == 1
    fresh = Outbox(tmp_path / "backup")  # say, an admin restores an empty outbox
    add_event(fresh, Contact("2", "b@example.com", {}), "e")
    add_event(fresh, Contact("3", "c@example.com", {}), "e")
    fresh.close()  # the last connection: checkpointed, no -wal left
    for suffix in ("", "-wal", "-shm"):  # the damaged one is moved aside with its side files, as status says
        os.replace(f"{box.path}{suffix}", tmp_path / f"aside{suffix}")
    os.replace(fresh.path, box.path)
    assert box.due_count() == 2
    add_event(box, Contact("4", "d@example.com", {}), "e")  # and writes go to the new file
    assert sqlite3.connect(box.path).execute("SELECT count(*) FROM events").fetchone() == (3,)


def test_damage_is_told_apart_from_a_lock(tmp_path):
    bad = tmp_path / "bad.sqlite3"
    bad.write_bytes(b"this is not a database, it is a text file that got in the way" * 100)
    with pytest.raises(sqlite3.DatabaseError) as caught:
        db.connect(bad, SCHEMA)
    assert db.is_damaged(caught.value)
    assert not db.is_damaged(sqlite3.OperationalError("database is locked"))


def test_a_new_thread_never_closes_the_main_threads_connection_at_exit(tmp_path, monkeypatch):
    """At interpreter exit the main thread counts as stopped before the atexit handlers run, and
    its exit flush still queries: a sender thread that opened its connection then closed the
    main thread's under it (a segfault, seen once in ~10 runs of a host exiting)."""
    import threading

    from remixcrm_plugin_ctct.store import db as db_module

    conns = db_module.Connections(tmp_path / "x.sqlite3", "CREATE TABLE IF NOT EXISTS t (x)")
    main_conn = conns.get()
    monkeypatch.setattr(threading.main_thread(), "is_alive", lambda: False)  # as during atexit
    opened = threading.Thread(target=conns.get)
    opened.start()
    opened.join()
    assert main_conn.execute("SELECT count(*) FROM t").fetchall() == [(0,)]  # still open
