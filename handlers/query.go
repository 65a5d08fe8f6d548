package handlers

import (
	"net/url"
	"strings"
)

// maxScannedQuery is the longest raw query that queryScan reads itself;
// a longer one (or one with a semicolon) goes through url.ParseQuery, so
// that its limits and refusals apply exactly.
const maxScannedQuery = 4096

// queryScan calls fn with each value of the query parameter key in raw (a
// URL's RawQuery), in order, as url.ParseQuery would give them, without
// building the map of every parameter: a request's handler asks for two
// or three, once each. fn returns false to stop.
func queryScan(raw, key string, fn func(string) bool) {
	if len(raw) > maxScannedQuery || strings.IndexByte(raw, ';') >= 0 {
		vs, _ := url.ParseQuery(raw)
		for _, v := range vs[key] {
			if !fn(v) {
				return
			}
		}
		return
	}
	for raw != "" {
		var pair string
		pair, raw, _ = strings.Cut(raw, "&")
		if pair == "" {
			continue
		}
		k, v, _ := strings.Cut(pair, "=")
		if escaped(k) {
			var err error
			if k, err = url.QueryUnescape(k); err != nil {
				continue
			}
		}
		if k != key {
			continue
		}
		if escaped(v) {
			var err error
			if v, err = url.QueryUnescape(v); err != nil {
				continue
			}
		}
		if !fn(v) {
			return
		}
	}
}

// escaped reports whether a query key or value holds an escape (% or +).
func escaped(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] == '%' || s[i] == '+' {
			return true
		}
	}
	return false
}

// queryGet is the first value of the query parameter key in raw, as
// url.Values.Get gives it ("" when there is none).
func queryGet(raw, key string) string {
	var out string
	queryScan(raw, key, func(v string) bool { out = v; return false })
	return out
}

// queryHas reports whether raw has the query parameter key.
func queryHas(raw, key string) bool {
	found := false
	queryScan(raw, key, func(string) bool { found = true; return false })
	return found
}
