-- +goose Up
-- The database owns the truth about progress: next_offset is the first offset of
-- the partition whose effect is not in the database yet. It moves only by
-- compare-and-set, in the transaction that applies the batch before it.
CREATE TABLE applied_positions (
    topic       text   NOT NULL,
    partition   int    NOT NULL,
    next_offset bigint NOT NULL,
    PRIMARY KEY (topic, partition)
);

-- Records that can never be applied (undecodable, unknown type, invalid), and
-- commands whose request ID was reused with different content, kept with their raw
-- bytes so that an operator can inspect and re-drive them.
CREATE TABLE quarantine (
    topic      text   NOT NULL,
    partition  int    NOT NULL,
    "offset"   bigint NOT NULL,
    kind       text   NOT NULL CHECK (kind IN ('poison', 'conflict')),
    reason     text   NOT NULL,
    event_id   uuid,
    key        bytea,
    value      bytea,
    PRIMARY KEY (topic, partition, "offset")
);

-- +goose Down
DROP TABLE quarantine;
DROP TABLE applied_positions;
