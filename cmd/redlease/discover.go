package main

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
)

// scanCount is SCAN's COUNT: the keys Redis looks at per call.
const scanCount = 1000

// inventory is what a scan found under a prefix.
type inventory struct {
	Queues    []queueRef `json:"queues"`
	Topics    []topicRef `json:"topics"`
	Locks     []string   `json:"locks"`
	Truncated bool       `json:"truncated"` // the scan stopped at --scan-limit or --scan-timeout
}

// queueRef is a queue found by its keys.
type queueRef struct {
	Name   string `json:"name"`
	Shards int    `json:"shards"` // the highest shard seen + 1: an empty last shard is not seen
}

// topicRef is a topic found by its keys, with subscriptions seen in them.
type topicRef struct {
	Name          string   `json:"name"`
	Subscriptions []string `json:"subscriptions"`
}

// collector sorts keys into an inventory as a scan finds them.
type collector struct {
	prefix string
	mu     sync.Mutex
	queues map[string]int // name -> shards
	topics map[string]map[string]bool
	locks  map[string]bool
}

func newCollector(prefix string) *collector {
	return &collector{prefix: prefix + ":", queues: map[string]int{}, topics: map[string]map[string]bool{}, locks: map[string]bool{}}
}

// keyKind is what a key belongs to.
type keyKind int

const (
	kindNone keyKind = iota
	kindQueue
	kindTopic
	kindLock
)

// parsedKey is what the key layout says of one key.
type parsedKey struct {
	kind  keyKind
	name  string // queue, topic or lock name
	shard int    // a queue's shard index; -1: a sharded queue's own key (wake)
	sub   string // a topic key's subscription, if any
}

// Shard index of a key that is a sharded queue's but no shard's.
const sharedQueueKey = -1

// parseKey reads a key by the library's layout (see the README's key
// tables), after prefix + ":":
//
//	queue:{NAME}:SUFFIX              a one-shard queue
//	queue:{NAME:i}:shard:SUFFIX      shard i of a sharded queue
//	queue:{NAME}:wake                a sharded queue's wake-up key
//	topic:{T}:SUFFIX, topic:{T}:sub:SUB:SUFFIX   a topic, a subscription
//	{TAG}:lock:NAME, {TAG}:waiters:NAME, {TAG}:shared:NAME   a lock
func parseKey(prefix, key string) parsedKey {
	rest, ok := strings.CutPrefix(key, prefix)
	if !ok {
		return parsedKey{}
	}
	switch {
	case strings.HasPrefix(rest, "queue:{"):
		tag, after, ok := cutTag(rest[len("queue:"):])
		if !ok || tag == "" {
			return parsedKey{}
		}
		if suffix, sharded := strings.CutPrefix(after, "shard:"); sharded && suffix != "" {
			i := strings.LastIndexByte(tag, ':')
			n, err := strconv.Atoi(tag[i+1:])
			if i < 1 || err != nil || n < 0 || strconv.Itoa(n) != tag[i+1:] {
				return parsedKey{}
			}
			return parsedKey{kind: kindQueue, name: tag[:i], shard: n}
		}
		if after == "wake" {
			return parsedKey{kind: kindQueue, name: tag, shard: sharedQueueKey}
		}
		if after == "" || strings.Contains(after, ":") {
			return parsedKey{}
		}
		return parsedKey{kind: kindQueue, name: tag}
	case strings.HasPrefix(rest, "topic:{"):
		tag, after, ok := cutTag(rest[len("topic:"):])
		if !ok || tag == "" || after == "" {
			return parsedKey{}
		}
		p := parsedKey{kind: kindTopic, name: tag}
		if sub, ok := strings.CutPrefix(after, "sub:"); ok {
			if i := strings.LastIndexByte(sub, ':'); i > 0 {
				p.sub = sub[:i]
			}
		}
		return p
	case strings.HasPrefix(rest, "{"):
		tag, after, ok := cutTag(rest)
		if !ok || !isSlotTag(tag) {
			return parsedKey{}
		}
		for _, part := range []string{"lock:", "waiters:", "shared:"} {
			if name, ok := strings.CutPrefix(after, part); ok && name != "" {
				return parsedKey{kind: kindLock, name: name}
			}
		}
	}
	return parsedKey{}
}

// cutTag splits "{tag}:rest".
func cutTag(s string) (tag, rest string, ok bool) {
	if !strings.HasPrefix(s, "{") {
		return "", "", false
	}
	end := strings.IndexByte(s, '}')
	if end < 0 || !strings.HasPrefix(s[end+1:], ":") {
		return "", "", false
	}
	return s[1:end], s[end+2:], true
}

