-- +goose Up
-- The outbox: the follow-up events applying an event emitted (Result.Emits),
-- one row per emit, written in the transaction that applied the event. Every
-- column is derived from the emitting record and the handler's emit, so a
-- replay, a rebuild and a retried batch write the same rows, byte for byte:
-- a rebuild's --verify compares them with the live ones.
--
-- value is the follow-up's record value (a heed.envelope.v1.Envelope,
-- marshaled deterministically), key its record key. key_hash is
-- dedup.KeyHash(key): the relay skips a row whose follow-up is in
-- processed_events already (applied, rejected or dropped: "seen").
-- event_time is the emitting event's record time, the follow-up's
-- occurred_at: retention prunes rows by it, like processed events.
CREATE TABLE outbox (
    topic            text        NOT NULL,
    origin_partition int         NOT NULL,
    origin_offset    bigint      NOT NULL,
    name             text        NOT NULL,
    event_id         uuid        NOT NULL,
    key              text        NOT NULL,
    key_hash         bigint      NOT NULL,
    type             text        NOT NULL,
    value            bytea       NOT NULL,
    event_time       timestamptz,
    PRIMARY KEY (topic, origin_partition, origin_offset, name)
);
CREATE INDEX outbox_event_id ON outbox (event_id);

-- The relay's progress, per origin partition: every outbox row of the
-- partition below next_offset was produced (acknowledged by the broker) or
-- failed for good (heed_outbox_failed). It is not part of the projection
-- (its name starts with heed_, which a rebuild's --verify leaves out): a
-- rebuild never publishes, and a swap carries the live progress over.
CREATE TABLE heed_outbox_relay (
    topic            text        NOT NULL,
    origin_partition int         NOT NULL,
    next_offset      bigint      NOT NULL,
    produced         bigint      NOT NULL DEFAULT 0,
    updated_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (topic, origin_partition)
);

-- Outbox rows the broker refused for good (a record too large for the
-- topic, say): the relay went on without them.
CREATE TABLE heed_outbox_failed (
    topic            text        NOT NULL,
    origin_partition int         NOT NULL,
    origin_offset    bigint      NOT NULL,
    name             text        NOT NULL,
    reason           text        NOT NULL,
    failed_at        timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (topic, origin_partition, origin_offset, name)
);

-- +goose Down
DROP TABLE heed_outbox_failed;
DROP TABLE heed_outbox_relay;
DROP TABLE outbox;
