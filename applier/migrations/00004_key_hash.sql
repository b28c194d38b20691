-- +goose Up
-- A record's key may be as long as the broker lets a message be (a MiB or
-- more), and a B-tree index entry holds at most about 2.7 kB: with the raw key
-- in parked_keys' primary key and in quarantine_open_key, storing a record
-- with a 20 kB key failed (SQLSTATE 54000), and its partition stopped. The
-- indexes now hold the key's SHA-256, computed by Postgres from the key that
-- is stored whole; readers look a key up by its hash and compare the raw key.
ALTER TABLE quarantine ADD COLUMN key_hash bytea GENERATED ALWAYS AS (sha256(coalesce(key, ''::bytea))) STORED;
DROP INDEX quarantine_open_key;
CREATE INDEX quarantine_open_key ON quarantine (topic, partition, key_hash, "offset") WHERE state = 'open';
-- The record's headers, whole, as Kafka encodes them in a record: for each,
-- the key's length (a zigzag varint), the key, the value's length (-1: null)
-- and the value. NULL: the record had no headers (or was stored before this).
ALTER TABLE quarantine ADD COLUMN headers bytea;

-- A parked hash parks every key with that hash: a collision could only hold
-- back records of another key, never let one pass its poison record; a
-- re-drive releases the hash only once no key with it has open records.
ALTER TABLE parked_keys ADD COLUMN key_hash bytea GENERATED ALWAYS AS (sha256(key)) STORED;
ALTER TABLE parked_keys DROP CONSTRAINT parked_keys_pkey;
DELETE FROM parked_keys a USING parked_keys b
WHERE a.topic = b.topic AND a.partition = b.partition AND a.key_hash = b.key_hash AND a.ctid > b.ctid;
ALTER TABLE parked_keys ADD PRIMARY KEY (topic, partition, key_hash);

-- +goose Down
ALTER TABLE parked_keys DROP CONSTRAINT parked_keys_pkey;
ALTER TABLE parked_keys DROP COLUMN key_hash;
ALTER TABLE parked_keys ADD PRIMARY KEY (topic, partition, key);
ALTER TABLE quarantine DROP COLUMN headers;
DROP INDEX quarantine_open_key;
ALTER TABLE quarantine DROP COLUMN key_hash;
CREATE INDEX quarantine_open_key ON quarantine (topic, partition, key, "offset") WHERE state = 'open';
