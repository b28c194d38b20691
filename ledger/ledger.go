// Package ledger is heed's reference domain: accounts with a balance in minor
// units, opened, credited and debited by commands over Connect/gRPC.
//
// The command side (Service's OpenAccount, Deposit, Withdraw, Transfer) only
// validates a command's shape and publishes its event; the business rules (the
// account must exist, must not exist yet, no overdraft) are decided by Applier
// when the event is applied, deterministically, and recorded as the command's
// result, which GetCommandResult reads back.
//
// A transfer touches two accounts, which may live on different partitions,
// with no two-phase commit: its TransferDebited, keyed by the source, debits it
// (or is rejected) and emits the follow-up TransferCredited to the destination
// (heed writes it to the outbox in the same transaction); a credit that cannot
// apply is rejected and emits TransferRefunded back to the source, which is
// never rejected (quarantined if it cannot apply). GetCommandResult follows a
// transfer through these steps to its end.
//
// It is written on heed's public API only, as any team's domain would be:
// Domain declares it (package heed), cmd/heed runs it (package cli).
package ledger

import (
	"embed"
	"io/fs"
)

//go:embed migrations/*.sql
var migrations embed.FS

// Migrations holds the goose migrations for the ledger's tables (accounts and
// command results).
var Migrations, _ = fs.Sub(migrations, "migrations")

// Schema is every migration set the ledger pipeline needs, in the order they
// apply: heed's (the processed-event table, the applier's positions and
// quarantine, the topic identity), then the ledger's own tables.
var Schema = Domain().Sets()
