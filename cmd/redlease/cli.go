package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/redlease/redlease"
)

// Exit codes.
const (
	exitOK    = 0
	exitError = 1 // the command failed
	exitUsage = 2 // bad flags or arguments
)

// errUsage marks bad flags or arguments: exit code 2.
var errUsage = errors.New("usage")

// Defaults of the shared flags.
const (
	defaultScanLimit   = 100_000
	defaultScanTimeout = 10 * time.Second
	defaultTimeout     = 30 * time.Second
	defaultCount       = 10
)

// options are the flags every command takes.
type options struct {
	conn        connFlags
	prefix      string
	json        bool
	scanLimit   int
	scanTimeout time.Duration
	timeout     time.Duration
}

// cmdFlags are the flags of particular commands.
type cmdFlags struct {
	match  string
	shards int
	n      int
	after  string
	all    bool
	dash   dashConfig
}

// command is one subcommand.
type command struct {
	name    string
	args    string // positional arguments, for usage
	summary string
	minArgs int
	maxArgs int // -1: any
	// countN: -n is a count here, not the database (use --db).
	countN bool
	flags  func(fs *flag.FlagSet, f *cmdFlags)
	run    func(ctx context.Context, a *app, args []string) error
}

// app is what a command runs with.
type app struct {
	opts   options
	f      cmdFlags
	client redis.UniversalClient
	target string // where client points, for messages
	out    io.Writer
	errOut io.Writer
	getenv func(string) string
}

var commands = []*command{
	{name: "locks", summary: "list locks (a bounded SCAN) with their holder, TTL, fence and waiters", maxArgs: 0,
		flags: func(fs *flag.FlagSet, f *cmdFlags) {
			fs.StringVar(&f.match, "match", "*", "only lock names matching this `glob` (Redis glob syntax)")
		}, run: runLocks},
	{name: "lock", args: "KEY", summary: "inspect one lock: holder token, TTL, fence, waiters, shared holders", minArgs: 1, maxArgs: 1, run: runLock},
	{name: "queues", summary: "list queues and topics (with subscriptions) with their stats", maxArgs: 0, run: runQueues},
	{name: "queue", args: "NAME", summary: "one queue's stats (a subscription is TOPIC/SUB)", minArgs: 1, maxArgs: 1,
		flags: shardsFlag, run: runQueue},
	{name: "peek", args: "NAME", summary: "the next ready messages, without claiming them", minArgs: 1, maxArgs: 1, countN: true,
		flags: func(fs *flag.FlagSet, f *cmdFlags) {
			shardsFlag(fs, f)
			fs.IntVar(&f.n, "n", defaultCount, "how many messages (at most 1000)")
		}, run: runPeek},
	{name: "dead", args: "NAME", summary: "dead letters, oldest first", minArgs: 1, maxArgs: 1, countN: true,
		flags: func(fs *flag.FlagSet, f *cmdFlags) {
			shardsFlag(fs, f)
			fs.IntVar(&f.n, "n", defaultCount, "how many dead letters (at most 10000)")
			fs.StringVar(&f.after, "after", "", "start after the dead letter with this `ID` (the previous page's last)")
		}, run: runDead},
	{name: "retry", args: "NAME [ID...]", summary: "move dead letters back to ready (all of them with --all)", minArgs: 1, maxArgs: -1,
		flags: settleFlags, run: func(ctx context.Context, a *app, args []string) error { return runSettle(ctx, a, args, "retry") }},
	{name: "delete", args: "NAME [ID...]", summary: "delete dead letters (all of them with --all)", minArgs: 1, maxArgs: -1,
		flags: settleFlags, run: func(ctx context.Context, a *app, args []string) error { return runSettle(ctx, a, args, "delete") }},
	{name: "dash", summary: "serve the web dashboard (127.0.0.1 only by default)", maxArgs: 0,
		flags: func(fs *flag.FlagSet, f *cmdFlags) { f.dash.flags(fs) }, run: runDash},
}

func shardsFlag(fs *flag.FlagSet, f *cmdFlags) {
	fs.IntVar(&f.shards, "shards", 0, "the queue's shard count `N` (0: detect from its keys)")
}

func settleFlags(fs *flag.FlagSet, f *cmdFlags) {
	shardsFlag(fs, f)
	fs.BoolVar(&f.all, "all", false, "every dead letter of the queue (needed when no ID is given)")
}

