-- +goose Up
-- Every batch updates the balances it touched, one new row version per
-- account. With room left on each page, Postgres keeps that version on the
-- same page and skips the primary-key index (a HOT update): the account
-- update costs about a quarter less CPU (docs/BENCHMARKS.md, issue 18), for
-- a table twice its packed size. Existing pages get the room as they are
-- rewritten (VACUUM FULL, or CLUSTER, when convenient).
ALTER TABLE accounts SET (fillfactor = 50);

-- +goose Down
ALTER TABLE accounts RESET (fillfactor);
