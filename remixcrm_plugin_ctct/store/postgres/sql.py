"""The PostgreSQL outbox's longer statements (``{s}``: the schema; see :mod:`.outbox`)."""

from ..lanes import BACKFILL
from ..newest import OPT_IN_BY

# rows are picked with FOR UPDATE SKIP LOCKED: hosts claiming at once each take other rows, and
# a row the fold is merging into (locked) is left for the next look
CLAIM = """
WITH picked AS (
  SELECT e.id FROM {s}.events e
  WHERE {where}{lane}
    AND NOT EXISTS (SELECT 1 FROM {s}.events x WHERE x.state = 'sending' AND x.email_key = e.email_key
                    AND x.lease_until >= %(lease_now)s - %(grace)s AND x.id <> e.id)
  ORDER BY {order} LIMIT %(limit)s
  FOR UPDATE OF e SKIP LOCKED)
UPDATE {s}.events SET state = 'sending', lease_owner = %(owner)s, lease_until = %(until)s,
       attempts = events.attempts + 1, updated_at = %(now)s,
       contact = coalesce((SELECT l.contact FROM {s}.latest l WHERE l.email_key = events.email_key), events.contact)
FROM picked WHERE events.id = picked.id
RETURNING events.id, events.client_id, events.event, events.contact, events.attempts, events.created_at,
          (SELECT l.stamps FROM {s}.latest l WHERE l.email_key = events.email_key)
"""
# a leased row is taken back when its holder (on this machine) is provably gone, or its lease
# expired (the outbox passes no live holders: a lease is renewed every few seconds while its
# send runs, and holders on other machines cannot be asked whether they live). lease_until and
# lease_now are on the database server's clock (outbox._server_skew), whatever each host's says
RECLAIMABLE = """
e.state = 'sending' AND (e.lease_owner = ANY(%(dead)s::text[])
                         OR (e.lease_until < %(lease_now)s AND NOT e.lease_owner = ANY(%(alive)s::text[]))
                         OR e.lease_until < %(lease_now)s - %(grace)s)
"""
DUE = "e.state = 'pending' AND e.next_attempt_at <= %(now)s"
TAKE = """
UPDATE {s}.events SET lease_until = %s,
       contact = coalesce((SELECT l.contact FROM {s}.latest l WHERE l.email_key = events.email_key), contact)
WHERE id = %s AND state = 'sending' AND lease_owner = %s
RETURNING contact, (SELECT l.stamps FROM {s}.latest l WHERE l.email_key = events.email_key)
"""
HOLDERS = """
SELECT DISTINCT e.lease_owner, o.machine, o.pid, o.started FROM {s}.events e
JOIN {s}.owners o ON o.owner = e.lease_owner WHERE e.state = 'sending'
"""
FORGET_OWNERS = """
DELETE FROM {s}.owners o WHERE NOT EXISTS
  (SELECT 1 FROM {s}.events e WHERE e.state = 'sending' AND e.lease_owner = o.owner)
"""
# an expired lease is due now: with no pids to ask across machines, its expiry is the only signal
# (lease_until is on the server's clock: the parameter is the server's lead over this host's)
NEXT_DUE = """
SELECT least((SELECT min(next_attempt_at) FROM {s}.events WHERE state = 'pending'),
             (SELECT min(lease_until) FROM {s}.events WHERE state = 'sending') - %s)
"""
DUE_COUNT = """
SELECT count(*) FROM {s}.events
WHERE (state = 'pending' AND next_attempt_at <= %s) OR (state = 'sending' AND lease_until < %s)
"""
UPSERT_LATEST = """
INSERT INTO {s}.latest (email_key, contact, stamps, client_id, event, at, seq, updated_at)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s)
ON CONFLICT (email_key) DO UPDATE SET contact = excluded.contact, stamps = excluded.stamps,
  client_id = excluded.client_id, event = excluded.event, at = excluded.at, seq = excluded.seq,
  updated_at = excluded.updated_at
"""
INSERT_PENDING = """
INSERT INTO {s}.events (email_key, client_id, other_clients, event, contact, state, created_at, next_attempt_at,
                        updated_at)
VALUES (%s, %s, %s, %s, %s, 'pending', %s, %s, %s)
"""
UPDATE_PENDING = """
UPDATE {s}.events SET client_id = %s, event = coalesce(%s, event), other_clients = %s, contact = %s,
  created_at = least(created_at, %s), updated_at = %s
WHERE id = %s
"""
DELIVERED = (
    "UPDATE {s}.events SET state = 'delivered', contact_id = %s, outcome = %s, last_error = NULL, "
    "lease_owner = NULL, lease_until = NULL, updated_at = %s WHERE id = %s"
)
SET_META = "INSERT INTO {s}.meta (key, value) VALUES (%s, %s) ON CONFLICT (key) DO UPDATE SET value = excluded.value"
BUMP = """
INSERT INTO {s}.meta (key, value) VALUES (%s, '1')
ON CONFLICT (key) DO UPDATE SET value = (CAST(meta.value AS bigint) + 1)::text RETURNING value
"""
SEEN = """
INSERT INTO {s}.hosts (host, last_seen) VALUES (%s, %s)
ON CONFLICT (host) DO UPDATE SET last_seen = greatest(hosts.last_seen, excluded.last_seen)
"""


# the lanes (see store/lanes.py, whose SQLite twin and Python rule this mirrors): the consent in
# force of row ``e`` (true, false or NULL), then whether the row is the bulk import's
_OPT_IN = f"""(CASE WHEN EXISTS (SELECT 1 FROM {{s}}.latest l WHERE l.email_key = e.email_key) THEN
  (SELECT CASE WHEN (l.contact::jsonb -> 'email_opt_in') = 'true'::jsonb
                    AND (coalesce((l.stamps::jsonb -> 'email_opt_in' ->> 0)::float8, -1e308) < e.created_at
                         OR (l.stamps::jsonb ->> '{OPT_IN_BY}' IS NOT DISTINCT FROM '{BACKFILL}'
                             AND e.event IS DISTINCT FROM '{BACKFILL}')) THEN NULL
               ELSE (l.contact::jsonb ->> 'email_opt_in')::boolean END
   FROM {{s}}.latest l WHERE l.email_key = e.email_key)
  ELSE (e.contact::jsonb ->> 'email_opt_in')::boolean END)"""
IMPORT_SQL = f"""(SELECT CASE
  WHEN o IS FALSE THEN false
  WHEN e.event = '{BACKFILL}' THEN (o IS TRUE OR NOT %(skip)s)
  ELSE (o IS NULL AND %(implicit)s) END
 FROM (SELECT {_OPT_IN} AS o) AS consent)"""


def fold_lock(schema: str) -> str:
    """The advisory lock every writer of pending rows and newest states takes for its transaction
    (the fold, a retry that may merge rows, migrate-state): their read–merge–write must not
    interleave across hosts, as SQLite's single writer guaranteed for one machine."""
    return f"remixcrm_ctct:fold:{schema}"
