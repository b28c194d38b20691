// Package devstack runs the embedded development infrastructure behind
// `heed dev` and `heed broker`: a Kafka-compatible broker (franz-go's kfake
// served over real TCP, optionally persisted to disk) and a PostgreSQL
// database (a given URL, the local server on 127.0.0.1:5432, or a private
// cluster started from the PostgreSQL server binaries).
//
// A broker data directory has one owner at a time: StartBroker (or a caller,
// through LockDataDir) locks it, and a second owner is refused with a
// *DataDirInUseError naming the first.
//
// Nothing here is meant for production: the broker is a single in-process
// node and the private PostgreSQL cluster uses trust authentication on
// 127.0.0.1. Tests use the same pieces through internal/testenv.
//
// Running as root: PostgreSQL's initdb, pg_ctl and postgres refuse to run
// as root. When the process runs as root, devstack runs them as the
// "postgres" OS user instead, chowns the cluster directory to that user and,
// on Linux, grants the child processes CAP_DAC_READ_SEARCH as an ambient
// capability so that they can reach a cluster directory below root-only
// parents (for example /root/project/.heed/postgres) without loosening any
// directory permissions.
package devstack
