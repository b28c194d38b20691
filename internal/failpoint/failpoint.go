// Package failpoint lets the chaos tests crash or stall a heed process at a
// named point in its code. The points exist only in binaries built with the
// build tag failpoints (go build -tags failpoints); in every other build Hit
// does nothing and costs nothing.
//
// In a failpoints build, HEED_FAILPOINTS names the points to arm, separated by
// commas, each as NAME=ACTION where ACTION is
//
//	crash       kill the process with SIGKILL at the first hit (no cleanup, no flush)
//	crash@N     the same at the N-th hit
//	stall       block the goroutine that hits it, for good
//	stall@N     the same from the N-th hit on
//	stall:DUR   block for DUR (a Go duration), at every hit; stall:DUR@N from the N-th
//	fire        make Fire report true at the first hit, once; fire@N at the N-th
//
// The points (see Points): apply/after-lookup (the batch's first round trip
// done, nothing written), apply/before-commit (the batch's rows written, the
// COMMIT not sent), apply/before-commit-emits (the same, hit only by a batch
// that wrote outbox rows: follow-ups emitted), apply/after-commit (the batch committed, its offset not
// marked for commit), apply/revoke (partitions being revoked, before their
// workers stop), apply/drop-assigned (Fire: the partitions just assigned
// are handed back to the Kafka client without a start offset, so the client
// never fetches them although the group assigned them: what a broker restart
// left behind in issue 26) and ingest/after-produce (the broker acknowledged
// a command, the client not answered) and relay/after-ack (the broker
// acknowledged a run of follow-ups, the relay's position not moved past
// them).
package failpoint

// Points are the names Hit is called with.
var Points = []string{
	"apply/after-lookup",
	"apply/before-commit",
	"apply/before-commit-emits",
	"apply/after-commit",
	"apply/revoke",
	"apply/drop-assigned",
	"ingest/after-produce",
	"relay/after-ack",
}
