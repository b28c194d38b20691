package schema_test

import (
	"errors"
	"fmt"
	"net/url"
	"strings"
	"testing"

	"github.com/heed-dev/heed/internal/testenv"
	"github.com/heed-dev/heed/schema"
)

// TestConnectErrors checks that Connect tells a database the server does
// not have from a server that does not answer, and says how to fix each.
func TestConnectErrors(t *testing.T) {
	cases := []struct {
		name        string
		url         func(testing.TB) string
		wantMissing bool
		want        []string
		wantNot     []string
	}{
		{
			name:        "missing database",
			url:         testenv.MissingDatabaseURL,
			wantMissing: true,
			want:        []string{"does not exist", "createdb -h ", "psql -h ", "-d postgres -c 'create database heedtest_missing_", "--database-url"},
			wantNot:     []string{"is Postgres running"},
		},
		{
			name: "unknown role",
			url: func(tb testing.TB) string {
				u, err := url.Parse(testenv.PostgresURL(tb))
				if err != nil {
					tb.Fatal(err)
				}
				u.User = url.User("heedtest_no_such_role")
				return u.String()
			},
			want:    []string{`refused the login of role "heedtest_no_such_role"`, "SQLSTATE 28000", "CREATE ROLE heedtest_no_such_role LOGIN", "--database-url"},
			wantNot: []string{"is Postgres running"},
		},
		{
			name: "not a Postgres URL",
			url: func(testing.TB) string {
				return "mysql://root:secret@127.0.0.1:3306/heed"
			},
			want:    []string{`scheme is "mysql"`, "postgres://user@host:port/db"},
			wantNot: []string{"secret", "mysql:xx", "root"},
		},
		{
			name: "nothing listening",
			url: func(tb testing.TB) string {
				return fmt.Sprintf("postgres://postgres@127.0.0.1:%d/heed?sslmode=disable", testenv.FreePort(tb))
			},
			want:    []string{"is Postgres running", "--database-url"},
			wantNot: []string{"does not exist"},
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			pool, err := schema.Connect(t.Context(), tc.url(t), schema.Default, 1)
			if err == nil {
				pool.Close()
				t.Fatal("Connect succeeded")
			}
			var missing *schema.MissingDatabaseError
			if got := errors.As(err, &missing); got != tc.wantMissing {
				t.Errorf("error %v: wraps a *MissingDatabaseError = %v, want %v", err, got, tc.wantMissing)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not say %q", err, w)
				}
			}
			for _, w := range tc.wantNot {
				if strings.Contains(err.Error(), w) {
					t.Errorf("error %q says %q", err, w)
				}
			}
		})
	}
}
