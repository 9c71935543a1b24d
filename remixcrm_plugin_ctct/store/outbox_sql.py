"""The outbox's SQLite schema and its longer statements (see :mod:`.outbox` for what they serve)."""

SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
  id INTEGER PRIMARY KEY,
  email_key TEXT,                        -- lower-cased email; NULL once purged
  client_id TEXT NOT NULL,
  other_clients TEXT NOT NULL DEFAULT '',  -- ids of earlier events coalesced into this row
  event TEXT NOT NULL,
  contact TEXT,                          -- JSON {email, fields, email_opt_in} last sent; NULL once purged
  state TEXT NOT NULL,
  attempts INTEGER NOT NULL DEFAULT 0,
  created_at REAL NOT NULL,
  next_attempt_at REAL NOT NULL,
  lease_owner TEXT,
  lease_until REAL,
  last_error TEXT,
  outcome TEXT,
  contact_id TEXT,
  updated_at REAL NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS one_pending_per_email ON events(email_key) WHERE state = 'pending';
CREATE INDEX IF NOT EXISTS sending_per_email ON events(email_key) WHERE state = 'sending';
CREATE INDEX IF NOT EXISTS due ON events(state, next_attempt_at);
CREATE INDEX IF NOT EXISTS by_client ON events(client_id);
CREATE INDEX IF NOT EXISTS by_email ON events(email_key);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS latest (      -- the newest known state per email (see newest.py)
  email_key TEXT PRIMARY KEY,
  contact TEXT NOT NULL,
  stamps TEXT NOT NULL,
  client_id TEXT NOT NULL,
  event TEXT NOT NULL,
  at REAL NOT NULL,
  seq INTEGER NOT NULL,
  updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS owners (      -- which process holds a lease, to tell when it is gone
  owner TEXT PRIMARY KEY,
  machine TEXT NOT NULL,
  pid INTEGER NOT NULL,
  started TEXT
);
CREATE TABLE IF NOT EXISTS suppressed (  -- the suppression mirror (see suppressions.py, delivery/mirror.py)
  email_key TEXT PRIMARY KEY,            -- lower-cased email
  reason TEXT NOT NULL,                  -- 'unsubscribed' | 'deleted'
  at REAL NOT NULL,                      -- when it happened, by Constant Contact's clock where known
  source TEXT,                           -- email_address.opt_out_source: 'Contact' | 'Account'
  contact_id TEXT,
  opted_out_at REAL,                     -- the opt-out time, kept when a deletion followed it
  client_id TEXT,                        -- the RemixCRM client pushed with this email, once known
  recorded_at REAL NOT NULL              -- when (reason, at) was last changed here: "new since" for readers
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS suppressed_by_recorded ON suppressed(recorded_at);
"""

CLAIM = """
UPDATE events SET state = 'sending', lease_owner = :owner, lease_until = :until,
                  attempts = attempts + 1, updated_at = :now,
                  contact = coalesce((SELECT l.contact FROM latest l WHERE l.email_key = events.email_key), contact)
WHERE id IN (SELECT e.id FROM events e
             WHERE {where}{lane}
               AND NOT EXISTS (SELECT 1 FROM events s WHERE s.state = 'sending' AND s.email_key = e.email_key
                               AND s.lease_until >= :now - :grace AND s.id != e.id)
             ORDER BY {order} LIMIT :limit)
RETURNING id, client_id, event, contact, attempts, created_at, email_key
"""
# (a subquery in RETURNING scans its table instead of using the index: quadratic for a claim of
# 40,000 rows, so the stamps are read by a query of their own, in the same transaction)
STAMPS = "SELECT email_key, stamps FROM latest WHERE email_key IN (SELECT value FROM json_each(?))"
# a leased row is taken back when its holder is provably gone, or its lease expired and the
# holder is not a live process on this machine, or even a live holder let it lapse long ago
RECLAIMABLE = """
e.state = 'sending' AND (e.lease_owner IN (SELECT value FROM json_each(:dead))
                         OR (e.lease_until < :now AND e.lease_owner NOT IN (SELECT value FROM json_each(:alive)))
                         OR e.lease_until < :now - :grace)
"""
DUE = "e.state = 'pending' AND e.next_attempt_at <= :now"
UPSERT_LATEST = """
INSERT INTO latest (email_key, contact, stamps, client_id, event, at, seq, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (email_key) DO UPDATE SET contact = excluded.contact, stamps = excluded.stamps,
  client_id = excluded.client_id, event = excluded.event, at = excluded.at, seq = excluded.seq,
  updated_at = excluded.updated_at
"""
INSERT_PENDING = """
INSERT INTO events (email_key, client_id, other_clients, event, contact, state, created_at, next_attempt_at, updated_at)
VALUES (?, ?, ?, ?, ?, 'pending', ?, ?, ?)
"""
SET_META = "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value"

DELIVERED = (
    "UPDATE events SET state = 'delivered', contact_id = ?, outcome = ?, last_error = NULL, "
    "lease_owner = NULL, lease_until = NULL, updated_at = ? WHERE id = ?"
)
