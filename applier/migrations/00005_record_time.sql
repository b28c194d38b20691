-- +goose Up
-- Record time, by which the dedup window is measured and retention prunes
-- (see package dedup's window and package retention): a record's effective
-- time is the latest record timestamp of its partition up to it, in log
-- order, so that it never goes backwards and is the same on every replay.
--
-- record_time is the effective time of the last record before next_offset,
-- moved by the batch's compare-and-set with next_offset; NULL while the
-- partition applied nothing since this column (retention then does not prune
-- until it has).
ALTER TABLE applied_positions ADD COLUMN record_time timestamptz;
-- The effective time of a quarantined or parked record: a re-drive or a drop
-- decides with it, as the applier would have; NULL for records quarantined
-- before this column (within any window).
ALTER TABLE quarantine ADD COLUMN record_time timestamptz;

-- The dedup window the projection was built with, recorded at first use: a
-- decision depends on it, so every applier of the projection, and its
-- rebuild, must use the same one. window_us is in microseconds; 0: none (a
-- processed event stands forever).
CREATE TABLE heed_dedup_window (
    singleton   boolean     PRIMARY KEY DEFAULT true CHECK (singleton),
    window_us   bigint      NOT NULL CHECK (window_us >= 0),
    recorded_at timestamptz NOT NULL DEFAULT now()
);

-- +goose Down
DROP TABLE heed_dedup_window;
ALTER TABLE quarantine DROP COLUMN record_time;
ALTER TABLE applied_positions DROP COLUMN record_time;
