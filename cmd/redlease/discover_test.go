package main

import (
	"testing"

	"github.com/stretchr/testify/require"
)

func TestParseKey(t *testing.T) {
	const p = "redlease:"
	for key, want := range map[string]parsedKey{
		"redlease:queue:{emails}:ready":               {kind: kindQueue, name: "emails"},
		"redlease:queue:{a:b}:deadletters":            {kind: kindQueue, name: "a:b"},
		"redlease:queue:{emails:3}:shard:messages":    {kind: kindQueue, name: "emails", shard: 3},
		"redlease:queue:{x:y:12}:shard:ready":         {kind: kindQueue, name: "x:y", shard: 12},
		"redlease:queue:{emails}:wake":                {kind: kindQueue, name: "emails", shard: sharedQueueKey},
		"redlease:topic:{orders}:subs":                {kind: kindTopic, name: "orders"},
		"redlease:topic:{orders}:sub:billing:ready":   {kind: kindTopic, name: "orders", sub: "billing"},
		"redlease:topic:{orders}:sub:a:b:messages":    {kind: kindTopic, name: "orders", sub: "a:b"},
		"redlease:{1x}:lock:invoice:42":               {kind: kindLock, name: "invoice:42"},
		"redlease:{0}:waiters:orders":                 {kind: kindLock, name: "orders"},
		"redlease:{zz}:shared:cat{a}log":              {kind: kindLock, name: "cat{a}log"},
		"redlease:{1x}:fence":                         {},
		"redlease:{UP}:lock:x":                        {}, // not a slot tag
		"redlease:queue:{emails:x}:shard:ready":       {}, // not a shard index
		"redlease:queue:{emails:01}:shard:ready":      {},
		"redlease:queue:{emails}:":                    {},
		"redlease:queue:{}:ready":                     {},
		"redlease:queue:emails:ready":                 {},
		"other:queue:{emails}:ready":                  {},
		"redleasex:queue:{emails}:ready":              {},
		"redlease:topic:{orders}":                     {},
		"redlease:queue:{emails}:ready:extra":         {},
		"redlease:grant:abc":                          {},
		"redlease:queue:{emails:2}:shard:":            {},
		"redlease:{1x}:lock:":                         {},
		"redlease:topic:{orders}:sub:nosuffix":        {kind: kindTopic, name: "orders"},
		"redlease:topic:{orders}:trash:0b3c-uuid-ish": {kind: kindTopic, name: "orders"},
	} {
		require.Equal(t, want, parseKey(p, key), key)
	}
}

func TestCollector(t *testing.T) {
	c := newCollector("redlease")
	for _, k := range []string{
		"redlease:queue:{emails}:ready", "redlease:queue:{emails}:messages",
		"redlease:queue:{thumbs:0}:shard:ready", "redlease:queue:{thumbs:3}:shard:messages",
		"redlease:queue:{wakeonly}:wake",
		"redlease:topic:{orders}:subs", "redlease:topic:{orders}:sub:billing:ready",
		"redlease:{1x}:lock:a", "redlease:{1x}:waiters:a", "redlease:{2y}:shared:b",
		"unrelated",
	} {
		c.add(k)
	}
	inv := c.inventory(true)
	require.Equal(t, []queueRef{{"emails", 1}, {"thumbs", 4}, {"wakeonly", 2}}, inv.Queues)
	require.Equal(t, []topicRef{{Name: "orders", Subscriptions: []string{"billing"}}}, inv.Topics)
	require.Equal(t, []string{"a", "b"}, inv.Locks)
	require.True(t, inv.Truncated)
}

func TestGlob(t *testing.T) {
	require.Equal(t, `a\*b\?c\[d\]\\e`, globEscape(`a*b?c[d]\e`))
	for _, c := range []struct {
		pattern, s string
		want       bool
	}{
		{"*", "", true},
		{"*", "a/b:c", true},
		{"inv*", "invoice:42", true},
		{"inv*", "xinvoice", false},
		{"*:42", "invoice:42", true},
		{"invoice:4?", "invoice:42", true},
		{"invoice:4?", "invoice:4", false},
		{"[ab]x", "bx", true},
		{"[^ab]x", "bx", false},
		{"[a-c]x", "cx", true},
		{"[c-a]x", "bx", true},
		{`a\*`, "a*", true},
		{`a\*`, "ab", false},
		{"a**b", "ab", true},
		{"", "", true},
		{"", "a", false},
	} {
		require.Equal(t, c.want, globMatch(c.pattern, c.s), "%q %q", c.pattern, c.s)
	}
}
