-- +goose Up
-- event_time is when the event was written to the topic (its record's
-- timestamp), the same on every replay: retention prunes rows by it (see
-- package retention). NULL (rows recorded before this column, or by an
-- operator's re-drive) is never pruned.
ALTER TABLE processed_events ADD COLUMN event_time timestamptz;
CREATE INDEX processed_events_event_time ON processed_events (event_time) WHERE event_time IS NOT NULL;

-- What retention pruned last: rows with event_time below cutoff are gone.
-- One row at most. A rebuild's --verify compares the processed events both
-- projections still hold (at or after the later cutoff of the two).
CREATE TABLE heed_retention (
    singleton boolean     PRIMARY KEY DEFAULT true CHECK (singleton),
    cutoff    timestamptz NOT NULL,
    pruned    bigint      NOT NULL DEFAULT 0,
    ran_at    timestamptz NOT NULL
);

-- +goose Down
DROP TABLE heed_retention;
DROP INDEX processed_events_event_time;
ALTER TABLE processed_events DROP COLUMN event_time;
