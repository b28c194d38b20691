package netsec_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/heed-dev/heed/devstack"
	"github.com/heed-dev/heed/internal/netsec"
	"github.com/heed-dev/heed/internal/testenv"
)

// roundTrip produces a record to a fresh topic and reads it back through a
// client with opts, or returns the first error.
func roundTrip(t *testing.T, addr string, opts []kgo.Opt) error {
	t.Helper()
	return roundTripWithin(t, addr, opts, 10*time.Second)
}

// refused is roundTrip for a client that should be refused: a refused
// client retries until its deadline, so it gets a short one.
func refused(t *testing.T, addr string, opts []kgo.Opt) bool {
	t.Helper()
	return roundTripWithin(t, addr, opts, 1500*time.Millisecond) != nil
}

func roundTripWithin(t *testing.T, addr string, opts []kgo.Opt, within time.Duration) error {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), within)
	defer cancel()
	cl, err := kgo.NewClient(append([]kgo.Opt{kgo.SeedBrokers(addr), kgo.AllowAutoTopicCreation(),
		kgo.DefaultProduceTopic("sec"), kgo.ConsumeTopics("sec"), kgo.RequestRetries(1)}, opts...)...)
	if err != nil {
		return err
	}
	defer cl.Close()
	if err := cl.ProduceSync(ctx, &kgo.Record{Value: []byte("hello")}).FirstErr(); err != nil {
		return err
	}
	fs := cl.PollFetches(ctx)
	if err := fs.Err(); err != nil {
		return err
	}
	if fs.NumRecords() == 0 {
		return context.DeadlineExceeded
	}
	return nil
}

// TestKafkaSASLSCRAM: a broker with SCRAM-SHA-256 on admits the client with
// the right password and refuses the wrong one and none.
func TestKafkaSASLSCRAM(t *testing.T) {
	for _, mech := range []struct{ broker, flag string }{{"SCRAM-SHA-256", "scram-sha-256"}, {"SCRAM-SHA-512", "scram-sha-512"}, {"PLAIN", "plain"}} {
		t.Run(mech.flag, func(t *testing.T) {
			b, err := devstack.StartBroker(t.Context(), devstack.BrokerConfig{Listen: "127.0.0.1:0",
				Users: []devstack.SASLUser{{Mechanism: mech.broker, User: "heed", Password: "s3cret"}}})
			if err != nil {
				t.Fatal(err)
			}
			defer b.Close()
			good, err := netsec.Kafka{SASL: mech.flag, User: "heed", Password: "s3cret"}.Opts()
			if err != nil {
				t.Fatal(err)
			}
			if err := roundTrip(t, b.Addrs()[0], good); err != nil {
				t.Errorf("with the right password: %v", err)
			}
			bad, _ := netsec.Kafka{SASL: mech.flag, User: "heed", Password: "wrong"}.Opts()
			if !refused(t, b.Addrs()[0], bad) {
				t.Errorf("with a wrong password: admitted")
			}
			if !refused(t, b.Addrs()[0], nil) {
				t.Errorf("without SASL: admitted")
			}
		})
	}
}

// TestKafkaTLS: a broker serving TLS is reached by a client trusting its CA,
// not by one that trusts only the system's roots.
func TestKafkaTLS(t *testing.T) {
	certs := testenv.MakeCerts(t)
	srv, err := netsec.ServerTLS(certs.Cert, certs.Key, "")
	if err != nil {
		t.Fatal(err)
	}
	b, err := devstack.StartBroker(t.Context(), devstack.BrokerConfig{Listen: "127.0.0.1:0", TLS: srv})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	opts, err := netsec.Kafka{TLS: true, CA: certs.CA}.Opts()
	if err != nil {
		t.Fatal(err)
	}
	if err := roundTrip(t, b.Addrs()[0], opts); err != nil {
		t.Errorf("trusting the broker's CA: %v", err)
	}
	system, _ := netsec.Kafka{TLS: true}.Opts()
	if !refused(t, b.Addrs()[0], system) {
		t.Errorf("trusting only the system's roots: connected to a broker whose CA it does not know")
	}
}

// TestServerTLSReload: a renewed certificate written over the files is served
// from the next handshake on (after the once-a-second check), without a
// restart; with a client CA, a client without a certificate is refused.
func TestServerTLSReload(t *testing.T) {
	certs := testenv.MakeCerts(t)
	cfg, err := netsec.ServerTLS(certs.Cert, certs.Key, "")
	if err != nil {
		t.Fatal(err)
	}
	ln, err := tls.Listen("tcp", "127.0.0.1:0", cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { _ = c.(*tls.Conn).Handshake(); c.Close() }()
		}
	}()
	dial := func(caFile string) error {
		pem, err := os.ReadFile(caFile)
		if err != nil {
			t.Fatal(err)
		}
		pool := x509.NewCertPool()
		pool.AppendCertsFromPEM(pem)
		c, err := tls.DialWithDialer(&net.Dialer{Timeout: 2 * time.Second}, "tcp", ln.Addr().String(), &tls.Config{RootCAs: pool, ServerName: "127.0.0.1"})
		if err == nil {
			c.Close()
		}
		return err
	}
	if err := dial(certs.CA); err != nil {
		t.Fatalf("first certificate: %v", err)
	}
	newCA := testenv.ReissueServer(t, certs)
	testenv.Eventually(t, 5*time.Second, func() string {
		if err := dial(newCA); err != nil {
			return "the renewed certificate is not served yet: " + err.Error()
		}
		return ""
	})
	if err := dial(certs.CA); err == nil {
		t.Errorf("the old certificate is still served")
	}

	mtls, err := netsec.ServerTLS(certs.Cert, certs.Key, certs.CA)
	if err != nil {
		t.Fatal(err)
	}
	if mtls.ClientAuth != tls.RequireAndVerifyClientCert || mtls.ClientCAs == nil {
		t.Errorf("--client-ca does not require client certificates")
	}
	if _, err := netsec.ServerTLS(certs.Cert, certs.Key, certs.Cert+".missing"); err == nil || !strings.Contains(err.Error(), "--client-ca") {
		t.Errorf("a missing client CA: %v, want an error naming --client-ca", err)
	}
}
