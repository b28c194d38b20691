-- +goose Up
-- One row per event ID ever applied (or quarantined as a conflict). fingerprint
-- hashes the event's content so that a request ID reused for different content is
-- recognised.
CREATE TABLE processed_events (
    event_id    uuid   PRIMARY KEY,
    fingerprint bigint NOT NULL
);

-- +goose Down
DROP TABLE processed_events;
