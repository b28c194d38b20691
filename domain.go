package heed

import (
	"errors"
	"fmt"
	"io/fs"
	"regexp"
	"sort"

	"github.com/heed-dev/heed/applier"
	"github.com/heed-dev/heed/dedup"
	"github.com/heed-dev/heed/envelope"
	"github.com/heed-dev/heed/schema"
	"github.com/heed-dev/heed/topic"
)

// Domain is what a team brings to heed: its events and how they apply, its
// tables, its Connect services and its defaults. Build one with NewDomain,
// register its events with On (the simple form) or Accept and Batch (the
// batched form), its services with Serve, and run it with cli.Main.
//
// A Domain is configured once, before it runs; it is not safe to change it
// concurrently.
type Domain struct {
	name       string
	topic      string
	group      string
	schema     string
	migrations fs.FS
	ids        envelope.IDSpace
	result     ResultType
	banner     func(addr string) string
	services   []ServiceFunc
	validate   bool

	events map[string]*eventType
	order  []string
	batch  BatchHandler
	err    error
}

var namePattern = regexp.MustCompile(`^[a-z][a-z0-9_]{0,30}$`)

// NewDomain starts a domain named name (lower case letters, digits and _,
// starting with a letter: it names the domain's defaults and its flag value
// in a binary with several domains). Defaults, each changed by an Option:
// topic "<name>.events", consumer group "<name>-applier", Postgres schema
// name, event IDs in a space of the domain's own, and every event checked
// against its protovalidate rules when it is read from the topic.
func NewDomain(name string, opts ...Option) *Domain {
	d := &Domain{
		name:     name,
		topic:    name + ".events",
		group:    name + "-applier",
		schema:   name,
		ids:      envelope.Space(name),
		validate: true,
		events:   make(map[string]*eventType),
	}
	if !namePattern.MatchString(name) {
		d.fail(fmt.Errorf("domain name %q must match %s", name, namePattern))
	}
	for _, o := range opts {
		o(d)
	}
	return d
}

// Option configures a Domain.
type Option func(*Domain)

// Topic sets the domain's default event topic (--topic overrides it).
func Topic(name string) Option { return func(d *Domain) { d.topic = name } }

// Group sets the domain's default consumer group (--group overrides it).
func Group(name string) Option { return func(d *Domain) { d.group = name } }

// Schema sets the domain's default Postgres schema (--schema overrides it).
func Schema(name string) Option { return func(d *Domain) { d.schema = name } }

// Migrations gives the domain's goose SQL migrations (files named
// 00001_name.sql, with -- +goose Up/Down sections), applied by heed migrate
// after heed's own tables, in the domain's schema.
func Migrations(fsys fs.FS) Option { return func(d *Domain) { d.migrations = fsys } }

// Banner sets what heed dev prints after it starts, given the server's
// address: commands a new user can paste.
func Banner(f func(addr string) string) Option { return func(d *Domain) { d.banner = f } }

// NoValidation skips the protovalidate rules of events read from the topic:
// for a domain whose handlers check every event themselves (the reference
// ledger does, by hand, for speed). Without it a record breaking its event
// type's rules is quarantined before any handler sees it.
func NoValidation() Option { return func(d *Domain) { d.validate = false } }

// LegacyEventIDs derives event IDs as heed did before domains had ID spaces
// of their own (a request ID that is a UUID is the event ID; others map to a
// UUIDv5 in heed's namespace). Only the reference ledger uses it, to keep its
// existing topics' IDs; two domains with it share one space.
func LegacyEventIDs() Option { return func(d *Domain) { d.ids = envelope.LegacySpace() } }

// Name is the domain's name.
func (d *Domain) Name() string { return d.name }

// DefaultTopic, DefaultGroup and DefaultSchema are the domain's defaults for
// --topic, --group and --schema.
func (d *Domain) DefaultTopic() string  { return d.topic }
func (d *Domain) DefaultGroup() string  { return d.group }
func (d *Domain) DefaultSchema() string { return d.schema }

// IDs is the domain's event ID space: the event ID of a request ID.
func (d *Domain) IDs() envelope.IDSpace { return d.ids }

// BannerText is what heed dev prints for the domain once it serves on addr;
// "" for none.
func (d *Domain) BannerText(addr string) string {
	if d.banner == nil {
		return ""
	}
	return d.banner(addr)
}

// Sets is every migration set the domain's projection needs, in the order
// they apply: heed's processed events, applier positions and quarantine, and
// topic identity, then the domain's own.
func (d *Domain) Sets() []schema.Migrations {
	sets := []schema.Migrations{
		{Name: "dedup", FS: dedup.Migrations},
		{Name: "applier", FS: applier.Migrations},
		{Name: "topic", FS: topic.Migrations},
	}
	if d.migrations != nil {
		sets = append(sets, schema.Migrations{Name: d.name, FS: d.migrations})
	}
	return sets
}

// Check reports what is wrong with the domain's configuration: no events, a
// handler of both forms, an event type registered twice, a bad name.
func (d *Domain) Check() error {
	if d.err != nil {
		return fmt.Errorf("domain %s: %w", d.name, d.err)
	}
	if len(d.events) == 0 {
		return fmt.Errorf("domain %s: no event types: register them with heed.On (or heed.Accept and heed.Batch)", d.name)
	}
	simple, accepted := 0, 0
	for _, e := range d.events {
		if e.apply != nil {
			simple++
		} else {
			accepted++
		}
	}
	switch {
	case simple > 0 && (accepted > 0 || d.batch != nil):
		return fmt.Errorf("domain %s: both forms used: apply every event with heed.On, or accept them all with heed.Accept and apply them with heed.Batch", d.name)
	case accepted > 0 && d.batch == nil:
		return fmt.Errorf("domain %s: events accepted with heed.Accept but no heed.Batch handler applies them", d.name)
	}
	return nil
}

// EventTypes lists the fully qualified protobuf names of the domain's
// events, sorted.
func (d *Domain) EventTypes() []string {
	out := append([]string(nil), d.order...)
	sort.Strings(out)
	return out
}

func (d *Domain) fail(err error) {
	d.err = errors.Join(d.err, err)
}
