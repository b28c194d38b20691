-- +goose Up
-- heed rebuild --swap retires the projection it replaces: in the transaction
-- that renames the schemas it sets retired_at on every applied position of the
-- old one. A batch's compare-and-set requires retired_at IS NULL, so a batch
-- that was waiting for the position row when the swap committed finds its
-- position moved, rolls back and re-reads the position, by name, from the
-- schema that is live now.
ALTER TABLE applied_positions ADD COLUMN retired_at timestamptz;

-- +goose Down
ALTER TABLE applied_positions DROP COLUMN retired_at;
