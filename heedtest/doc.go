// Package heedtest tests a heed domain against the real things, in the
// domain's own Go tests: a PostgreSQL server and a Kafka broker running in
// the test's process (franz-go's kfake, over TCP).
//
// CheckReplay checks the property a domain must have for heed to work: the
// topic is the truth, so the state built live (through applier restarts,
// random batch sizes and pauses) equals the state a rebuild replays from the
// topic, table by table. It generates command streams, and shrinks a failing
// one to the few commands that still fail:
//
//	func TestReplay(t *testing.T) {
//		heedtest.CheckReplay(t, ledger.Domain(), func(r *rand.Rand) []heedtest.Command {
//			var stream []heedtest.Command
//			for i := range 40 {
//				acct := fmt.Sprintf("a%d", r.IntN(4))
//				var ev proto.Message = &ledgerv1.AccountOpened{AccountId: acct}
//				if r.IntN(3) > 0 {
//					ev = &ledgerv1.FundsWithdrawn{AccountId: acct, Amount: 1 + r.Int64N(9)}
//				}
//				stream = append(stream, heedtest.Command{
//					Key: acct, RequestID: fmt.Sprintf("r%d", i), Event: ev,
//					At: time.Duration(i) * time.Minute, // record time: Event.Time
//				})
//			}
//			return stream
//		})
//	}
//
// Start runs the domain as `heed dev` does, in-process, for tests of its
// services: point the domain's Connect client at Server.URL, read its
// tables through Server.Pool; Publish and Await drive the applier alone.
//
// Both need a PostgreSQL server whose user may create databases:
// $HEED_TEST_DATABASE_URL, by default
// postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable (for instance
// docker run -d -p 5432:5432 -e POSTGRES_HOST_AUTH_METHOD=trust postgres).
// Without one the test is skipped, and fails when the environment has
// CI=true, with the same message, so that CI never passes by skipping. Each
// call makes a database of its own and drops it when the test ends.
// HEED_TEST_LOG=warn (or info, debug) shows more of heed's log in the test's
// output.
package heedtest
