"""Which lane a pending row takes: ``sign_up_form`` one by one, or the bulk import.

Stated twice on purpose, side by side: as SQL, so a claim takes only its own lane's rows, and
as Python, the final word right before a send (``tests/test_lanes.py`` holds them equal).

- a decline (``email_opt_in`` False) is the one-by-one lane's: it is skipped there, at no cost;
- consent recorded by RemixCRM for this event (True) → ``sign_up_form`` (explicit permission);
- consent unknown → the import when ``unknown_consent = "implicit"``, else one by one (where
  "skip" skips it and "explicit" looks it up first);
- a row whose newest event is a backfill → the import, unless declined, or unknown under
  "skip": a backfill's consent is history, perhaps older than an unsubscribe; the import never
  re-subscribes nor upgrades anyone's permission, ``sign_up_form`` does both.
"""

from .newest import BACKFILL  # the event name of rows recorded by `remixcrm-ctct backfill`

SIGN_UP, IMPORT = "sign_up", "import"


def lane_of(email_opt_in: bool | None, event: str, unknown_consent: str) -> str:
    """``email_opt_in`` as in force for the row (see ``newest.consent_in_force``)."""
    if email_opt_in is False:
        return SIGN_UP
    if event == BACKFILL:
        return IMPORT if email_opt_in is True or unknown_consent != "skip" else SIGN_UP
    return IMPORT if email_opt_in is None and unknown_consent == "implicit" else SIGN_UP


# The consent in force of row ``e`` as SQL (1, 0 or NULL), mirroring newest.consent_in_force: the
# newest state's answer, except a "yes" given before the row's first event, which is used up, and
# a backfill's "yes" for a row that is not the backfill's.
_OPT_IN = f"""(CASE WHEN EXISTS (SELECT 1 FROM latest l WHERE l.email_key = e.email_key) THEN
  (SELECT CASE WHEN json_extract(l.contact, '$.email_opt_in') IS 1
                    AND (coalesce(json_extract(l.stamps, '$.email_opt_in[0]'), -1e308) < e.created_at
                         OR (json_extract(l.stamps, '$.email_opt_in_by') IS '{BACKFILL}'
                             AND e.event IS NOT '{BACKFILL}')) THEN NULL
               ELSE json_extract(l.contact, '$.email_opt_in') END
   FROM latest l WHERE l.email_key = e.email_key)
  ELSE json_extract(e.contact, '$.email_opt_in') END)"""
# true when row ``e`` is the import's; :implicit and :skip say what unknown_consent is. Every
# lookup of ``latest`` goes by its primary key: this is evaluated for each pending row of a claim.
IMPORT_SQL = f"""(SELECT CASE
  WHEN o IS 0 THEN 0
  WHEN e.event = '{BACKFILL}' THEN (o IS 1 OR NOT :skip)
  ELSE (o IS NULL AND :implicit) END
 FROM (SELECT {_OPT_IN} AS o))"""


def sql_args(unknown_consent: str) -> dict:
    return {"implicit": unknown_consent == "implicit", "skip": unknown_consent == "skip"}
