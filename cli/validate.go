package cli

import (
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/heed-dev/heed/ingest"
	"github.com/heed-dev/heed/schema"
)

// Every verb checks all of its configuration before it starts anything, so
// bad configuration stops it at once with a message naming the flag, never
// after a banner or with something half started. The checks below are the
// flags' own; the packages' Config.Validate run after them (see each verb's
// validate).

// atLeast checks an integer flag's lower bound.
func atLeast(flag string, v, min int) error {
	if v < min {
		return fmt.Errorf("--%s %d: must be at least %d", flag, v, min)
	}
	return nil
}

// notNegative checks a duration flag for which 0 means "none".
func notNegative(flag string, d time.Duration) error {
	if d < 0 {
		return fmt.Errorf("--%s %s: must be 0 or more", flag, d)
	}
	return nil
}

// positive checks a duration flag that bounds a wait.
func positive(flag string, d time.Duration) error {
	if d <= 0 {
		return fmt.Errorf("--%s %s: must be more than 0, e.g. 5s", flag, d)
	}
	return nil
}

// nonEmpty checks a string flag that must be set.
func nonEmpty(flag, v, example string) error {
	if v == "" {
		return fmt.Errorf("--%s is empty: pass one, e.g. --%s %s", flag, flag, example)
	}
	return nil
}

// firstError returns the first non-nil error.
func firstError(errs ...error) error {
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}

// validate requires --database-url and checks it and --schema.
func (d *dbFlags) validate() error {
	if d.url == "" {
		return errors.New("no database: pass --database-url postgres://user@host:5432/db (or set HEED_DATABASE_URL)")
	}
	return d.validateIfSet()
}

// validateIfSet checks --schema, and --database-url if it is set.
func (d *dbFlags) validateIfSet() error {
	if err := schema.Validate(d.schema); err != nil {
		return fmt.Errorf("--schema: %w", err)
	}
	if d.url == "" {
		return nil
	}
	if _, err := schema.PoolConfig(d.url, d.schema, 0); err != nil {
		return fmt.Errorf("--database-url: %w", err)
	}
	return nil
}

// validateBatch checks the batch limits and the apply concurrency.
func (a *applyFlags) validateBatch() error {
	return firstError(
		atLeast("batch-records", a.batchRecords, 1),
		atLeast("batch-bytes", a.batchBytes, 1),
		notNegative("batch-linger", a.batchLinger),
		atLeast("apply-concurrency", a.concurrency, 1),
		notNegative("group-session-timeout", a.sessionTimeout),
		notNegative("group-rebalance-timeout", a.rebalanceTimeout),
	)
}

func (s *serveFlags) validate() error {
	if err := firstError(
		atLeast("partitions", s.partitions, 1),
		notNegative("produce-linger", s.produceLinger),
		positive("produce-timeout", s.produceTimeout),
		positive("read-wait-max", s.readWaitMax),
		atLeast("max-request-bytes", s.maxRequestBytes, 1024),
		positive("shutdown-timeout", s.shutdownTimeout),
	); err != nil {
		return err
	}
	if err := ingest.ValidateOrigins(s.corsList()); err != nil {
		return fmt.Errorf("--cors-allowed-origins: %w", err)
	}
	return validateCompression(s.compression)
}

// validateCompression checks --compression alone, so that the message names
// the flag.
func validateCompression(name string) error {
	if err := (&ingest.Config{Brokers: []string{"-"}, Topic: "-", Compression: name}).Validate(); err != nil {
		return fmt.Errorf("--compression: %w", err)
	}
	return nil
}

// validateRetention checks --retention and --retention-interval (and
// --group-protocol).
func (a *applyFlags) validateRetention() error {
	if a.groupProtocol != "classic" && a.groupProtocol != "consumer" {
		return fmt.Errorf("--group-protocol %q: use classic or consumer", a.groupProtocol)
	}
	if a.retention < 0 {
		return fmt.Errorf("--retention %v: use 0 to keep processed events forever, or a positive duration such as 168h", a.retention)
	}
	if a.retention > 0 && a.retention < time.Hour {
		return fmt.Errorf("--retention %v: under an hour, a client retrying later than that would have its command applied again; use at least 1h (default 168h), or 0 to keep them forever", a.retention)
	}
	return positive("retention-interval", a.retentionInterval)
}

// corsNeedsTokens refuses --cors-allowed-origins '*' on a server without
// tokens: every web page a user opens could send it commands (a loopback
// heed dev included: the browser runs on the same machine).
func corsNeedsTokens(s serveFlags, a authFlags) error {
	if a.tokensFile == "" && slices.Contains(s.corsList(), "*") {
		return errors.New("--cors-allowed-origins '*' without --auth-tokens-file: any web page a browser on a client machine opens could send this server commands; name the pages' origins (https://app.example.com), or turn tokens on")
	}
	return nil
}
