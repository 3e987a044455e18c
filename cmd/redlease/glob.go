package main

// globMatch reports whether s matches pattern in Redis's glob syntax, as
// SCAN MATCH and KEYS read it: * any run, ? one byte, [abc], [^a], [a-z],
// and \ quoting the next byte. Unlike path.Match, * also matches '/'.
func globMatch(pattern, s string) bool {
	// One pass with backtracking to the last '*' only: time linear in
	// len(pattern) × len(s) at worst, however many stars.
	p, i := 0, 0
	star, mark := -1, 0 // the pattern after the last '*', and where in s it matched from
	for i < len(s) || p < len(pattern) {
		if p < len(pattern) {
			switch pattern[p] {
			case '*':
				star, mark = p+1, i
				p++
				continue
			case '?':
				if i < len(s) {
					p, i = p+1, i+1
					continue
				}
			case '[':
				if i < len(s) {
					if ok, rest := matchClass(pattern[p+1:], s[i]); ok {
						p, i = len(pattern)-len(rest), i+1
						continue
					}
				}
			default:
				c, next := pattern[p], p+1
				if c == '\\' && next < len(pattern) {
					c, next = pattern[next], next+1
				}
				if i < len(s) && s[i] == c {
					p, i = next, i+1
					continue
				}
			}
		}
		if star < 0 || mark >= len(s) {
			return false
		}
		mark++ // the last '*' takes one more byte
		p, i = star, mark
	}
	return true
}

// matchClass matches c against the class that p opens (after '['), and
// returns the pattern after the class's ']' (or its end, as Redis does).
func matchClass(p string, c byte) (bool, string) {
	not := len(p) > 0 && p[0] == '^'
	if not {
		p = p[1:]
	}
	match := false
	for len(p) > 0 && p[0] != ']' {
		switch {
		case p[0] == '\\' && len(p) > 1:
			match = match || p[1] == c
			p = p[2:]
		case len(p) > 2 && p[1] == '-' && p[2] != ']':
			lo, hi := p[0], p[2]
			if lo > hi {
				lo, hi = hi, lo
			}
			match = match || (c >= lo && c <= hi)
			p = p[3:]
		default:
			match = match || p[0] == c
			p = p[1:]
		}
	}
	if len(p) > 0 {
		p = p[1:] // the ']'
	}
	return match != not, p
}
