package cli

import (
	"github.com/heed-dev/heed"

	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/twmb/franz-go/pkg/kgo"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"github.com/heed-dev/heed/applier"
	envelopev1 "github.com/heed-dev/heed/gen/heed/envelope/v1"
	"github.com/heed-dev/heed/topic"
)

var quarantineVerb = verb{
	name:    "quarantine",
	summary: "inspect, re-drive or drop quarantined and parked records (list, show, redrive, drop)",
	example: "heed quarantine list --database-url postgres://postgres@127.0.0.1:5432/heed",
	new:     func(d *heed.Domain) command { return &quarantineCmd{kafka: kafkaFlags{dom: d}, db: dbFlags{dom: d}} },
	actions: []string{"list", "show", "redrive", "drop"},
}

type quarantineCmd struct {
	action    string
	kafka     kafkaFlags
	db        dbFlags
	log       logFlags
	partition int
	offset    int64
	key       string
	all       bool
	asJSON    bool
	reason    string
	wait      time.Duration
}

func (c *quarantineCmd) setAction(a string) { c.action = a }

func (c *quarantineCmd) flags(fs *flag.FlagSet) {
	c.kafka.register(fs, true)
	c.db.register(fs, "", "Postgres URL of the projection, e.g. postgres://postgres@127.0.0.1:5432/heed")
	fs.IntVar(&c.partition, "partition", -1, "the record's partition (list: only this partition; show, redrive, drop: required)")
	fs.Int64Var(&c.offset, "offset", -1, "the record's offset (show, redrive, drop: required)")
	fs.StringVar(&c.key, "key", "", "list: only records of this key (the aggregate: the ledger's account ID)")
	fs.BoolVar(&c.all, "all", false, "list: also records no longer open (re-driven, dropped)")
	fs.BoolVar(&c.asJSON, "json", false, "list, show: print JSON")
	fs.StringVar(&c.reason, "reason", "", "drop: why the record is dropped, stored with it (required)")
	fs.DurationVar(&c.wait, "wait", 30*time.Second, "redrive, drop: how long to wait for the applier to carry out the decision written to the topic")
	c.log.registerLevel(fs, "warn")
}

func (c *quarantineCmd) run(ctx context.Context, stdout, stderr io.Writer) error {
	logger, err := c.log.logger(stderr)
	if err != nil {
		return err
	}
	if err := c.db.validate(); err != nil {
		return err
	}
	if c.action != "list" && (c.partition < 0 || c.offset < 0) {
		return fmt.Errorf("%s needs --partition and --offset of a record (see heed quarantine list)", c.action)
	}
	if c.action == "drop" && strings.TrimSpace(c.reason) == "" {
		return errors.New("drop needs --reason: say why the record will never apply (it is stored with it and shown by GetCommandResult)")
	}
	pool, err := openDB(ctx, c.db, 2, false, logger)
	if err != nil {
		return err
	}
	defer pool.Close()
	topic, p, off := c.kafka.topic, int32(c.partition), c.offset
	switch c.action {
	case "list":
		f := applier.QuarantineFilter{All: c.all}
		if c.partition >= 0 {
			f.Partition = &p
		}
		if c.key != "" {
			f.Key = []byte(c.key)
		}
		recs, err := applier.ListQuarantine(ctx, pool, topic, f)
		if err != nil {
			return err
		}
		return printQuarantine(stdout, recs, c.asJSON)
	case "show":
		r, err := applier.GetQuarantined(ctx, pool, topic, p, off)
		if errors.Is(err, pgx.ErrNoRows) {
			return fmt.Errorf("nothing in the quarantine of topic %s at partition %d offset %d (see heed quarantine list --all)", topic, p, off)
		}
		if err != nil {
			return err
		}
		return showQuarantined(stdout, r, c.asJSON)
	case "redrive", "drop":
		d, err := c.decide(ctx, pool, stderr)
		if err != nil {
			return err
		}
		if d.Note != "" {
			return fmt.Errorf("the applier reached the decision and did nothing: %s", d.Note)
		}
		did := "re-drove"
		if c.action == "drop" {
			did = fmt.Sprintf("dropped offset %d; re-drove", off)
		}
		fmt.Fprintf(stdout, "decision written to the topic at partition %d offset %d, carried out by the applier:\n", p, d.At)
		printRedrive(stdout, did, d.Result)
	}
	return nil
}

