package handlers

import (
	"mime"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"testing"
)

func TestQueryScan(t *testing.T) {
	long := strings.Repeat("a=1&", maxScannedQuery/4) + "source=long"
	for _, raw := range []string{
		"",
		"source=a",
		"source=a&event=b&source=c",
		"source=a,b&source=&source",
		"&&source=x&&",
		"so%75rce=x&source=y",
		"source=a%20b&source=a+b",
		"source=%zz&source=ok",
		"%zz=1&source=ok",
		"source=x;event=y&source=z",
		"event=1&source=a=b",
		long,
	} {
		want, _ := url.ParseQuery(raw)
		for _, key := range []string{"source", "event", "a", "missing"} {
			var got []string
			queryScan(raw, key, func(v string) bool { got = append(got, v); return true })
			if !slices.Equal(got, want[key]) {
				t.Errorf("queryScan(%.40q, %q) = %q, want %q", raw, key, got, want[key])
			}
			if g, w := queryGet(raw, key), want.Get(key); g != w {
				t.Errorf("queryGet(%.40q, %q) = %q, want %q", raw, key, g, w)
			}
			if g, w := queryHas(raw, key), want.Has(key); g != w {
				t.Errorf("queryHas(%.40q, %q) = %v, want %v", raw, key, g, w)
			}
		}
	}
}

func TestMediaType(t *testing.T) {
	for _, ct := range []string{
		"", "application/json", "text/plain", "application/x-ndjson", "application/jsonl", "application/cloudevents+json",
		"Application/JSON", "application/json; charset=utf-8", " application/json", "application/json ",
		"text", "text/", "/json", "a/b/c", "a b/c+json", "text/plain;", "application/vnd.api+json", "x/y\x00",
		"application/*", "é/json",
	} {
		r, _ := http.NewRequest("POST", "/", nil)
		if ct != "" {
			r.Header.Set("Content-Type", ct)
		}
		want, _, _ := mime.ParseMediaType(ct)
		if got := mediaType(r); got != want {
			t.Errorf("mediaType(%q) = %q, want %q", ct, got, want)
		}
	}
}
