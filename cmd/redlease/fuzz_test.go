package main

import (
	"testing"
)

// FuzzParseKey: no key panics the parser, and a queue, topic or lock it
// reports has a name.
func FuzzParseKey(f *testing.F) {
	for _, k := range []string{"redlease:queue:{a}:ready", "redlease:queue:{a:1}:shard:ready", "redlease:topic:{t}:sub:s:ready",
		"redlease:{1x}:lock:n", "redlease:{", "redlease:queue:{", "redlease:queue:{a:}:shard:x", "redlease:topic:{}:"} {
		f.Add(k)
	}
	f.Fuzz(func(t *testing.T, key string) {
		p := parseKey("redlease:", key)
		if p.kind != kindNone && p.name == "" {
			t.Fatalf("%q: %+v without a name", key, p)
		}
		if p.kind == kindQueue && p.shard < sharedQueueKey {
			t.Fatalf("%q: shard %d", key, p.shard)
		}
	})
}

// FuzzGlob: no pattern panics the matcher, and a pattern of plain bytes
// (escaped) matches exactly itself.
func FuzzGlob(f *testing.F) {
	for _, p := range []string{"*", "a?b", "[a-", "[^]x", `\`, "[", "a[b-a]*"} {
		f.Add(p, "abc")
	}
	f.Fuzz(func(t *testing.T, pattern, s string) {
		_ = globMatch(pattern, s)
		if !globMatch(globEscape(s), s) {
			t.Fatalf("escaped %q does not match itself", s)
		}
		if globMatch(globEscape(s), s+"x") {
			t.Fatalf("escaped %q matches more", s)
		}
	})
}