// decide writes the operator's decision to the topic, as a control record in
// the partition of the record it names, and waits for the applier to carry
// it out when it reaches it (applier.DecisionRecord): a rebuild replaying the
// topic then decides alike. It refuses, writing nothing, when the record is
// not open in the quarantine or the topic is not the projection's.
func (c *quarantineCmd) decide(ctx context.Context, pool *pgxpool.Pool, stderr io.Writer) (applier.Decision, error) {
	topicName, p, off := c.kafka.topic, int32(c.partition), c.offset
	r, err := applier.GetQuarantined(ctx, pool, topicName, p, off)
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		return applier.Decision{}, redriveError(fmt.Errorf("%w: topic %s partition %d offset %d", applier.ErrNotQuarantined, topicName, p, off))
	case err != nil:
		return applier.Decision{}, err
	case r.State != "open" || (r.Kind != "poison" && r.Kind != "parked"):
		return applier.Decision{}, redriveError(fmt.Errorf("%w: partition %d offset %d is a %s record, %s", applier.ErrNotQuarantined, p, off, r.Kind, r.State))
	}
	if c.action == "drop" {
		var env envelopev1.Envelope
		if proto.Unmarshal(r.Value, &env) == nil && applier.IsFollowUpRequestID(env.GetRequestId()) {
			return applier.Decision{}, fmt.Errorf("refusing to drop partition %d offset %d: it is a follow-up (request_id %s) another event emitted, and dropping it would skip what its domain owes when it cannot apply (a transfer's credit owes its refund); re-drive it once it can apply instead (heed quarantine redrive); nothing was changed", p, off, env.GetRequestId())
		}
	}
	cl, err := c.kafka.newClient(kgo.RecordPartitioner(kgo.ManualPartitioner()), kgo.ProducerBatchMaxBytes(maxControlBytes))
	if err != nil {
		return applier.Decision{}, err
	}
	defer cl.Close()
	if _, err := topic.Verify(ctx, pool, cl, topicName); err != nil {
		return applier.Decision{}, fmt.Errorf("refusing to write the decision: %w", err)
	}
	action := envelopev1.QuarantineAction_QUARANTINE_ACTION_REDRIVE
	if c.action == "drop" {
		action = envelopev1.QuarantineAction_QUARANTINE_ACTION_DROP
	}
	key := r.Key
	if len(key) > applier.MaxTextBytes {
		key = nil // the decision names the record by offset; the key is only for people reading the topic
	}
	rec, err := applier.DecisionRecord(topicName, key, &envelopev1.QuarantineDecision{Action: action, Partition: p, Offset: off, Reason: c.reason})
	if err != nil {
		return applier.Decision{}, err
	}
	if err := cl.ProduceSync(ctx, rec).FirstErr(); err != nil {
		return applier.Decision{}, fmt.Errorf("write the decision to topic %s: %w; nothing was changed: run it again", topicName, err)
	}
	began := time.Now()
	deadline, said := began.Add(c.wait), false
	for {
		d, found, err := applier.DecisionResult(ctx, pool, topicName, p, rec.Offset)
		if err != nil {
			return applier.Decision{}, err
		}
		if found {
			d.At = rec.Offset
			return d, nil
		}
		if !said && time.Since(began) > time.Second {
			said = true
			fmt.Fprintf(stderr, "the decision is in the topic at partition %d offset %d; waiting up to %s (--wait) for the applier to reach it\n", p, rec.Offset, c.wait)
		}
		if time.Now().After(deadline) {
			return applier.Decision{}, fmt.Errorf("no applier carried out the decision within %s (--wait): it is in the topic at partition %d offset %d and takes effect when an applier reaches it; is heed apply running? (heed quarantine list shows the record open until then)", c.wait, p, rec.Offset)
		}
		select {
		case <-ctx.Done():
			return applier.Decision{}, ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// maxControlBytes bounds a decision's record batch: a record's key is at
// most MaxTextBytes there, so this is ample.
const maxControlBytes = 1 << 20

func redriveError(err error) error {
	if errors.Is(err, applier.ErrNotQuarantined) {
		return fmt.Errorf("%w (see heed quarantine list; only open poison and parked records can be re-driven or dropped)", err)
	}
	return fmt.Errorf("%w; nothing was changed: run it again", err)
}

func printRedrive(w io.Writer, did string, res applier.RedriveResult) {
	fmt.Fprintf(w, "%s key %s: %d applied, %d duplicates, %d conflicts\n", did, quoteKey(res.Key), res.Applied, res.Duplicates, res.Conflicts)
	if res.Poison >= 0 {
		fmt.Fprintf(w, "offset %d still cannot apply: %s\n%d records stay parked behind it\n", res.Poison, res.Reason, res.Parked)
		return
	}
	fmt.Fprintln(w, "the key is released: its next records apply as they come")
}

// quarantineJSON is a quarantined record as --json prints it.
type quarantineJSON struct {
	Partition int32           `json:"partition"`
	Offset    int64           `json:"offset"`
	Kind      string          `json:"kind"`
	State     string          `json:"state"`
	Key       string          `json:"key"`
	EventID   string          `json:"event_id,omitempty"`
	Reason    string          `json:"reason"`
	Envelope  json.RawMessage `json:"envelope,omitempty"`
	ValueHex  string          `json:"value_hex,omitempty"`
	Headers   []headerJSON    `json:"headers,omitempty"`
}

// headerJSON is a record header as --json prints it.
type headerJSON struct {
	Key      string `json:"key"`
	ValueHex string `json:"value_hex"`
}

func toJSON(r applier.QuarantinedRecord, withValue bool) quarantineJSON {
	j := quarantineJSON{Partition: r.Partition, Offset: r.Offset, Kind: r.Kind, State: r.State, Key: string(r.Key), Reason: r.Reason}
	if r.EventID != nil {
		j.EventID = r.EventID.String()
	}
	if withValue {
		for _, h := range r.Headers {
			j.Headers = append(j.Headers, headerJSON{Key: h.Key, ValueHex: hex.EncodeToString(h.Value)})
		}
		if env, ok := envelopeJSON(r.Value); ok {
			j.Envelope = env
		} else {
			j.ValueHex = hex.EncodeToString(r.Value)
		}
	}
	return j
}

// envelopeJSON renders value as an envelope in JSON, payload included, if it
// is one this binary can read.
func envelopeJSON(value []byte) (json.RawMessage, bool) {
	var env envelopev1.Envelope
	if err := proto.Unmarshal(value, &env); err != nil {
		return nil, false
	}
	b, err := protojson.Marshal(&env)
	if err != nil { // e.g. a payload type this binary does not know
		env.Payload = nil
		if b, err = protojson.Marshal(&env); err != nil {
			return nil, false
		}
	}
	return b, true
}

func printQuarantine(w io.Writer, recs []applier.QuarantinedRecord, asJSON bool) error {
	if asJSON {
		out := make([]quarantineJSON, len(recs))
		for i, r := range recs {
			out[i] = toJSON(r, false)
		}
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(out)
	}
	if len(recs) == 0 {
		fmt.Fprintln(w, "the quarantine is empty")
		return nil
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "PARTITION\tOFFSET\tKIND\tSTATE\tKEY\tREASON")
	for _, r := range recs {
		fmt.Fprintf(tw, "%d\t%d\t%s\t%s\t%s\t%s\n", r.Partition, r.Offset, r.Kind, r.State, quoteKey(r.Key), r.Reason)
	}
	return tw.Flush()
}

func showQuarantined(w io.Writer, r applier.QuarantinedRecord, asJSON bool) error {
	j := toJSON(r, true)
	if asJSON {
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(j)
	}
	id := j.EventID
	if id == "" {
		id = "none (no valid envelope)"
	}
	fmt.Fprintf(w, "partition %d offset %d\nkind      %s\nstate     %s\nkey       %q\nevent id  %s\nreason    %s\n",
		j.Partition, j.Offset, j.Kind, j.State, j.Key, id, j.Reason)
	if j.Envelope != nil {
		fmt.Fprintf(w, "envelope  %s\n", j.Envelope)
	} else {
		fmt.Fprintf(w, "value     %s (hex; not an envelope this binary can read)\n", j.ValueHex)
	}
	for _, h := range j.Headers {
		fmt.Fprintf(w, "header    %q = %s (hex)\n", h.Key, h.ValueHex)
	}
	return nil
}

// listKeyBytes is how much of a key heed quarantine list and redrive print: a
// key may be a MiB long (show prints it whole).
const listKeyBytes = 64

// quoteKey quotes k, up to listKeyBytes of it.
func quoteKey(k []byte) string {
	if len(k) <= listKeyBytes {
		return fmt.Sprintf("%q", k)
	}
	return fmt.Sprintf("%q... (%d bytes)", k[:listKeyBytes], len(k))
}
