package cli

import (
	"github.com/heed-dev/heed"

	"context"
	"flag"
	"fmt"
	"io"

	"github.com/heed-dev/heed/auth"
)

var tokenVerb = verb{
	name:    "token",
	summary: "make a bearer token for --auth-tokens-file (new): the token, and the line that admits it",
	example: "heed token new --name billing-service",
	new:     func(d *heed.Domain) command { return new(tokenCmd) },
	actions: []string{"new"},
}

type tokenCmd struct {
	action string
	name   string
}

func (c *tokenCmd) setAction(a string) { c.action = a }

func (c *tokenCmd) flags(fs *flag.FlagSet) {
	fs.StringVar(&c.name, "name", "", "a name for the token, written after its hash in the file line (who holds it)")
}

// run prints the token on the first line of stdout and the file line on
// the second, so that scripts can take each; what to do with them goes to
// stderr.
func (c *tokenCmd) run(_ context.Context, stdout, stderr io.Writer) error {
	token, line, err := auth.NewToken(c.name)
	if err != nil {
		return err
	}
	fmt.Fprintln(stdout, token)
	fmt.Fprintln(stdout, line)
	fmt.Fprintln(stderr, "heed token: line 1 is the token: give it to the client, it is not stored anywhere and is shown only now;")
	fmt.Fprintln(stderr, "heed token: line 2 admits it: append it to the file --auth-tokens-file names (serve reloads the file within 2 s).")
	return nil
}
