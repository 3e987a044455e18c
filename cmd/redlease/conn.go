package main

import (
	"fmt"
	"net"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// Connection defaults, as redis-cli's.
const (
	defaultHost  = "127.0.0.1"
	defaultPort  = 6379
	dialTimeout  = 5 * time.Second
	ioTimeout    = 5 * time.Second
	redisURLEnv  = "REDIS_URL"
	clusterNoDBs = 0 // a Redis Cluster has database 0 only
)

// connFlags are the connection flags, named after redis-cli's.
type connFlags struct {
	url            string
	host           string
	port           int
	password       string
	user           string
	db             int
	cluster        bool
	clusterAddrs   string
	sentinelMaster string
	sentinelAddrs  string
	tls            bool
	set            map[string]bool // flags given on the command line
}

// given says whether flag name was on the command line.
func (c *connFlags) given(name string) bool { return c.set[name] }

// newClient builds the client the flags describe, and says where it
// points, for messages. REDIS_URL (from getenv) is used when neither -u
// nor -h/-p is given. Nothing is dialled yet.
func newClient(c *connFlags, getenv func(string) string) (redis.UniversalClient, string, error) {
	hostGiven := c.given("h") || c.given("p")
	url := c.url
	if url == "" && !hostGiven && !c.given("cluster-addrs") && !c.given("sentinel-addrs") {
		url = getenv(redisURLEnv)
	}
	switch {
	case c.url != "" && hostGiven:
		return nil, "", fmt.Errorf("%w: give -u or -h/-p, not both", errUsage)
	case c.cluster && c.sentinelMaster != "":
		return nil, "", fmt.Errorf("%w: --cluster and --sentinel-master exclude each other", errUsage)
	case c.port < 1 || c.port > 65535:
		return nil, "", fmt.Errorf("%w: port %d out of range", errUsage, c.port)
	case c.db < 0:
		return nil, "", fmt.Errorf("%w: database %d must not be negative", errUsage, c.db)
	}
	hostPort := net.JoinHostPort(c.host, strconv.Itoa(c.port))
	switch {
	case c.sentinelMaster != "":
		return newFailover(c, url, hostPort)
	case c.cluster || c.clusterAddrs != "":
		return newCluster(c, url, hostPort)
	}
	var opt *redis.Options
	if url != "" {
		o, err := redis.ParseURL(url)
		if err != nil {
			return nil, "", fmt.Errorf("%w: -u: %w", errUsage, err)
		}
		opt = o
	} else {
		opt = &redis.Options{Addr: hostPort}
	}
	if c.given("a") {
		opt.Password = c.password
	}
	if c.given("user") {
		opt.Username = c.user
	}
	if c.given("n") || c.given("db") {
		opt.DB = c.db
	}
	if c.tls && opt.TLSConfig == nil {
		opt.TLSConfig = tlsFor(opt.Addr)
	}
	setTimeouts(&opt.DialTimeout, &opt.ReadTimeout, &opt.WriteTimeout)
	opt.ContextTimeoutEnabled = true // --timeout and --scan-timeout cut a hung read short
	return redis.NewClient(opt), fmt.Sprintf("%s db %d", opt.Addr, opt.DB), nil
}

// newCluster builds a Cluster client seeded by the URL (with ?addr=
// parameters for more seeds), --cluster-addrs, or -h/-p.
func newCluster(c *connFlags, url, hostPort string) (redis.UniversalClient, string, error) {
	if c.db != clusterNoDBs {
		return nil, "", fmt.Errorf("%w: a Redis Cluster has database 0 only", errUsage)
	}
	var opt *redis.ClusterOptions
	switch {
	case c.clusterAddrs != "":
		opt = &redis.ClusterOptions{Addrs: splitAddrs(c.clusterAddrs)}
		if url != "" && c.url != "" {
			return nil, "", fmt.Errorf("%w: give -u or --cluster-addrs, not both", errUsage)
		}
	case url != "":
		o, err := redis.ParseClusterURL(url)
		if err != nil {
			return nil, "", fmt.Errorf("%w: -u: %w", errUsage, err)
		}
		opt = o
	default:
		opt = &redis.ClusterOptions{Addrs: []string{hostPort}}
	}
	if len(opt.Addrs) == 0 {
		return nil, "", fmt.Errorf("%w: no cluster address", errUsage)
	}
	if c.given("a") {
		opt.Password = c.password
	}
	if c.given("user") {
		opt.Username = c.user
	}
	if c.tls && opt.TLSConfig == nil {
		opt.TLSConfig = tlsFor(opt.Addrs[0])
	}
	setTimeouts(&opt.DialTimeout, &opt.ReadTimeout, &opt.WriteTimeout)
	opt.ContextTimeoutEnabled = true // --timeout and --scan-timeout cut a hung read short
	return redis.NewClusterClient(opt), "cluster " + strings.Join(opt.Addrs, ","), nil
}

// newFailover builds a Sentinel-backed client for the master named by
// --sentinel-master, asking the sentinels of --sentinel-addrs, or of the
// URL (whose user and password are the sentinels'), or of -h/-p.
func newFailover(c *connFlags, url, hostPort string) (redis.UniversalClient, string, error) {
	var opt *redis.FailoverOptions
	switch {
	case c.sentinelAddrs != "":
		opt = &redis.FailoverOptions{SentinelAddrs: splitAddrs(c.sentinelAddrs)}
	case url != "":
		o, err := redis.ParseFailoverURL(url)
		if err != nil {
			return nil, "", fmt.Errorf("%w: -u: %w", errUsage, err)
		}
		opt = o
	case c.given("h") || c.given("p"):
		opt = &redis.FailoverOptions{SentinelAddrs: []string{hostPort}}
	default:
		return nil, "", fmt.Errorf("%w: --sentinel-master needs --sentinel-addrs (or -u, -h/-p of a sentinel)", errUsage)
	}
	if len(opt.SentinelAddrs) == 0 {
		return nil, "", fmt.Errorf("%w: no sentinel address", errUsage)
	}
	opt.MasterName = c.sentinelMaster
	if c.given("a") {
		opt.Password = c.password
	}
	if c.given("user") {
		opt.Username = c.user
	}
	if c.given("n") || c.given("db") {
		opt.DB = c.db
	}
	if c.tls && opt.TLSConfig == nil {
		opt.TLSConfig = tlsFor(opt.SentinelAddrs[0])
	}
	setTimeouts(&opt.DialTimeout, &opt.ReadTimeout, &opt.WriteTimeout)
	opt.ContextTimeoutEnabled = true // --timeout and --scan-timeout cut a hung read short
	desc := fmt.Sprintf("sentinel master %s via %s db %d", opt.MasterName, strings.Join(opt.SentinelAddrs, ","), opt.DB)
	return redis.NewFailoverClient(opt), desc, nil
}

// splitAddrs splits "a,b" into addresses, dropping blanks.
func splitAddrs(s string) []string {
	var out []string
	for a := range strings.SplitSeq(s, ",") {
		if a = strings.TrimSpace(a); a != "" {
			out = append(out, a)
		}
	}
	return out
}

// setTimeouts fills timeouts a URL did not set.
func setTimeouts(dial, read, write *time.Duration) {
	if *dial == 0 {
		*dial = dialTimeout
	}
	if *read == 0 {
		*read = ioTimeout
	}
	if *write == 0 {
		*write = ioTimeout
	}
}
