-- +goose Up
-- Accounts and their balances in minor units. Only the applier writes here.
CREATE TABLE accounts (
    account_id text   PRIMARY KEY,
    balance    bigint NOT NULL CHECK (balance >= 0)
);

-- The outcome of every applied command, by event ID: status 2 = applied,
-- 3 = rejected (the values of heed.ledger.v1.CommandStatus).
CREATE TABLE command_results (
    event_id      uuid     PRIMARY KEY,
    request_id    text     NOT NULL,
    account_id    text     NOT NULL,
    status        smallint NOT NULL,
    reason        text     NOT NULL,
    balance_after bigint   NOT NULL
);

-- +goose Down
DROP TABLE command_results;
DROP TABLE accounts;
