-- The city's database (DSN sqlite:///PATH or postgresql://...), one schema for both engines.
-- {blob} and {id} are the only words that differ: BLOB / BYTEA, and an autoincrement key.
-- Times are RFC 3339 UTC text with milliseconds, as on the wire ("2026-12-04T15:21:40.123Z"):
-- text orders as time does, and substr(ts, 1, 13) is the hour on both engines.

-- One row per node: what its retained status and its last heartbeat say, and the seq range
-- stored so far (first_seq..last_seq; the open gaps are what is missing in between).
CREATE TABLE nodes (
    node            TEXT PRIMARY KEY,
    site            TEXT,
    lat             DOUBLE PRECISION,
    lon             DOUBLE PRECISION,
    state           TEXT,              -- online | offline (status)
    state_reason    TEXT,              -- lost | shutdown when offline
    since           TEXT,              -- status: online since (node clock)
    version         TEXT,
    boot_id         TEXT,
    config_hash     TEXT,
    status_at       TEXT,              -- when the status was received
    heartbeat       TEXT,              -- the last heartbeat, JSON as sent
    heartbeat_ts    TEXT,              -- its ts (node clock)
    heartbeat_at    TEXT,              -- when it was received
    backlog         BIGINT,            -- from the last heartbeat
    dropped         BIGINT,            -- from the last heartbeat
    first_seq       BIGINT,            -- lowest seq stored
    last_seq        BIGINT,            -- highest seq stored
    last_reading_ts TEXT               -- ts of the newest reading stored (by ts)
);

-- One row per reading, keyed by (node, seq): a duplicate is a no-op.
CREATE TABLE readings (
    node        TEXT NOT NULL,
    seq         BIGINT NOT NULL,
    sensor      TEXT NOT NULL,
    ts          TEXT NOT NULL,
    "values"    TEXT NOT NULL,         -- JSON object exactly as sent (also one row each in reading_values)
    units       TEXT NOT NULL,         -- JSON object: the batch's units
    quality     TEXT NOT NULL,         -- JSON array of QC flags, '[]' when clean
    flagged     BOOLEAN NOT NULL,      -- a QC flag other than clock_corrected, or clock unsynced
    clock       TEXT,                  -- NULL (synced) | 'unsynced' (as sent)
    backfill    BOOLEAN NOT NULL,
    meta        TEXT,                  -- JSON: calibration, pm_correction (as sent), or NULL
    received_at TEXT NOT NULL,
    PRIMARY KEY (node, seq)
);
CREATE INDEX readings_ts ON readings (ts);
CREATE INDEX readings_node_sensor_ts ON readings (node, sensor, ts);

-- One row per value of a reading, for aggregation (EAQI hourly means, CSV export). The corrected
-- PM travels as its own quantities (pm2_5_corrected, pm10_corrected) beside the raw ones.
CREATE TABLE reading_values (
    node     TEXT NOT NULL,
    seq      BIGINT NOT NULL,
    quantity TEXT NOT NULL,
    value    DOUBLE PRECISION NOT NULL,
    unit     TEXT,
    ts       TEXT NOT NULL,            -- copies of the reading's, so aggregates need no join
    flagged  BOOLEAN NOT NULL,
    PRIMARY KEY (node, seq, quantity)
);
CREATE INDEX reading_values_quantity_ts ON reading_values (quantity, ts);

-- Missing seq ranges per node, first_missing..last_missing inclusive. Open while closed_at is
-- NULL; a range partly filled by late backfill shrinks (or splits in two), a filled one is closed.
CREATE TABLE gaps (
    id            {id},
    node          TEXT NOT NULL,
    first_missing BIGINT NOT NULL,
    last_missing  BIGINT NOT NULL,
    opened_at     TEXT NOT NULL,
    closed_at     TEXT
);
CREATE INDEX gaps_node_open ON gaps (node, closed_at);

-- Whatever could not be stored as a reading, status or heartbeat, with the reason: never
-- dropped silently. reason is a short code (malformed, schema, no_status, absurd_ts,
-- seq_backwards, seq_conflict, topic), detail says what exactly.
CREATE TABLE quarantine (
    id          {id},
    received_at TEXT NOT NULL,
    topic       TEXT NOT NULL,
    node        TEXT,
    reason      TEXT NOT NULL,
    detail      TEXT NOT NULL,
    payload     {blob} NOT NULL
);
CREATE INDEX quarantine_node_reason ON quarantine (node, reason);
