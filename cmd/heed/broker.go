package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"path/filepath"

	"github.com/heed-dev/heed/devstack"
)

var brokerVerb = verb{
	name:    "broker",
	summary: "run the embedded Kafka-protocol broker alone, persisted under --data-dir",
	example: "heed broker --listen 127.0.0.1:9092 --data-dir .heed",
	new:     func() command { return new(brokerCmd) },
}

type brokerCmd struct {
	listen     string
	dataDir    string
	partitions int
	log        logFlags
}

func (c *brokerCmd) flags(fs *flag.FlagSet) {
	fs.StringVar(&c.listen, "listen", devstack.DefaultBrokerListen, "address to serve the Kafka protocol on")
	fs.StringVar(&c.dataDir, "data-dir", defaultDataDir, "directory the broker persists to (in DIR/kafka), one process at a time")
	fs.IntVar(&c.partitions, "partitions", defaultPartitions, "partitions of topics created without a count")
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
	b, err := devstack.StartBroker(ctx, devstack.BrokerConfig{
		Listen:     c.listen,
		DataDir:    filepath.Join(c.dataDir, "kafka"),
		Program:    "heed broker",
		Partitions: int32(c.partitions),
		Logger:     logger,
	})
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
