package handlers

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"

	"github.com/ipcbus/caddy-ipcbus/events"
)

func TestWriteSSE(t *testing.T) {
	for _, c := range []struct{ data, want string }{
		{"", "id: 7\nevent: e\ndata: \n\n"},
		{"plain", "id: 7\nevent: e\ndata: plain\n\n"},
		{`{"a": 1}`, "id: 7\nevent: e\ndata: {\"a\": 1}\n\n"},
		{"two\nlines", "id: 7\nevent: e\ndata: two\ndata: lines\n\n"},
		{"crlf\r\nand\rcr\n", "id: 7\nevent: e\ndata: crlf\ndata: and\ndata: cr\ndata: \n\n"},
	} {
		var b bytes.Buffer
		bw := bufio.NewWriter(&b)
		writeSSE(bw, &event{Event: &events.Event{Seq: 7, Name: "e", Data: []byte(c.data)}}, false)
		bw.Flush()
		if b.String() != c.want {
			t.Errorf("%q: %q, want %q", c.data, b.String(), c.want)
		}
	}
}

func TestFilter(t *testing.T) {
	f := filter{sources: []string{"app.*", "chat"}, events: []string{"up", "down"}}
	for _, c := range []struct {
		source, event string
		keep          bool
	}{
		{"chat", "up", true}, {"app.web", "down", true}, {"app.", "up", true}, {"app", "up", false},
		{"chat", "left", false}, {"chatter", "up", false},
	} {
		if got := f.keep(&events.Event{Source: c.source, Name: c.event}); got != c.keep {
			t.Errorf("%s/%s: %v", c.source, c.event, got)
		}
	}
	if !(filter{}).keep(&events.Event{Source: "x", Name: "y"}) {
		t.Error("an empty filter drops events")
	}
	if (filter{none: true}).keep(&events.Event{Source: "x", Name: "y"}) {
		t.Error("a configured filter that came out empty keeps events")
	}
}

func TestDataJSON(t *testing.T) {
	for _, c := range []struct {
		data string
		json bool
		want string
	}{
		{`{"a":1}`, true, `{"a":1}`}, {`{"a":1}`, false, `"{\"a\":1}"`}, {"", true, "null"}, {"text", false, `"text"`},
	} {
		if got := string(DataJSON(&events.Event{Data: []byte(c.data), JSON: c.json})); got != c.want {
			t.Errorf("%q %v: %s", c.data, c.json, got)
		}
	}
}

// TestLongPollAnswerFraming: an answer that fits the page buffer goes out
// whole with its Content-Length; a larger one streams, chunked; both are
// the same page.
func TestLongPollAnswerFraming(t *testing.T) {
	app := newTestApp(t)
	h := &Poll{}
	use(t, app, h)
	small := post(t, app, "p", "e", "small")
	large := post(t, app, "p", "e", strings.Repeat("x", 2*pageBufSize))
	srv, _ := pollServer(t, h)
	for _, tc := range []struct {
		name    string
		since   uint64
		chunked bool
		events  int
	}{
		{"small page", small, false, 1},
		{"page over the buffer", large, true, 1},
		{"both", small, true, 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			url := fmt.Sprintf("%s/e?since=%d&timeout=0", srv.URL, tc.since)
			if tc.name == "small page" {
				url += "&limit=1"
			}
			resp, err := http.Get(url)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			body, err := io.ReadAll(resp.Body)
			if err != nil {
				t.Fatal(err)
			}
			chunked := slices.Contains(resp.TransferEncoding, "chunked")
			if resp.StatusCode != 200 || chunked != tc.chunked || (!chunked && resp.ContentLength != int64(len(body))) {
				t.Fatalf("status %d, chunked %v, Content-Length %d for %d bytes", resp.StatusCode, chunked, resp.ContentLength, len(body))
			}
			var p EventsPage
			if err := json.Unmarshal(body, &p); err != nil || len(p.Events) != tc.events || p.Events[0].Seq != tc.since {
				t.Fatalf("page %.200s: %v", body, err)
			}
		})
	}
}

// TestLongPollSlowClientDropped: a long-poll client that does not read
// its answer is dropped after write_timeout, and counted.
func TestLongPollSlowClientDropped(t *testing.T) {
	app := newTestApp(t)
	h := &Poll{WriteTimeout: caddy.Duration(300 * time.Millisecond), MaxBytes: 4 << 20}
	use(t, app, h)
	srv, done := pollServer(t, h)
	first := postBig(t, app)
	before := ReadStats().SlowClientsDropped
	c, err := rcvbufDialer(4096).Dial("tcp", srv.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	fmt.Fprintf(c, "GET /e?since=%d HTTP/1.1\r\nHost: test\r\n\r\n", first)
	waitDone(t, done, 20*time.Second, "a long-poll client that does not read")
	if got := ReadStats().SlowClientsDropped - before; got != 1 {
		t.Fatalf("slow clients dropped: %d", got)
	}
}

// TestPollPatternCap: a request may give at most MaxPatterns patterns in
// each filter parameter it is read for, comma-separated or repeated; the
// route's own filters, and parameters it does not read, are not counted.
func TestPollPatternCap(t *testing.T) {
	app := newTestApp(t)
	list := func(n int, sep string) string {
		ps := make([]string, n)
		for i := range ps {
			ps[i] = fmt.Sprintf("s%d", i)
		}
		return strings.Join(ps, sep)
	}
	evs := &Poll{}
	use(t, app, evs)
	routed := &Poll{Sources: []string{"s1"}}
	use(t, app, routed)
	alerts := &Poll{Alerts: []string{"*"}}
	use(t, app, alerts)
	for _, c := range []struct {
		name   string
		h      *Poll
		target string
		code   int
		want   string
	}{
		{"64 sources", evs, "/e?timeout=0&source=" + list(64, ","), 200, ""},
		{"65 sources", evs, "/e?timeout=0&source=" + list(65, ","), 400, "source: more than 64 patterns"},
		{"65 sources, repeated", evs, "/e?timeout=0&source=" + list(65, "&source="), 400, "source: more than 64 patterns"},
		{"65 events", evs, "/e?timeout=0&event=" + list(65, ","), 400, "event: more than 64 patterns"},
		{"empty items are not patterns", evs, "/e?timeout=0&source=" + strings.Repeat(",", 100), 200, ""},
		{"the route's sources", routed, "/e?timeout=0&source=" + list(65, ","), 200, ""},
		{"names, for events", evs, "/e?timeout=0&name=" + list(65, ","), 200, ""},
		{"65 names", alerts, "/a?timeout=0&name=" + list(65, ","), 400, "name: more than 64 patterns"},
		{"65 names, a stream", alerts, "/a?name=" + list(65, ","), 400, "name: more than 64 patterns"},
	} {
		t.Run(c.name, func(t *testing.T) {
			r := request("GET", c.target, nil, 0)
			if strings.Contains(c.name, "stream") {
				r.Header.Set("Accept", "text/event-stream")
				ctx, cancel := context.WithTimeout(r.Context(), 5*time.Second) // a stream let through would not end
				defer cancel()
				r = r.WithContext(ctx)
			}
			a := run(t, pollServe(c.h), r)
			if a.code != c.code || !strings.Contains(text(a), c.want) {
				t.Fatalf("%d %s, want %d %q", a.code, a.body, c.code, c.want)
			}
		})
	}
}
