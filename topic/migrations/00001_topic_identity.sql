-- +goose Up
-- The topic incarnation the projection in this schema is built from: recorded
-- on first use by serve, apply or dev, and checked by them ever after, so that
-- no command is acknowledged into a topic whose events will never be applied
-- here (a wiped broker, a recreated topic, another cluster), and no key moves
-- to another partition unnoticed (a changed partition count).
CREATE TABLE topic_identity (
    topic      text PRIMARY KEY,
    -- The Kafka topic ID (KIP-516); all zeros from brokers without topic IDs.
    topic_id   uuid NOT NULL,
    partitions int  NOT NULL CHECK (partitions > 0)
);

-- +goose Down
DROP TABLE topic_identity;
