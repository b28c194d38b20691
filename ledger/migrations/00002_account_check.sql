-- +goose Up
-- accounts_written fails the statement that calls it, and with it the batch's
-- transaction, when a write touched fewer accounts than it changed: another
-- transaction wrote one of them since the batch read it (the same account's
-- events in two partitions). serialization_failure is transient: the applier
-- retries the batch, which reads the new balance. The check runs in Postgres
-- because the batch's COMMIT travels in the same round trip as the write.
-- +goose StatementBegin
CREATE FUNCTION accounts_written(written bigint, expected bigint) RETURNS bigint LANGUAGE plpgsql AS $$
BEGIN
    IF written <> expected THEN
        RAISE EXCEPTION 'an account changed since the batch read it (another transaction wrote it: the same account in two partitions): % of % accounts written', written, expected
            USING ERRCODE = 'serialization_failure';
    END IF;
    RETURN written;
END
$$;
-- +goose StatementEnd

-- +goose Down
DROP FUNCTION accounts_written(bigint, bigint);
