package redlease

import (
	"strconv"
	"time"
)

// shard is one part of a queue, under its own {hash tag}: the keys every
// queue script takes, by name.
type shard struct {
	index     int
	ready     string // list of ids, claimed from the head
	delayed   string // sorted set: id -> due time (ms, Redis clock)
	inflight  string // sorted set: id -> claim deadline (ms, Redis clock)
	messages  string // hash: "p"..id -> payload, "s"..id -> state, "c"..token -> id of a live claim, "d"..id -> dead letter
	dead      string // sorted set: id of a dead letter -> when it died (ms)
	marker    string // sorted set with at most one member: "there may be work"
	reclaimer string // string: held while one consumer reclaims the shard
	done      string // sorted set: request token -> when it was done (ms)
	unique    string // sorted set: id WithUniqueFor keeps taken -> when it is free (ms)
	keys      []string
}

// doneMemory is how long a shard remembers the tokens of the enqueues and
// settled claims it has done, so that a request go-redis sends again after
// a lost reply finds its work done instead of doing it twice or reporting
// a false error. It outlasts go-redis's retries with default timeouts.
const doneMemory = 30 * time.Second

// newShard lays out shard i of n of queue name. One shard lives under the
// tag {name}; shard i of several under {name:i} with a ":shard:" part, so
// that no shard shares a key with a one-shard queue named "name:i".
func newShard(prefix, name string, i, n int) *shard {
	base := prefix + ":queue:{" + name + "}:"
	if n > 1 {
		base = prefix + ":queue:{" + name + ":" + strconv.Itoa(i) + "}:shard:"
	}
	return shardAt(i, base)
}

// shardAt names a shard's keys base + what each holds.
func shardAt(i int, base string) *shard {
	s := &shard{
		index: i, ready: base + "ready", delayed: base + "delayed", inflight: base + "inflight",
		messages: base + "messages", dead: base + "deadletters", marker: base + "marker",
		reclaimer: base + "reclaimer", done: base + "done", unique: base + "unique",
	}
	// The order of lua/queue.lua's KEYS.
	s.keys = []string{s.ready, s.delayed, s.inflight, s.messages, s.dead, s.marker, s.reclaimer, s.done, s.unique}
	return s
}

// topicBase is where the keys of topic name live: all under the tag
// {name}, apart from every queue's keys.
func topicBase(prefix, name string) string { return prefix + ":topic:{" + name + "}:" }

// newSubscriptionShard lays out subscription sub of topic: one shard under
// the topic's tag, whose keys end with the topic's shared payloads (the
// tenth key of lua/queue.lua). Suffixes have no ':', so a key's last ':'
// part names it and no two subscriptions share a key.
func newSubscriptionShard(prefix, topic, sub string) *shard {
	s := shardAt(0, topicBase(prefix, topic)+"sub:"+sub+":")
	s.keys = append(s.keys, topicBase(prefix, topic)+"payloads")
	return s
}
