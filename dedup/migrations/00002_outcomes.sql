-- +goose Up
-- One row per event: the processed-event record carries the command's outcome,
-- so dedup and outcome cost one primary-key insert.
--
-- An event is identified by its ID within its aggregate (the record key):
-- key_hash is the first 8 bytes of the key's MD5, as a bigint, never 0
-- (dedup.KeyHash). A request ID reused for another aggregate is then another
-- command, decided in that aggregate's partition, the same way on every
-- replay. Rows recorded before this migration have key_hash 0 ("aggregate
-- unknown") until their domain's migration fills it in; a lookup treats such a
-- row as a match for any key.
--
-- status is the outcome: 2 applied, 3 rejected (by the domain, reason says
-- why), 6 dropped (by an operator); result is the domain's own result bytes
-- (for the ledger, a heed.ledger.v1.CommandResult message).
ALTER TABLE processed_events
    ADD COLUMN key_hash  bigint   NOT NULL DEFAULT 0,
    ADD COLUMN aggregate text,
    ADD COLUMN status    smallint NOT NULL DEFAULT 2 CHECK (status IN (2, 3, 6)),
    ADD COLUMN reason    text     NOT NULL DEFAULT '',
    ADD COLUMN result    bytea;
ALTER TABLE processed_events DROP CONSTRAINT processed_events_pkey;
ALTER TABLE processed_events ADD PRIMARY KEY (event_id, key_hash);
-- Finds rows without a key at once (dedup.HasKeylessRows); new rows never
-- enter it.
CREATE INDEX processed_events_keyless ON processed_events (event_id) WHERE key_hash = 0;

-- +goose Down
DROP INDEX processed_events_keyless;
ALTER TABLE processed_events DROP CONSTRAINT processed_events_pkey;
DELETE FROM processed_events a USING processed_events b
WHERE a.event_id = b.event_id AND a.key_hash > b.key_hash;
ALTER TABLE processed_events ADD PRIMARY KEY (event_id);
ALTER TABLE processed_events
    DROP COLUMN key_hash, DROP COLUMN aggregate, DROP COLUMN status, DROP COLUMN reason, DROP COLUMN result;
