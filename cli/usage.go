package cli

import (
	"flag"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"
)

// flagError says what is wrong with a verb's command line, the way the docs
// spell flags (--name), with the nearest flag for an unknown one and the unit
// a bare number lacks for a duration; fs's own message would be followed by
// every flag's usage.
func flagError(fs *flag.FlagSet, v verb, err error) string {
	msg := err.Error()
	helpHint := fmt.Sprintf("run `%s help %s` for its flags", program, v.name)
	if name, ok := strings.CutPrefix(msg, "flag provided but not defined: -"); ok {
		name = strings.TrimLeft(name, "-")
		var names []string
		fs.VisitAll(func(f *flag.Flag) { names = append(names, f.Name) })
		if near := nearest(name, names); near != "" {
			return fmt.Sprintf("unknown flag --%s; did you mean --%s? (%s)", name, near, helpHint)
		}
		return fmt.Sprintf("unknown flag --%s (%s)", name, helpHint)
	}
	// "invalid value "10" for flag -x: parse error", "flag needs an argument: -x".
	for _, sep := range []string{"for flag -", "argument: -"} {
		if before, after, ok := strings.Cut(msg, sep); ok {
			name, _, _ := strings.Cut(after, ":")
			msg = before + strings.TrimSuffix(sep, "-") + "--" + after
			if f := fs.Lookup(name); f != nil {
				if value, ok := quotedValue(before); ok {
					msg += durationHint(f, value)
				}
			}
			break
		}
	}
	return msg + " (" + helpHint + ")"
}

// quotedValue is the value in `invalid value "10" `.
func quotedValue(s string) (string, bool) {
	i := strings.Index(s, `"`)
	if i < 0 {
		return "", false
	}
	v, err := strconv.Unquote(strings.TrimSpace(s[i:]))
	return v, err == nil
}

// durationHint says that a duration needs a unit when value is a bare
// number given to a duration flag, and nothing otherwise.
func durationHint(f *flag.Flag, value string) string {
	g, ok := f.Value.(flag.Getter)
	if !ok {
		return ""
	}
	if _, isDuration := g.Get().(time.Duration); !isDuration {
		return ""
	}
	if _, err := strconv.ParseFloat(value, 64); err != nil {
		return ""
	}
	return fmt.Sprintf("; a duration needs a unit: %[1]ss, %[1]sms or %[1]sm, say", value)
}

// nearest is the candidate closest to name (by edit distance, or the only
// one name is a prefix of), or "" when none is close.
func nearest(name string, candidates []string) string {
	best, bestD := "", len(name)/3+2
	var prefixed []string
	for _, c := range candidates {
		if strings.HasPrefix(c, name) && name != "" {
			prefixed = append(prefixed, c)
		}
		if d := editDistance(name, c); d < bestD {
			best, bestD = c, d
		}
	}
	if best == "" && len(prefixed) == 1 {
		return prefixed[0]
	}
	return best
}

// editDistance is the Levenshtein distance between a and b.
func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

// printFlags lists fs's flags as the docs spell them (--name), each with its
// type, usage and default.
func printFlags(fs *flag.FlagSet, w io.Writer) {
	fs.VisitAll(func(f *flag.Flag) {
		typ, usage := flag.UnquoteUsage(f)
		line := "  --" + f.Name
		if typ != "" {
			line += " " + typ
		}
		line += "\n    \t" + strings.ReplaceAll(usage, "\n", "\n    \t")
		if def := defaultText(f); def != "" {
			line += " (default " + def + ")"
		}
		fmt.Fprintln(w, line)
	})
}

// defaultText is f's default as help shows it, or "" for a zero value.
func defaultText(f *flag.Flag) string {
	switch f.DefValue {
	case "", "0", "false", "0s":
		return ""
	}
	if g, ok := f.Value.(flag.Getter); ok {
		if _, isString := g.Get().(string); isString {
			return strconv.Quote(f.DefValue)
		}
	}
	return f.DefValue
}
