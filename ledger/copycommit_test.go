package ledger_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/heed-dev/heed/applier"
	"github.com/heed-dev/heed/internal/testenv"
	"github.com/heed-dev/heed/ledger"
)

// A batch big enough to record its processed rows by COPY (dedup.Record,
// 500 new events or more) whose COMMIT then fails leaves nothing behind: no
// processed row, no account, no moved position, since the COPY ran inside the
// batch's transaction; retried once the commit can succeed, it applies every
// event once (issue 26 item 9). A deferred constraint trigger the test
// installs on applied_positions fails the COMMIT itself, after every
// statement of the batch, the COPY included, has run; another trigger notes
// which statement wrote processed_events, to show the COPY path was taken.
func TestCopiedBatchRolledBackWhenCommitFails(t *testing.T) {
	p := newPipeline(t, pipelineOpts{})
	ctx := t.Context()
	if _, err := p.pool.Exec(ctx, `
CREATE TABLE test_commit_fails (armed boolean NOT NULL);
INSERT INTO test_commit_fails VALUES (true);
CREATE FUNCTION test_fail_commit() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF (SELECT armed FROM test_commit_fails) THEN
        RAISE EXCEPTION 'the test fails this commit' USING ERRCODE = 'serialization_failure';
    END IF;
    RETURN NULL;
END $$;
CREATE CONSTRAINT TRIGGER test_fail_commit AFTER UPDATE ON applied_positions
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION test_fail_commit();
CREATE TABLE test_recorded_by (statement text NOT NULL);
CREATE FUNCTION test_note_statement() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO test_recorded_by VALUES (split_part(ltrim(current_query()), ' ', 1));
    RETURN NULL;
END $$;
CREATE TRIGGER test_note_statement AFTER INSERT ON processed_events
    FOR EACH STATEMENT EXECUTE FUNCTION test_note_statement();`); err != nil {
		t.Fatalf("install the triggers: %v", err)
	}

	// The whole history is in the topic before the applier starts, so that
	// its first batch takes all of it.
	const deposits = 600
	const acct = "cora"
	p.open(t, "open-cora", acct)
	recs := make([]*kgo.Record, deposits)
	for i := range recs {
		recs[i] = rawDeposit(t, fmt.Sprint("dep-cora-", i), acct, 1)
	}
	last := p.produceRaw(t, recs...)[deposits-1]

	a, err := applier.New(applier.Config{
		Brokers: p.broker, Topic: p.topic, Group: p.group,
		MaxBatchRecords: 4 * deposits, Logger: testenv.Logger(t),
	}, p.pool, ledger.Applier{})
	if err != nil {
		t.Fatal(err)
	}
	runCtx, stop := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(runCtx) }()
	defer func() {
		stop()
		if err := <-done; err != nil {
			t.Errorf("applier run: %v", err)
		}
	}()

	testenv.Eventually(t, 30*time.Second, func() string {
		if n := a.Stats().Retries; n < 2 {
			return fmt.Sprintf("%d failed commits, want 2", n)
		}
		return ""
	})
	for what, sql := range map[string]string{
		"processed rows":  `SELECT count(*) FROM processed_events`,
		"accounts":        `SELECT count(*) FROM accounts`,
		"applied offsets": `SELECT coalesce(sum(next_offset), 0) FROM applied_positions`,
	} {
		if n := p.count(t, sql); n != 0 {
			t.Errorf("%s after failed commits: %d, want 0 (the batch rolled back whole)", what, n)
		}
	}

	if _, err := p.pool.Exec(ctx, `UPDATE test_commit_fails SET armed = false`); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 30*time.Second, func() string {
		if n := p.count(t, `SELECT coalesce(sum(next_offset), 0) FROM applied_positions`); n != last.Offset+1 {
			return fmt.Sprintf("applied up to %d, want %d", n, last.Offset+1)
		}
		return ""
	})
	if got := p.balances(t)[acct]; got != deposits {
		t.Errorf("balance = %d, want %d: every deposit once", got, deposits)
	}
	if n := p.count(t, `SELECT count(*) FROM processed_events`); n != deposits+1 {
		t.Errorf("processed rows = %d, want %d", n, deposits+1)
	}
	if s := a.Stats(); s.Applied != deposits+1 || s.Duplicates != 0 || s.Quarantined != 0 {
		t.Errorf("stats = %+v, want %d applied, no duplicate, nothing quarantined", s, deposits+1)
	}
	var by []string
	rows, err := p.pool.Query(ctx, `SELECT statement FROM test_recorded_by`)
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var s string
		if err := rows.Scan(&s); err != nil {
			t.Fatal(err)
		}
		by = append(by, strings.ToUpper(s))
	}
	if rows.Err() != nil {
		t.Fatal(rows.Err())
	}
	if len(by) != 1 || by[0] != "COPY" {
		t.Errorf("processed rows written by %v, want one COPY: the test did not take the COPY path", by)
	}
}
