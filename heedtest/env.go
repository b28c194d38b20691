package heedtest

import (
	"testing"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/heed-dev/heed"
	"github.com/heed-dev/heed/devstack"
	"github.com/heed-dev/heed/internal/testenv"
)

// stack is a fresh database on the test server and an in-process broker,
// both gone at tb's cleanup.
type stack struct {
	dbURL   string
	brokers []string
}

func newStack(tb testing.TB, partitions int32) stack {
	tb.Helper()
	dbURL := testenv.PostgresURL(tb) // skips, or fails under CI=true, without a server
	b, err := devstack.StartBroker(tb.Context(), devstack.BrokerConfig{
		Listen:     "127.0.0.1:0",
		Partitions: partitions,
		Logger:     testenv.Logger(tb),
	})
	if err != nil {
		tb.Fatalf("heedtest: start the broker: %v", err)
	}
	tb.Cleanup(b.Close)
	return stack{dbURL: dbURL, brokers: b.Addrs()}
}

func newReplayer(tb testing.TB, d *heed.Domain, o options) *replayer {
	tb.Helper()
	st := newStack(tb, o.partitions)
	admin, err := pgxpool.New(tb.Context(), st.dbURL)
	if err != nil {
		tb.Fatalf("heedtest: connect to the test database: %v", err)
	}
	tb.Cleanup(admin.Close)
	cl, err := kgo.NewClient(kgo.SeedBrokers(st.brokers...), kgo.RecordPartitioner(kgo.StickyKeyPartitioner(nil)))
	if err != nil {
		tb.Fatalf("heedtest: Kafka client: %v", err)
	}
	tb.Cleanup(cl.Close)
	r := &replayer{
		d: d, handler: d.Handler(), opts: o,
		dbURL: st.dbURL, brokers: st.brokers,
		admin: admin, cl: cl,
	}
	r.logger = logger(tb, &r.warning)
	return r
}