// commonFlags adds the flags every command takes to fs, into o. With
// countN, -n is left to the command.
func commonFlags(fs *flag.FlagSet, o *options, countN bool) {
	c := &o.conn
	fs.StringVar(&c.url, "u", "", "server `URL`: redis://[user:password@]host:port[/db], rediss:// for TLS (default $REDIS_URL)")
	fs.StringVar(&c.host, "h", defaultHost, "server `host`")
	fs.IntVar(&c.port, "p", defaultPort, "server `port`")
	fs.StringVar(&c.password, "a", "", "`password`")
	fs.StringVar(&c.user, "user", "", "ACL `user` name")
	if !countN {
		fs.IntVar(&c.db, "n", 0, "database `number` (also --db)")
	}
	fs.IntVar(&c.db, "db", 0, "database `number`")
	fs.BoolVar(&c.cluster, "cluster", false, "Redis Cluster: -u, -h/-p or --cluster-addrs are seeds")
	fs.StringVar(&c.clusterAddrs, "cluster-addrs", "", "Redis Cluster seed `addresses` a:p,b:p (implies --cluster)")
	fs.StringVar(&c.sentinelMaster, "sentinel-master", "", "Sentinel: the master's `name`")
	fs.StringVar(&c.sentinelAddrs, "sentinel-addrs", "", "Sentinel: the sentinels' `addresses` a:p,b:p")
	fs.BoolVar(&c.tls, "tls", false, "connect with TLS (rediss:// URLs do)")
	fs.StringVar(&o.prefix, "prefix", redlease.DefaultPrefix, "the library's key `prefix` (WithPrefix)")
	fs.BoolVar(&o.json, "json", false, "machine output: JSON")
	fs.IntVar(&o.scanLimit, "scan-limit", defaultScanLimit, "discovery: stop after about this many keys examined (SCAN)")
	fs.DurationVar(&o.scanTimeout, "scan-timeout", defaultScanTimeout, "discovery: stop after this long")
	fs.DurationVar(&o.timeout, "timeout", defaultTimeout, "give up a command after this long (not dash)")
}

// usage writes the program's usage.
func usage(w io.Writer) {
	fmt.Fprint(w, `redlease inspects redlease locks, queues and topics in Redis.

usage: redlease [connection flags] COMMAND [ARGS] [flags]

commands:
`)
	for _, c := range commands {
		fmt.Fprintf(w, "  %-8s %-14s %s\n", c.name, c.args, c.summary)
	}
	fmt.Fprint(w, `
connection flags (any command, before or after it):
  -u URL            redis://[user:password@]host:port[/db] or rediss:// (default $REDIS_URL)
  -h HOST -p PORT   server (default 127.0.0.1 6379); -a PASSWORD, --user USER
  -n DB, --db DB    database (in peek and dead, -n is the count: use --db)
  --cluster         Redis Cluster (seeds: -u, -h/-p or --cluster-addrs a:p,b:p)
  --sentinel-master NAME --sentinel-addrs a:p,b:p   Sentinel
  --tls             TLS without a rediss:// URL
other flags: --prefix P (default redlease), --json, --scan-limit N, --scan-timeout D, --timeout D

"redlease COMMAND --help" lists a command's flags.
`)
}

// parseArgs parses flags anywhere among positional arguments.
func parseArgs(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		rest := fs.Args()
		if len(rest) == 0 {
			return pos, nil
		}
		if rest[0] == "--" {
			return append(pos, rest[1:]...), nil
		}
		pos = append(pos, rest[0])
		args = rest[1:]
	}
}

