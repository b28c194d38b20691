package cli

import (
	"testing"

	"github.com/heed-dev/heed/internal/testenv"
)

func TestMain(m *testing.M) { testenv.RunWithoutMetrics(m) }
