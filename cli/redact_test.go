package cli

import (
	"bytes"
	"errors"
	"strings"
	"testing"
)

// TestLogsRedactSecrets: a password in a URL (as a string or inside an
// error) and attributes named like secrets never reach the log; JSON when
// the output is not a terminal.
func TestLogsRedactSecrets(t *testing.T) {
	var buf bytes.Buffer
	l := logFlags{level: "info", format: "auto"}
	logger, err := l.logger(&buf)
	if err != nil {
		t.Fatal(err)
	}
	logger.Info("connecting", "url", "postgres://heed:hunter2@db:5432/heed", "kafka_password", "hunter3", "token", "heed_abc",
		"err", errors.New("dial postgres://heed:hunter4@db:5432/heed: refused"), "partition", 3, "consistency_token", "3:17")
	out := buf.String()
	for _, secret := range []string{"hunter2", "hunter3", "hunter4", "heed_abc"} {
		if strings.Contains(out, secret) {
			t.Errorf("the log holds %q:\n%s", secret, out)
		}
	}
	for _, want := range []string{`"msg":"connecting"`, "postgres://heed:REDACTED@db:5432/heed", `"partition":3`, `"consistency_token":"3:17"`} {
		if !strings.Contains(out, want) {
			t.Errorf("the log lacks %s:\n%s", want, out)
		}
	}
}
