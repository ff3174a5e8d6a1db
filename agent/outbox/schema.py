"""The outbox's SQLite schema and its migrations (version N applies MIGRATIONS[N] in one transaction).

Every migration step is idempotent (IF NOT EXISTS, INSERT OR IGNORE), and all steps up to
SCHEMA_VERSION run with the version bump in one transaction: a database is either at its old
version, untouched, or fully migrated.
"""

from __future__ import annotations

SCHEMA_VERSION = 2

_V1 = (
    """CREATE TABLE state (
        machine TEXT PRIMARY KEY,
        data    TEXT NOT NULL            -- the machine logic's state, JSON
    )""",
    # Counter and startstop calls; one FIFO lane per machine, ordered by id.
    """CREATE TABLE calls (
        id        INTEGER PRIMARY KEY AUTOINCREMENT,
        machine   TEXT NOT NULL,
        kind      TEXT NOT NULL CHECK (kind IN ('counter', 'startstop')),
        count     INTEGER,               -- offset already added
        waste     TEXT,                  -- JSON {code: quantity}
        running   INTEGER,
        type      TEXT,
        body      TEXT,                  -- the exact JSON sent, frozen by the first attempt
        param_seq INTEGER NOT NULL DEFAULT 0,
        attempts  INTEGER NOT NULL DEFAULT 0,
        unknown   INTEGER NOT NULL DEFAULT 0,  -- an attempt's outcome is unknown: it may be applied
        inflight  INTEGER NOT NULL DEFAULT 0,  -- being sent; still set after a crash
        created   REAL NOT NULL,
        updated   REAL NOT NULL
    )""",
    "CREATE INDEX calls_lane ON calls (machine, id)",
    # Per machine: operator offset, the last values Prodsmart acknowledged, the last logic total.
    """CREATE TABLE machines (
        machine      TEXT PRIMARY KEY,
        count_offset INTEGER NOT NULL DEFAULT 0,
        last_total   INTEGER,
        acked_count  INTEGER,
        acked_running INTEGER,
        acked_type   TEXT,
        acked_at     REAL
    )""",
    """CREATE TABLE acked_waste (
        machine  TEXT NOT NULL,
        code     TEXT NOT NULL,
        quantity INTEGER NOT NULL,
        PRIMARY KEY (machine, code)
    )""",
    # Waste that grew without the count, with waste_without_count=hold.
    """CREATE TABLE held_waste (
        machine  TEXT NOT NULL,
        code     TEXT NOT NULL,
        quantity INTEGER NOT NULL,
        PRIMARY KEY (machine, code)
    )""",
    # Pending parameter values, newest per code; seq tells a newer value from the one sent.
    """CREATE TABLE params (
        machine TEXT NOT NULL,
        code    TEXT NOT NULL,
        value   TEXT NOT NULL,           -- JSON scalar
        seq     INTEGER NOT NULL,
        updated REAL NOT NULL,
        PRIMARY KEY (machine, code)
    )""",
    "CREATE INDEX params_age ON params (updated, seq)",
    """CREATE TABLE dead_letters (
        id        INTEGER PRIMARY KEY AUTOINCREMENT,
        machine   TEXT NOT NULL,
        kind      TEXT NOT NULL,
        body      TEXT NOT NULL,
        status    INTEGER NOT NULL,
        response  TEXT NOT NULL,
        attempts  INTEGER NOT NULL,
        created   REAL NOT NULL,
        failed_at REAL NOT NULL
    )""",
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL)",
    "INSERT INTO meta (key, value) VALUES ('param_seq', 0)",
)

# Version 2: delta de-duplication ids leave the state JSON for their own table (bounded by count
# and age, written once per id instead of rewritten with the state on every commit), and waste
# codes get rebase offsets. The ids a version-1 state holds are carried over, oldest first; the
# state JSON drops them at the machine's next commit.
_V2 = (
    """CREATE TABLE IF NOT EXISTS delta_ids (
        n       INTEGER PRIMARY KEY AUTOINCREMENT,  -- arrival order: the oldest go first
        machine TEXT NOT NULL,
        role    TEXT NOT NULL,           -- "count" or "waste:<code>"
        id      TEXT NOT NULL,
        seen    REAL NOT NULL,           -- unix time it was committed
        UNIQUE (machine, role, id)
    )""",
    "CREATE INDEX IF NOT EXISTS delta_ids_age ON delta_ids (seen)",
    "CREATE INDEX IF NOT EXISTS delta_ids_role ON delta_ids (machine, role, n)",  # the count bound
    """INSERT OR IGNORE INTO delta_ids (machine, role, id, seen)
       SELECT s.machine, c.key, CAST(i.value AS TEXT), (julianday('now') - 2440587.5) * 86400.0
       FROM state AS s, json_each(s.data, '$.counters') AS c, json_each(c.value, '$.ids') AS i
       WHERE json_valid(s.data) AND json_type(s.data, '$.counters') = 'object'
         AND json_type(c.value, '$.ids') = 'array'
       ORDER BY s.machine, c.key, i.key""",
    """CREATE TABLE IF NOT EXISTS waste_offsets (
        machine  TEXT NOT NULL,
        code     TEXT NOT NULL,
        quantity_offset INTEGER NOT NULL,  -- added to the waste total sent; set by `rebase`
        PRIMARY KEY (machine, code)
    )""",
)

MIGRATIONS: dict[int, tuple[str, ...]] = {1: _V1, 2: _V2}

VERSION_TABLE = "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)"
