package rebuild

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
)

// Report compares two projections table by table.
type Report struct {
	// Positions are the applied positions both were compared at.
	Positions map[int32]int64
	Tables    []TableReport
}

// TableReport is one table's comparison. Rows are counted per side; the
// checksum is the sum of each row's MD5 (as text), so it ignores order.
type TableReport struct {
	Table string
	// Missing names the side without the table ("live" or "rebuilt"), if any.
	Missing               string
	LiveRows, RebuiltRows int64
	Equal                 bool
	// OnlyLive and OnlyRebuilt are the first rows (as text) one side has
	// and the other has not, when they differ.
	OnlyLive, OnlyRebuilt []string
}

// Equal reports whether every table matched.
func (r *Report) Equal() bool {
	for _, t := range r.Tables {
		if !t.Equal {
			return false
		}
	}
	return true
}

// Summary names the tables that differ and their first differing rows.
func (r *Report) Summary() string {
	var b strings.Builder
	for _, t := range r.Tables {
		if t.Equal {
			continue
		}
		if b.Len() > 0 {
			b.WriteString("; ")
		}
		if t.Missing != "" {
			fmt.Fprintf(&b, "table %s missing in the %s schema", t.Table, t.Missing)
			continue
		}
		fmt.Fprintf(&b, "table %s: %d rows live, %d rebuilt", t.Table, t.LiveRows, t.RebuiltRows)
		if len(t.OnlyLive) > 0 {
			fmt.Fprintf(&b, ", only live: %s", strings.Join(t.OnlyLive, " "))
		}
		if len(t.OnlyRebuilt) > 0 {
			fmt.Fprintf(&b, ", only rebuilt: %s", strings.Join(t.OnlyRebuilt, " "))
		}
	}
	if b.Len() == 0 {
		return "equal"
	}
	return b.String()
}

// firstDiffs is how many differing rows a TableReport lists per side.
const firstDiffs = 5

// compare compares every table of schemas live and rebuilt through q, except
// heed's bookkeeping tables (heed_*: the migration versions, which record when
// each migration ran, and the retention's last run). Rows with an event_time
// before the later of the two schemas' retention cutoffs are left out: one of
// the two may have pruned them (package retention).
func compare(ctx context.Context, q pgx.Tx, live, rebuilt string) (*Report, error) {
	lt, err := tables(ctx, q, live)
	if err != nil {
		return nil, err
	}
	rt, err := tables(ctx, q, rebuilt)
	if err != nil {
		return nil, err
	}
	names := map[string]bool{}
	for _, t := range append(lt, rt...) {
		names[t] = true
	}
	cutoff, err := laterCutoff(ctx, q, live, rebuilt)
	if err != nil {
		return nil, err
	}
	rep := &Report{}
	for _, name := range slices.Sorted(maps.Keys(names)) {
		tr := TableReport{Table: name}
		switch {
		case !slices.Contains(lt, name):
			tr.Missing = "live"
		case !slices.Contains(rt, name):
			tr.Missing = "rebuilt"
		default:
			a, b := pgx.Identifier{live, name}.Sanitize(), pgx.Identifier{rebuilt, name}.Sanitize()
			if cutoff != nil {
				timed, err := hasColumn(ctx, q, live, name, "event_time")
				if err != nil {
					return nil, err
				}
				if timed {
					keep := fmt.Sprintf(` WHERE event_time IS NULL OR event_time >= '%s'::timestamptz`, cutoff.UTC().Format(time.RFC3339Nano))
					a, b = "(SELECT * FROM "+a+keep+")", "(SELECT * FROM "+b+keep+")"
				}
			}
			var ls, rs string
			if tr.LiveRows, ls, err = checksum(ctx, q, a); err != nil {
				return nil, err
			}
			if tr.RebuiltRows, rs, err = checksum(ctx, q, b); err != nil {
				return nil, err
			}
			tr.Equal = tr.LiveRows == tr.RebuiltRows && ls == rs
			if !tr.Equal {
				if tr.OnlyLive, err = except(ctx, q, a, b); err != nil {
					return nil, err
				}
				if tr.OnlyRebuilt, err = except(ctx, q, b, a); err != nil {
					return nil, err
				}
			}
		}
		rep.Tables = append(rep.Tables, tr)
	}
	return rep, nil
}

// laterCutoff is the later of the two schemas' retention cutoffs, or nil
// when neither has pruned.
func laterCutoff(ctx context.Context, q pgx.Tx, schemas ...string) (*time.Time, error) {
	var later *time.Time
	for _, s := range schemas {
		var exists bool
		if err := q.QueryRow(ctx, `SELECT EXISTS (SELECT FROM information_schema.tables WHERE table_schema = $1 AND table_name = 'heed_retention')`, s).Scan(&exists); err != nil {
			return nil, fmt.Errorf("read the retention cutoff of %s: %w", s, err)
		}
		if !exists {
			continue
		}
		var c *time.Time
		if err := q.QueryRow(ctx, `SELECT max(cutoff) FROM `+pgx.Identifier{s, "heed_retention"}.Sanitize()).Scan(&c); err != nil {
			return nil, fmt.Errorf("read the retention cutoff of %s: %w", s, err)
		}
		if c != nil && (later == nil || c.After(*later)) {
			later = c
		}
	}
	return later, nil
}

func hasColumn(ctx context.Context, q pgx.Tx, schemaName, table, column string) (bool, error) {
	var ok bool
	err := q.QueryRow(ctx, `SELECT EXISTS (SELECT FROM information_schema.columns WHERE table_schema = $1 AND table_name = $2 AND column_name = $3)`, schemaName, table, column).Scan(&ok)
	if err != nil {
		return false, fmt.Errorf("read the columns of %s.%s: %w", schemaName, table, err)
	}
	return ok, nil
}

// tables lists schemaName's tables but heed's bookkeeping ones (heed_*).
func tables(ctx context.Context, q pgx.Tx, schemaName string) ([]string, error) {
	rows, err := q.Query(ctx, `SELECT table_name FROM information_schema.tables
WHERE table_schema = $1 AND table_type = 'BASE TABLE' AND table_name NOT LIKE 'heed\_%' ORDER BY 1`, schemaName)
	if err != nil {
		return nil, fmt.Errorf("list the tables of %s: %w", schemaName, err)
	}
	names, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, fmt.Errorf("list the tables of %s: %w", schemaName, err)
	}
	return names, nil
}

// checksum counts table's rows and sums their MD5s (an order-free checksum).
func checksum(ctx context.Context, q pgx.Tx, table string) (int64, string, error) {
	var (
		n   int64
		sum string
	)
	err := q.QueryRow(ctx, `SELECT count(*), coalesce(sum(('x' || left(md5(t::text), 16))::bit(64)::bigint::numeric), 0)::text FROM `+table+` t`).Scan(&n, &sum)
	if err != nil {
		return 0, "", fmt.Errorf("checksum %s: %w", table, err)
	}
	return n, sum, nil
}

// except lists the first rows of a that b has not, as text, in order.
func except(ctx context.Context, q pgx.Tx, a, b string) ([]string, error) {
	rows, err := q.Query(ctx, fmt.Sprintf(`SELECT d::text FROM (SELECT * FROM %s x EXCEPT ALL SELECT * FROM %s y) d ORDER BY 1 LIMIT %d`, a, b, firstDiffs))
	if err != nil {
		return nil, fmt.Errorf("compare %s with %s: %w", a, b, err)
	}
	out, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, fmt.Errorf("compare %s with %s: %w", a, b, err)
	}
	return out, nil
}
