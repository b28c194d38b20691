// Package netsec builds heed's TLS configurations (the server's, reloaded
// when its files change; the Kafka client's) and Kafka SASL options.
package netsec

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/sasl/plain"
	"github.com/twmb/franz-go/pkg/sasl/scram"
)

// ServerTLS is a server TLS configuration whose certificate is read from
// certFile and keyFile and read again when either changes (checked at most
// once a second, on a handshake), so that a renewed certificate is served
// without a restart. With clientCA, clients must present a certificate that
// CA signed (mutual TLS).
func ServerTLS(certFile, keyFile, clientCA string) (*tls.Config, error) {
	if certFile == "" || keyFile == "" {
		return nil, fmt.Errorf("TLS needs both --tls-cert and --tls-key")
	}
	r := &reloader{certFile: certFile, keyFile: keyFile}
	if err := r.load(); err != nil {
		return nil, err
	}
	cfg := &tls.Config{MinVersion: tls.VersionTLS12, GetCertificate: r.get}
	if clientCA != "" {
		pool, err := loadPool(clientCA)
		if err != nil {
			return nil, fmt.Errorf("--client-ca: %w", err)
		}
		cfg.ClientCAs, cfg.ClientAuth = pool, tls.RequireAndVerifyClientCert
	}
	return cfg, nil
}

type reloader struct {
	certFile, keyFile string
	mu                sync.Mutex
	cert              *tls.Certificate
	certMod, keyMod   time.Time
	checked           time.Time
}

func (r *reloader) load() error {
	cfi, err := os.Stat(r.certFile)
	if err != nil {
		return fmt.Errorf("--tls-cert: %w", err)
	}
	kfi, err := os.Stat(r.keyFile)
	if err != nil {
		return fmt.Errorf("--tls-key: %w", err)
	}
	cert, err := tls.LoadX509KeyPair(r.certFile, r.keyFile)
	if err != nil {
		return fmt.Errorf("load --tls-cert %s and --tls-key %s: %w", r.certFile, r.keyFile, err)
	}
	r.cert, r.certMod, r.keyMod = &cert, cfi.ModTime(), kfi.ModTime()
	return nil
}

func (r *reloader) get(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if time.Since(r.checked) >= time.Second {
		r.checked = time.Now()
		cfi, cerr := os.Stat(r.certFile)
		kfi, kerr := os.Stat(r.keyFile)
		if cerr == nil && kerr == nil && (!cfi.ModTime().Equal(r.certMod) || !kfi.ModTime().Equal(r.keyMod)) {
			_ = r.load() // a half-written pair keeps the certificate served before; the next check tries again
		}
	}
	return r.cert, nil
}

func loadPool(file string) (*x509.CertPool, error) {
	pem, err := os.ReadFile(file)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("%s holds no PEM certificate", file)
	}
	return pool, nil
}

// Kafka is how heed reaches the brokers: TLS (with a CA to trust instead of
// the system's, and a client certificate) and SASL.
type Kafka struct {
	TLS            bool
	CA, Cert, Key  string
	SASL           string // "", plain, scram-sha-256, scram-sha-512
	User, Password string
}

// Mechanisms are the SASL mechanisms Kafka.SASL may name.
var Mechanisms = []string{"plain", "scram-sha-256", "scram-sha-512"}

// Validate says what to change in k.
func (k Kafka) Validate() error {
	if (k.CA != "" || k.Cert != "" || k.Key != "") && !k.TLS {
		return fmt.Errorf("--kafka-ca, --kafka-cert and --kafka-key need --kafka-tls")
	}
	if (k.Cert == "") != (k.Key == "") {
		return fmt.Errorf("a Kafka client certificate needs both --kafka-cert and --kafka-key")
	}
	switch strings.ToLower(k.SASL) {
	case "":
		if k.User != "" || k.Password != "" {
			return fmt.Errorf("--kafka-user and --kafka-password need --kafka-sasl (one of %s)", strings.Join(Mechanisms, ", "))
		}
	case "plain", "scram-sha-256", "scram-sha-512":
		if k.User == "" || k.Password == "" {
			return fmt.Errorf("--kafka-sasl %s needs --kafka-user and --kafka-password (or HEED_KAFKA_PASSWORD)", k.SASL)
		}
	default:
		return fmt.Errorf("--kafka-sasl %q: use one of %s", k.SASL, strings.Join(Mechanisms, ", "))
	}
	return nil
}

// Opts are the Kafka client options for k.
func (k Kafka) Opts() ([]kgo.Opt, error) {
	if err := k.Validate(); err != nil {
		return nil, err
	}
	var opts []kgo.Opt
	if k.TLS {
		cfg := &tls.Config{MinVersion: tls.VersionTLS12}
		if k.CA != "" {
			pool, err := loadPool(k.CA)
			if err != nil {
				return nil, fmt.Errorf("--kafka-ca: %w", err)
			}
			cfg.RootCAs = pool
		}
		if k.Cert != "" {
			cert, err := tls.LoadX509KeyPair(k.Cert, k.Key)
			if err != nil {
				return nil, fmt.Errorf("load --kafka-cert and --kafka-key: %w", err)
			}
			cfg.Certificates = []tls.Certificate{cert}
		}
		opts = append(opts, kgo.DialTLSConfig(cfg))
	}
	switch strings.ToLower(k.SASL) {
	case "plain":
		opts = append(opts, kgo.SASL(plain.Auth{User: k.User, Pass: k.Password}.AsMechanism()))
	case "scram-sha-256":
		opts = append(opts, kgo.SASL(scram.Auth{User: k.User, Pass: k.Password}.AsSha256Mechanism()))
	case "scram-sha-512":
		opts = append(opts, kgo.SASL(scram.Auth{User: k.User, Pass: k.Password}.AsSha512Mechanism()))
	}
	return opts, nil
}
