//go:build !failpoints

package failpoint

// Enabled reports whether this binary was built with failpoints.
const Enabled = false

// Hit does nothing: this binary was built without failpoints.
func Hit(string) {}

// Fire reports false: this binary was built without failpoints.
func Fire(string) bool { return false }
