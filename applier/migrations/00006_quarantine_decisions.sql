-- +goose Up
-- What the applier did when it reached an operator's quarantine decision (a
-- control record of the topic: heed quarantine redrive, heed quarantine drop),
-- one row per control record, written in the transaction that moved the
-- partition's position past it. heed quarantine reads it to report the
-- outcome; a rebuild writes the same rows, since it replays the same records.
CREATE TABLE quarantine_decisions (
    topic      text     NOT NULL,
    partition  int      NOT NULL,
    "offset"   bigint   NOT NULL,
    -- redrive or drop; '' when the control record could not be read.
    action     text     NOT NULL,
    -- The offset of the record the decision names, or -1.
    target     bigint   NOT NULL,
    key        bytea    NOT NULL,
    applied    int      NOT NULL,
    duplicates int      NOT NULL,
    conflicts  int      NOT NULL,
    -- The offset dropped, or -1.
    dropped    bigint   NOT NULL,
    -- The offset that still cannot apply after the decision, or -1, why, and
    -- how many records stay parked behind it.
    poison     bigint   NOT NULL,
    reason     text     NOT NULL,
    parked     int      NOT NULL,
    -- Why nothing was done, or ''.
    note       text     NOT NULL,
    PRIMARY KEY (topic, partition, "offset")
);

-- +goose Down
DROP TABLE quarantine_decisions;
