package handlers

import (
	"bufio"
	"bytes"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

// readAll reads p from since on until nothing is left: what each event
// read was (seq, source, name, payload, and, when cached, its frame)
// and how many were lost.
func readAll(t *testing.T, p reader, since uint64) ([]string, uint64) {
	t.Helper()
	var got []string
	var lost uint64
	for range 100000 {
		ev, next, l := p.read(since)
		lost += l
		if ev == nil {
			if next == since {
				return got, lost
			}
			since = next
			continue
		}
		var data bytes.Buffer
		if err := ev.pieces(false, func(b []byte) { data.Write(b) }); err != nil {
			t.Fatal(err)
		}
		got = append(got, fmt.Sprintf("%d %s %s %d:%.20s", ev.Seq, ev.Source, ev.Name, data.Len(), data.String()))
		if ev.cached != nil {
			var want bytes.Buffer
			bw := bufio.NewWriter(&want)
			if err := writeSSE(bw, ev, p.envelope); err != nil {
				t.Fatal(err)
			}
			bw.Flush()
			if f := ev.cached.sseFrame(); !bytes.Equal(f, want.Bytes()) {
				t.Fatalf("event %d: cached frame\n%q\nwritten\n%q", ev.Seq, f, want.Bytes())
			}
			want.Reset()
			bw.Reset(&want)
			if err := writeEventJSON(bw, ev); err != nil {
				t.Fatal(err)
			}
			bw.Flush()
			if j := ev.cachedJSON(); !bytes.Equal(j, want.Bytes()) {
				t.Fatalf("event %d: cached JSON\n%q\nwritten\n%q", ev.Seq, j, want.Bytes())
			}
		}
		ev.close()
		since = next
	}
	t.Fatal("the reads never end")
	return nil, 0
}

// TestReadCacheReadsAsTheRing: read through a handler's cache, streams
// with different filters get what each would read from the ring itself
// (large and blob payloads, which the cache does not keep, included),
// twice, and the cached frames are the ones written otherwise.
func TestReadCacheReadsAsTheRing(t *testing.T) {
	app := newTestApp(t)
	first := post(t, app, "p", "e", "one")
	post(t, app, "q", "f", map[string]int{"two": 2})
	post(t, app, "p", "g", strings.Repeat("l", 20<<10))  // too large to keep
	post(t, app, "q", "e", strings.Repeat("b", 100<<10)) // in a blob file
	post(t, app, "p", "e", "multi\nline\r\ntext")
	for _, envelope := range []bool{false, true} {
		var rc readCache
		for _, keep := range []func(string, string) bool{
			nil,
			filter{sources: []string{"p"}}.match,
			filter{events: []string{"e"}}.match,
			filter{sources: []string{"none"}}.match,
		} {
			direct := reader{bus: app.bus, keep: keep}
			want, wantLost := readAll(t, direct, first)
			cached := reader{bus: app.bus, keep: keep, cache: &rc, envelope: envelope}
			for pass := range 2 {
				got, lost := readAll(t, cached, first)
				if strings.Join(got, "\n") != strings.Join(want, "\n") || lost != wantLost {
					t.Fatalf("envelope %v, pass %d: through the cache\n%s\nlost %d; from the ring\n%s\nlost %d", envelope, pass, strings.Join(got, "\n"), lost, strings.Join(want, "\n"), wantLost)
				}
			}
		}
	}
}

// TestReadCacheLost: events the ring no longer holds are counted through
// the cache as from the ring.
func TestReadCacheLost(t *testing.T) {
	app := newTestApp(t)
	first := postPastRing(t, app)
	var rc readCache
	want, wantLost := readAll(t, reader{bus: app.bus}, first)
	got, lost := readAll(t, reader{bus: app.bus, cache: &rc}, first)
	if lost == 0 || lost != wantLost || len(got) != len(want) {
		t.Fatalf("through the cache: %d events, %d lost; from the ring: %d, %d", len(got), lost, len(want), wantLost)
	}
}

// deadlines counts the write deadlines set on a response.
type deadlines struct {
	httptest.ResponseRecorder
	set []time.Time
}

func (d *deadlines) SetWriteDeadline(t time.Time) error {
	d.set = append(d.set, t)
	return nil
}

// TestDeadlineWriterMovesRarely: the deadline is set once for many
// writes, each left at least write_timeout, and moved again when less is
// left.
func TestDeadlineWriterMovesRarely(t *testing.T) {
	const timeout = 8 * time.Second
	rec := &deadlines{ResponseRecorder: *httptest.NewRecorder()}
	dw, done := newDeadlineWriter(rec, timeout, nil)
	for range 100 {
		start := time.Now()
		if _, err := dw.Write([]byte("x")); err != nil {
			t.Fatal(err)
		}
		if err := dw.Flush(); err != nil {
			t.Fatal(err)
		}
		if last := rec.set[len(rec.set)-1]; last.Sub(start) < timeout {
			t.Fatalf("a write was left %v", last.Sub(start))
		}
	}
	if len(rec.set) != 1 {
		t.Fatalf("the deadline was set %d times for 100 writes", len(rec.set))
	}
	dw.deadline = time.Now().Add(timeout / 2) // as if time had passed
	start := time.Now()
	dw.Write([]byte("x"))
	if len(rec.set) != 2 || rec.set[1].Sub(start) < timeout {
		t.Fatalf("deadlines set: %v", rec.set)
	}
	done()
}

// TestPastIdleWriter: a stream of HTTP/1 writes past Caddy's idle write
// timeout when it wraps the response directly, and through it otherwise.
func TestPastIdleWriter(t *testing.T) {
	inner := httptest.NewRecorder()
	iw := &caddyhttp.IdleTimeoutWriter{ResponseWriterWrapper: &caddyhttp.ResponseWriterWrapper{ResponseWriter: inner}}
	r1 := httptest.NewRequest(http.MethodGet, "/", nil)
	if got := pastIdleWriter(iw, r1); got != http.ResponseWriter(inner) {
		t.Fatalf("HTTP/1: %T", got)
	}
	r2 := httptest.NewRequest(http.MethodGet, "/", nil)
	r2.ProtoMajor = 2
	if got := pastIdleWriter(iw, r2); got != http.ResponseWriter(iw) {
		t.Fatalf("HTTP/2: %T", got)
	}
	other := &caddyhttp.ResponseWriterWrapper{ResponseWriter: iw}
	if got := pastIdleWriter(other, r1); got != http.ResponseWriter(other) {
		t.Fatalf("another wrapper above: %T", got)
	}
}