// newGlobalFlags returns the flags given before the command, into o.
func newGlobalFlags(o *options) *flag.FlagSet {
	fs := flag.NewFlagSet("redlease", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	commonFlags(fs, o, false)
	return fs
}

// run is the program: it returns the exit code.
func run(ctx context.Context, args []string, stdout, stderr io.Writer, getenv func(string) string) int {
	var opts options
	global := newGlobalFlags(&opts)
	if err := global.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			usage(stdout)
			return exitOK
		}
		fmt.Fprintf(stderr, "redlease: %v\nrun \"redlease --help\" for usage\n", err)
		return exitUsage
	}
	rest := global.Args()
	if len(rest) == 0 {
		usage(stderr)
		return exitUsage
	}
	if rest[0] == "help" {
		if len(rest) > 1 {
			rest = []string{rest[1], "--help"}
		} else {
			usage(stdout)
			return exitOK
		}
	}
	cmd := lookup(rest[0])
	if cmd == nil {
		fmt.Fprintf(stderr, "redlease: unknown command %q\nrun \"redlease --help\" for usage\n", rest[0])
		return exitUsage
	}

	// The command's own flag set: the shared flags again (merged below)
	// and its own.
	var local options
	var f cmdFlags
	fs := flag.NewFlagSet("redlease "+cmd.name, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	commonFlags(fs, &local, cmd.countN)
	if cmd.flags != nil {
		cmd.flags(fs, &f)
	}
	pos, err := parseArgs(fs, rest[1:])
	if errors.Is(err, flag.ErrHelp) {
		commandUsage(stdout, cmd, fs)
		return exitOK
	}
	if err == nil {
		err = mergeFlags(global, fs, &opts, cmd.countN)
	}
	if err == nil {
		err = checkArgs(cmd, pos, &f, &opts)
	}
	if err != nil {
		fmt.Fprintf(stderr, "redlease %s: %v\nrun \"redlease %s --help\" for usage\n", cmd.name, err, cmd.name)
		return exitUsage
	}

	client, target, err := newClient(&opts.conn, getenv)
	if err != nil {
		fmt.Fprintf(stderr, "redlease %s: %v\n", cmd.name, err)
		return exitUsage
	}
	defer client.Close()
	a := &app{opts: opts, f: f, client: client, target: target, out: stdout, errOut: stderr, getenv: getenv}
	if cmd.name != "dash" {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, opts.timeout)
		defer cancel()
	}
	if err := cmd.run(ctx, a, pos); err != nil {
		if errors.Is(err, context.DeadlineExceeded) {
			err = fmt.Errorf("%w (gave up after --timeout %v)", err, opts.timeout)
		}
		fmt.Fprintf(stderr, "redlease %s: %v\n", cmd.name, err)
		if errors.Is(err, errUsage) || errors.Is(err, redlease.ErrInvalidArgument) {
			return exitUsage
		}
		return exitError
	}
	return exitOK
}

func lookup(name string) *command {
	for _, c := range commands {
		if c.name == name {
			return c
		}
	}
	return nil
}

// mergeFlags applies the shared flags given after the command over those
// given before it, and records which connection flags were given at all.
func mergeFlags(global, local *flag.FlagSet, opts *options, countN bool) error {
	opts.conn.set = map[string]bool{}
	global.Visit(func(f *flag.Flag) { opts.conn.set[f.Name] = true })
	var err error
	local.Visit(func(f *flag.Flag) {
		if global.Lookup(f.Name) == nil || (countN && f.Name == "n") {
			return // the command's own
		}
		opts.conn.set[f.Name] = true
		if e := global.Set(f.Name, f.Value.String()); e != nil && err == nil {
			err = e
		}
	})
	if opts.conn.set["n"] {
		opts.conn.set["db"] = true
	}
	return err
}

// checkArgs checks a command's positional arguments and numbers.
func checkArgs(cmd *command, pos []string, f *cmdFlags, o *options) error {
	switch {
	case len(pos) < cmd.minArgs:
		return fmt.Errorf("%w: missing %s", errUsage, cmd.args)
	case cmd.maxArgs >= 0 && len(pos) > cmd.maxArgs:
		return fmt.Errorf("%w: unexpected argument %q", errUsage, pos[cmd.maxArgs])
	case cmd.countN && f.n < 1:
		return fmt.Errorf("%w: -n %d must be at least 1", errUsage, f.n)
	case f.shards < 0:
		return fmt.Errorf("%w: --shards %d must not be negative", errUsage, f.shards)
	case o.scanLimit < 1:
		return fmt.Errorf("%w: --scan-limit %d must be at least 1", errUsage, o.scanLimit)
	case o.scanTimeout <= 0 || o.timeout <= 0:
		return fmt.Errorf("%w: timeouts must be positive", errUsage)
	case o.prefix == "":
		return fmt.Errorf("%w: empty --prefix", errUsage)
	}
	for _, p := range pos {
		if p == "" {
			return fmt.Errorf("%w: empty argument", errUsage)
		}
	}
	return nil
}

// commandUsage writes one command's usage.
func commandUsage(w io.Writer, cmd *command, fs *flag.FlagSet) {
	fmt.Fprintf(w, "usage: redlease %s %s [flags]\n\n%s.\n\nflags:\n", cmd.name, cmd.args, cmd.summary)
	fs.SetOutput(w)
	fs.PrintDefaults()
	fs.SetOutput(io.Discard)
	if cmd.countN {
		fmt.Fprintln(w, "\nHere -n is the count: give the database with --db.")
	}
	fmt.Fprintln(w, strings.TrimRight(cmdNotes[cmd.name], "\n"))
}

// cmdNotes are extra lines of a command's usage.
var cmdNotes = map[string]string{
	"retry":  "\nWith no ID, --all is required: it retries every dead letter.",
	"delete": "\nWith no ID, --all is required: it deletes every dead letter for good.",
	"dash":   "\nThe dashboard samples queue totals every --interval for throughput; see README.md for its security model.",
}
