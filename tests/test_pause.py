from remixcrm_plugin_ctct.store.outbox import Outbox
from remixcrm_plugin_ctct.store.pause import KEY, SqlitePause


def test_the_shared_pause_is_seen_by_every_process_that_opens_the_outbox(tmp_path):
    mine, theirs = SqlitePause(Outbox(tmp_path)), SqlitePause(Outbox(tmp_path))
    assert theirs.get() is None
    mine.set(1234.5)
    assert theirs.get() == 1234.5
    assert Outbox(tmp_path).get_meta(KEY) == "1234.5"  # where delivery/send.py and status read it today
    mine.set(None)
    assert theirs.get() is None


def test_an_unreadable_pause_is_no_pause(tmp_path):
    box = Outbox(tmp_path)
    box.set_meta(KEY, "soon")
    assert SqlitePause(box).get() is None
