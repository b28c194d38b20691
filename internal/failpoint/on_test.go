//go:build failpoints

package failpoint

import (
	"testing"
	"time"
)

func TestParse(t *testing.T) {
	ps, err := parse("apply/after-commit=crash@3, ingest/after-produce=stall:2s@2,apply/revoke=stall")
	if err != nil {
		t.Fatal(err)
	}
	if p := ps["apply/after-commit"]; !p.crash || p.at != 3 {
		t.Errorf("after-commit = %+v", p)
	}
	if p := ps["ingest/after-produce"]; p.crash || p.stall != 2*time.Second || p.at != 2 {
		t.Errorf("after-produce = %+v", p)
	}
	if p := ps["apply/revoke"]; p.crash || p.stall != 0 || p.at != 1 {
		t.Errorf("revoke = %+v", p)
	}
	if ps, err := parse("apply/drop-assigned=fire@2"); err != nil || !ps["apply/drop-assigned"].fire || ps["apply/drop-assigned"].at != 2 {
		t.Errorf("fire@2 = %+v, %v", ps["apply/drop-assigned"], err)
	}
	for _, bad := range []string{"nowhere=crash", "apply/revoke", "apply/revoke=explode", "apply/revoke=crash@0", "apply/revoke=stall:-1s"} {
		if _, err := parse(bad); err == nil {
			t.Errorf("parse(%q) succeeded", bad)
		}
	}
}
