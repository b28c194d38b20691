package devstack

// ResolvePostgresWithLocal exposes resolvePostgres so tests can point the
// "local server" step at an address where nothing listens.
var ResolvePostgresWithLocal = resolvePostgres
