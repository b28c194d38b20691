package cli

import (
	"github.com/heed-dev/heed"

	"context"
	"flag"
	"fmt"
	"io"
	"net/http"
	"time"
)

var healthcheckVerb = verb{
	name:    "healthcheck",
	summary: "exit 0 when a heed process's /healthz answers 200 (a container HEALTHCHECK without curl)",
	example: "heed healthcheck --health-url http://127.0.0.1:9464/healthz",
	new:     func(d *heed.Domain) command { return new(healthcheckCmd) },
}

type healthcheckCmd struct {
	url     string
	timeout time.Duration
}

func (c *healthcheckCmd) flags(fs *flag.FlagSet) {
	fs.StringVar(&c.url, "health-url", "http://127.0.0.1:9464/healthz", "the /healthz (or /readyz) to ask, on the process's --metrics-listen")
	fs.DurationVar(&c.timeout, "timeout", 3*time.Second, "how long to wait for the answer")
}

func (c *healthcheckCmd) run(ctx context.Context, stdout, _ io.Writer) error {
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.url, nil)
	if err != nil {
		return fmt.Errorf("--health-url %q: %w", c.url, err)
	}
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("%s: %w (is the process up, and --metrics-listen serving there?)", c.url, err)
	}
	defer res.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(res.Body, 4096))
	if res.StatusCode != http.StatusOK {
		return fmt.Errorf("%s answered %s: %s", c.url, res.Status, body)
	}
	fmt.Fprintf(stdout, "%s", body)
	return nil
}