// isSlotTag says whether tag looks like a lock key's slot tag: base 36.
func isSlotTag(tag string) bool {
	if tag == "" {
		return false
	}
	for _, r := range tag {
		if !(r >= '0' && r <= '9' || r >= 'a' && r <= 'z') {
			return false
		}
	}
	return true
}

// add sorts one key in.
func (c *collector) add(key string) {
	p := parseKey(c.prefix, key)
	c.mu.Lock()
	defer c.mu.Unlock()
	switch p.kind {
	case kindQueue:
		n := c.queues[p.name]
		switch {
		case p.shard == sharedQueueKey:
			n = max(n, 2) // sharded: at least two
		default:
			n = max(n, p.shard+1)
		}
		c.queues[p.name] = n
	case kindTopic:
		subs := c.topics[p.name]
		if subs == nil {
			subs = map[string]bool{}
			c.topics[p.name] = subs
		}
		if p.sub != "" {
			subs[p.sub] = true
		}
	case kindLock:
		c.locks[p.name] = true
	}
}

// inventory returns what was collected, sorted.
func (c *collector) inventory(truncated bool) inventory {
	c.mu.Lock()
	defer c.mu.Unlock()
	inv := inventory{Truncated: truncated, Queues: []queueRef{}, Topics: []topicRef{}, Locks: []string{}}
	for name, n := range c.queues {
		inv.Queues = append(inv.Queues, queueRef{Name: name, Shards: n})
	}
	slices.SortFunc(inv.Queues, func(a, b queueRef) int { return strings.Compare(a.Name, b.Name) })
	for name, subs := range c.topics {
		t := topicRef{Name: name, Subscriptions: []string{}}
		for s := range subs {
			t.Subscriptions = append(t.Subscriptions, s)
		}
		slices.Sort(t.Subscriptions)
		inv.Topics = append(inv.Topics, t)
	}
	slices.SortFunc(inv.Topics, func(a, b topicRef) int { return strings.Compare(a.Name, b.Name) })
	for name := range c.locks {
		inv.Locks = append(inv.Locks, name)
	}
	slices.Sort(inv.Locks)
	return inv
}

// globEscape quotes the glob characters of s for SCAN MATCH.
func globEscape(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ { // bytes, not runes: keys need not be UTF-8
		if strings.IndexByte(`*?[]\`, s[i]) >= 0 {
			b.WriteByte('\\')
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// scanner is a bounded SCAN over every master.
type scanner struct {
	limit   int64         // keys examined (COUNT per call) before stopping
	timeout time.Duration // time before stopping
}

// errScanLimit stops a scan at its limit.
var errScanLimit = errors.New("scan limit reached")

// scan calls found with every key matching pattern, on every master of a
// Cluster or on the one server; it reports truncated when it stopped at
// its limit or timeout before the end. It never runs KEYS.
func (s scanner) scan(ctx context.Context, c redis.UniversalClient, pattern string, found func(string)) (truncated bool, err error) {
	sctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	var examined, answered atomic.Int64 // keys examined; SCAN replies received
	node := func(ctx context.Context, n redis.Cmdable) error {
		var cursor uint64
		for {
			if examined.Load() >= s.limit {
				return errScanLimit
			}
			keys, next, err := n.Scan(ctx, cursor, pattern, scanCount).Result()
			if err != nil {
				return err
			}
			answered.Add(1)
			examined.Add(scanCount)
			for _, k := range keys {
				found(k)
			}
			if next == 0 {
				return nil
			}
			cursor = next
		}
	}
	switch cc := c.(type) {
	case *redis.ClusterClient:
		err = cc.ForEachMaster(sctx, func(ctx context.Context, m *redis.Client) error { return node(ctx, m) })
	case *redis.Ring:
		err = cc.ForEachShard(sctx, func(ctx context.Context, sh *redis.Client) error { return node(ctx, sh) })
	default:
		err = node(sctx, c)
	}
	switch {
	case err == nil:
		return false, nil
	case errors.Is(err, errScanLimit):
		return true, nil
	case ctx.Err() == nil && sctx.Err() != nil && answered.Load() > 0:
		return true, nil // the scan's own timeout, after some of it was read
	}
	return false, fmt.Errorf("scan %s: %w", pattern, err)
}

// discover scans the keys under prefix and sorts them into an inventory.
func discover(ctx context.Context, c redis.UniversalClient, prefix string, s scanner) (inventory, error) {
	col := newCollector(prefix)
	truncated, err := s.scan(ctx, c, globEscape(prefix)+":*", col.add)
	if err != nil {
		return inventory{}, err
	}
	return col.inventory(truncated), nil
}
