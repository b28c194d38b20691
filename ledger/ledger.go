// Package ledger is heed's reference domain: accounts with a balance in minor
// units, opened, credited and debited by commands over Connect/gRPC.
//
// The command side (Service's OpenAccount, Deposit, Withdraw) only validates a
// command's shape and publishes its event; the business rules (the account must
// exist, must not exist yet, no overdraft) are decided by Applier when the event
// is applied, deterministically, and recorded as the command's result, which
// GetCommandResult reads back.
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
