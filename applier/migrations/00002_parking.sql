-- +goose Up
-- A poison record parks its key: the key's later records of the partition are
-- held in the quarantine, in log order, as kind 'parked', until an operator
-- re-drives or drops the poison record (heed quarantine). state says what
-- became of a quarantined record: open (waiting), redriven (applied since,
-- or found a duplicate), dropped (an operator decided never to apply it).
ALTER TABLE quarantine DROP CONSTRAINT quarantine_kind_check;
ALTER TABLE quarantine ADD CONSTRAINT quarantine_kind_check CHECK (kind IN ('poison', 'conflict', 'parked'));
ALTER TABLE quarantine ADD COLUMN state text NOT NULL DEFAULT 'open' CHECK (state IN ('open', 'redriven', 'dropped'));
-- GetCommandResult finds a quarantined or parked command by its event ID.
CREATE INDEX quarantine_event_id ON quarantine (event_id) WHERE event_id IS NOT NULL;
-- A re-drive reads a key's open records in log order.
CREATE INDEX quarantine_open_key ON quarantine (topic, partition, key, "offset") WHERE state = 'open';

-- The keys parked in each partition: every batch reads its partition's, in
-- the transaction that applies it, after locking the partition's applied
-- position (which a re-drive locks too).
CREATE TABLE parked_keys (
    topic     text  NOT NULL,
    partition int   NOT NULL,
    key       bytea NOT NULL,
    PRIMARY KEY (topic, partition, key)
);
-- Keys of poison records quarantined before parking existed park from now on.
INSERT INTO parked_keys (topic, partition, key)
SELECT DISTINCT topic, partition, coalesce(key, '') FROM quarantine WHERE kind = 'poison';

-- +goose Down
DROP TABLE parked_keys;
DROP INDEX quarantine_open_key;
DROP INDEX quarantine_event_id;
ALTER TABLE quarantine DROP COLUMN state;
DELETE FROM quarantine WHERE kind = 'parked';
ALTER TABLE quarantine DROP CONSTRAINT quarantine_kind_check;
ALTER TABLE quarantine ADD CONSTRAINT quarantine_kind_check CHECK (kind IN ('poison', 'conflict'));
