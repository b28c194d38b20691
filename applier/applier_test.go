package applier_test

import (
	"strings"
	"testing"

	"github.com/heed-dev/heed/applier"
)

func TestNewRejectsIncompleteConfig(t *testing.T) {
	_, err := applier.New(applier.Config{}, nil, nil)
	if err == nil {
		t.Fatal("New accepted an empty Config")
	}
	for _, flag := range []string{"--brokers", "--topic", "--group"} {
		if !strings.Contains(err.Error(), flag) {
			t.Errorf("error %q does not say to set %s", err, flag)
		}
	}
}
