-- +goose Up
-- Command outcomes move into the processed-event table (one row per event):
-- each command_results row fills in its event's processed row, keyed by its
-- account from now on, with the balance after it as a heed.ledger.v1.
-- CommandResult message (field 1, a varint; for a rejected command, the
-- balance it left unchanged). Events an operator dropped from
-- the quarantine get the status dropped.
-- +goose StatementBegin
CREATE FUNCTION heed_command_result(balance bigint) RETURNS bytea LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
    v   bigint := balance;
    out bytea  := '\x08';
BEGIN
    IF balance IS NULL OR balance <= 0 THEN
        RETURN NULL; -- proto3 leaves a zero field out; balances are never negative
    END IF;
    WHILE v >= 128 LOOP
        out := out || set_byte('\x00'::bytea, 0, (v % 128 + 128)::int);
        v := v / 128;
    END LOOP;
    RETURN out || set_byte('\x00'::bytea, 0, v::int);
END
$$;
-- +goose StatementEnd
UPDATE processed_events p
SET key_hash = CASE c.h WHEN 0 THEN 1 ELSE c.h END, aggregate = c.account_id, status = c.status, reason = c.reason,
    result = heed_command_result(c.balance_after)
FROM (SELECT *, ('x' || left(md5(account_id), 16))::bit(64)::bigint AS h FROM command_results) c
WHERE p.event_id = c.event_id;
UPDATE processed_events p SET status = 6, reason = q.reason
FROM quarantine q
WHERE q.event_id = p.event_id AND q.state = 'dropped' AND p.key_hash = 0;
DROP FUNCTION heed_command_result(bigint);
DROP TABLE command_results;

-- command_results stays as a view for people reading the ledger with SQL:
-- heed_balance_after reads the CommandResult's balance_after (field 1).
-- +goose StatementBegin
CREATE FUNCTION heed_balance_after(result bytea) RETURNS bigint LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
    v     bigint := 0;
    shift int    := 0;
    b     int;
BEGIN
    IF result IS NULL OR length(result) < 2 THEN
        RETURN 0;
    END IF;
    FOR i IN 1 .. length(result) - 1 LOOP
        b := get_byte(result, i);
        v := v + ((b & 127)::bigint << shift);
        EXIT WHEN b < 128;
        shift := shift + 7;
    END LOOP;
    RETURN v;
END
$$;
-- +goose StatementEnd
CREATE VIEW command_results AS
SELECT event_id, aggregate AS account_id, status, reason, heed_balance_after(result) AS balance_after
FROM processed_events;

-- +goose Down
DROP VIEW command_results;
CREATE TABLE command_results (
    event_id      uuid     PRIMARY KEY,
    request_id    text     NOT NULL,
    account_id    text     NOT NULL,
    status        smallint NOT NULL,
    reason        text     NOT NULL,
    balance_after bigint   NOT NULL
);
-- The request IDs are not kept in the processed-event table: they come back
-- empty.
INSERT INTO command_results (event_id, request_id, account_id, status, reason, balance_after)
SELECT DISTINCT ON (event_id) event_id, '', aggregate, status, reason, heed_balance_after(result)
FROM processed_events WHERE aggregate IS NOT NULL AND status IN (2, 3) ORDER BY event_id, aggregate;
DROP FUNCTION heed_balance_after(bytea);
