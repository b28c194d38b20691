// Package heed is the library a team writes its domain against, to get heed's
// listen-to-yourself pipeline without a fork: commands validated by a Connect
// service become events in Kafka, and an applier turns them into Postgres
// state exactly once, in each aggregate's order, replayable from the topic.
//
// A domain is a Domain value: its event types and how each applies (On, the
// simple form: SQL inside heed's transaction, one event at a time; or Accept
// and Batch, the fast form: load a batch's state, decide it in memory, queue
// the writes), its tables (Migrations), its Connect services (Serve: commands
// publish through Env.Publisher in one call, queries read Env.Pool after
// Env.Await) and the type of its command results (Results).
//
// A domain never sees Commit: heed records the event ID as processed, moves
// the partition's applied position and stores the command's result in the
// same transaction as the domain's writes, so a redelivered event is skipped
// and a crash loses nothing. Business refusals are results (Rejected); an
// event that can never apply is quarantined (Quarantine) and the later
// events of its key wait behind it. Apply may read one clock only, the
// record's time (Event.Time), so a replay builds the same state.
//
// Package cli turns domains into a binary with every verb heed has (dev,
// serve, apply, migrate, rebuild, audit, quarantine, topic, token,
// healthcheck):
//
//	func main() { cli.Main(booking.Domain()) }
//
// Package heedtest runs a domain against a real Postgres and an in-process
// Kafka broker in a domain's own tests. docs/DOMAINS.md builds a domain from
// scratch.
package heed
