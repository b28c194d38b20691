package cli

import (
	"github.com/heed-dev/heed"

	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"path/filepath"
	"strings"

	"github.com/heed-dev/heed/devstack"
	"github.com/heed-dev/heed/internal/netsec"
)

var brokerVerb = verb{
	name:    "broker",
	summary: "run the embedded Kafka-protocol broker alone, persisted under --data-dir",
	example: "heed broker --listen 127.0.0.1:9092 --data-dir .heed",
	new:     func(d *heed.Domain) command { return new(brokerCmd) },
}

type brokerCmd struct {
	listen     string
	dataDir    string
	partitions int
	sasl       string
	user, pass string
	tlsCert    string
	tlsKey     string
	log        logFlags
}

func (c *brokerCmd) flags(fs *flag.FlagSet) {
	fs.StringVar(&c.listen, "listen", devstack.DefaultBrokerListen, "address to serve the Kafka protocol on")
	fs.StringVar(&c.dataDir, "data-dir", defaultDataDir, "directory the broker persists to (in DIR/kafka), one process at a time")
	fs.IntVar(&c.partitions, "partitions", defaultPartitions, "partitions of topics created without a count")
	fs.StringVar(&c.sasl, "sasl", "", "require SASL: plain, scram-sha-256 or scram-sha-512, for the one user --sasl-user")
	fs.StringVar(&c.user, "sasl-user", "", "the SASL user clients log in as (a superuser)")
	fs.StringVar(&c.pass, "sasl-password", "", "the SASL user's password; prefer HEED_SASL_PASSWORD")
	fs.StringVar(&c.tlsCert, "tls-cert", "", "PEM certificate to serve the Kafka protocol over TLS with, with --tls-key")
	fs.StringVar(&c.tlsKey, "tls-key", "", "PEM key of --tls-cert")
	c.log.register(fs)
}

func (c *brokerCmd) run(ctx context.Context, stdout, stderr io.Writer) error {
	logger, err := c.log.logger(stderr)
	if err != nil {
		return err
	}
	if err := firstError(
		nonEmpty("data-dir", c.dataDir, defaultDataDir),
		atLeast("partitions", c.partitions, 1),
	); err != nil {
		return err
	}
	cfg := devstack.BrokerConfig{
		Listen:     c.listen,
		DataDir:    filepath.Join(c.dataDir, "kafka"),
		Program:    "heed broker",
		Partitions: int32(c.partitions),
		Logger:     logger,
	}
	if c.sasl != "" || c.user != "" || c.pass != "" {
		mech := map[string]string{"plain": "PLAIN", "scram-sha-256": "SCRAM-SHA-256", "scram-sha-512": "SCRAM-SHA-512"}[strings.ToLower(c.sasl)]
		if mech == "" || c.user == "" || c.pass == "" {
			return errors.New("--sasl needs a mechanism (plain, scram-sha-256 or scram-sha-512), --sasl-user and --sasl-password (or HEED_SASL_PASSWORD)")
		}
		cfg.Users = []devstack.SASLUser{{Mechanism: mech, User: c.user, Password: c.pass}}
	}
	if c.tlsCert != "" || c.tlsKey != "" {
		tlsCfg, err := netsec.ServerTLS(c.tlsCert, c.tlsKey, "")
		if err != nil {
			return err
		}
		cfg.TLS = tlsCfg
	}
	b, err := devstack.StartBroker(ctx, cfg)
	if err != nil {
		return brokerError(err, "--listen")
	}
	defer b.Close()
	fmt.Fprintf(stdout, "broker listening on %s, data in %s (Ctrl-C stops it)\n", b.Addrs()[0], filepath.Join(c.dataDir, "kafka"))
	<-ctx.Done()
	return nil
}

// brokerError says what to change in the verb's own flags when the
// embedded broker cannot start: listenFlag sets the broker's address
// (--listen in heed broker, --broker-listen in heed dev) and --data-dir its
// directory. Other errors are returned as they are.
func brokerError(err error, listenFlag string) error {
	var inUse *devstack.DataDirInUseError
	if errors.As(err, &inUse) {
		return fmt.Errorf("%s: stop it, or pass another --data-dir", inUse.Problem())
	}
	var le *devstack.ListenError
	if errors.As(err, &le) {
		if le.InUse() {
			return fmt.Errorf("%s; stop it, or pass %s with a free address", le.Problem(), listenFlag)
		}
		return fmt.Errorf("%s; pass %s with a host:port this machine can bind, e.g. %s", le.Problem(), listenFlag, devstack.DefaultBrokerListen)
	}
	return err
}
