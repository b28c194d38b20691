package cli

import (
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/heed-dev/heed"
)

// domainFlag names the domain a verb runs in a binary with several.
const domainFlag = "domain"

// checkDomains refuses a binary without a domain, or whose domains would
// collide: a name, a default topic, group or schema shared.
func checkDomains(domains []*heed.Domain) error {
	if len(domains) == 0 {
		return errors.New("no domain: call cli.Main with at least one *heed.Domain")
	}
	seen := map[string]string{}
	for _, d := range domains {
		if d == nil {
			return errors.New("a nil *heed.Domain was given to cli.Main")
		}
		for _, k := range []struct{ what, v string }{{"name", d.Name()}, {"topic", d.DefaultTopic()}, {"group", d.DefaultGroup()}, {"schema", d.DefaultSchema()}} {
			key := k.what + "=" + k.v
			if other, ok := seen[key]; ok {
				return fmt.Errorf("domains %s and %s share the %s %q: give one of them its own (heed.%s)", other, d.Name(), k.what, k.v, optionName(k.what))
			}
			seen[key] = d.Name()
		}
	}
	for _, d := range domains {
		if err := d.Check(); err != nil {
			return err
		}
	}
	return nil
}

func optionName(what string) string {
	switch what {
	case "topic":
		return "Topic"
	case "group":
		return "Group"
	case "schema":
		return "Schema"
	}
	return "NewDomain"
}

func domainNames(domains []*heed.Domain) []string {
	out := make([]string, len(domains))
	for i, d := range domains {
		out[i] = d.Name()
	}
	return out
}

// chooseDomain is the domain args (--domain NAME, --domain=NAME) or
// HEED_DOMAIN name; the only one when there is one.
func chooseDomain(domains []*heed.Domain, args []string) (*heed.Domain, error) {
	if len(domains) == 1 {
		return domains[0], nil
	}
	name, given := os.LookupEnv(envName(domainFlag))
	for i, a := range args {
		if a == "--" {
			break
		}
		t := strings.TrimLeft(a, "-")
		if len(t) == len(a) || len(a)-len(t) > 2 {
			continue
		}
		if v, ok := strings.CutPrefix(t, domainFlag+"="); ok {
			name, given = v, true
		} else if t == domainFlag && i+1 < len(args) {
			name, given = args[i+1], true
		}
	}
	if !given {
		return nil, fmt.Errorf("this binary runs %d domains (%s): say which with --domain or HEED_DOMAIN", len(domains), strings.Join(domainNames(domains), ", "))
	}
	for _, d := range domains {
		if d.Name() == name {
			return d, nil
		}
	}
	return nil, fmt.Errorf("unknown domain %q: this binary runs %s", name, strings.Join(domainNames(domains), ", "))
}
