// Package redistest starts and watches the Redis servers that redlease's
// tests and its benchmark harness run against: a single redis-server, a
// Redis Cluster, a Sentinel deployment, all on free loopback ports, and a
// fault-injecting TCP proxy. It also holds the tests' one poll helper, one
// skip rule and one goroutine-leak check.
//
// It does not import redlease, so redlease's own (internal) tests can use it.
package redistest
