package testenv

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// Certs are PEM files a test made: a CA, and a server certificate and key it
// signed for 127.0.0.1 and localhost; ClientCert and ClientKey are a client
// certificate it signed (for mutual TLS).
type Certs struct {
	CA, Cert, Key, ClientCert, ClientKey string
}

// MakeCerts writes a fresh CA, and server and client certificates it signed,
// under a temp dir.
func MakeCerts(tb testing.TB) Certs {
	tb.Helper()
	dir := tb.TempDir()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		tb.Fatal(err)
	}
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "heed test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature, BasicConstraintsValid: true,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		tb.Fatal(err)
	}
	ca, err := x509.ParseCertificate(caDER)
	if err != nil {
		tb.Fatal(err)
	}
	c := Certs{CA: filepath.Join(dir, "ca.pem")}
	writePEM(tb, c.CA, "CERTIFICATE", caDER)
	c.Cert, c.Key = issue(tb, dir, "server", ca, caKey, 2, x509.ExtKeyUsageServerAuth)
	c.ClientCert, c.ClientKey = issue(tb, dir, "client", ca, caKey, 3, x509.ExtKeyUsageClientAuth)
	return c
}

// ReissueServer writes a server certificate from a new CA over c's (a
// renewal) and returns the new CA's file: a client that trusts only it
// tells that the server presents the new certificate.
func ReissueServer(tb testing.TB, c Certs) string {
	tb.Helper()
	n := MakeCerts(tb)
	for _, p := range [][2]string{{n.Cert, c.Cert}, {n.Key, c.Key}} {
		data, err := os.ReadFile(p[0])
		if err != nil {
			tb.Fatal(err)
		}
		if err := os.WriteFile(p[1], data, 0o600); err != nil {
			tb.Fatal(err)
		}
	}
	return n.CA
}

func issue(tb testing.TB, dir, name string, ca *x509.Certificate, caKey *ecdsa.PrivateKey, serial int64, usage x509.ExtKeyUsage) (string, string) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		tb.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: "heed test " + name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{usage},
		DNSNames: []string{"localhost"}, IPAddresses: []net.IP{net.ParseIP("127.0.0.1")},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		tb.Fatal(err)
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		tb.Fatal(err)
	}
	certPath, keyPath := filepath.Join(dir, name+".pem"), filepath.Join(dir, name+"-key.pem")
	writePEM(tb, certPath, "CERTIFICATE", der)
	writePEM(tb, keyPath, "EC PRIVATE KEY", keyDER)
	return certPath, keyPath
}

func writePEM(tb testing.TB, path, typ string, der []byte) {
	tb.Helper()
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
		tb.Fatal(err)
	}
}
