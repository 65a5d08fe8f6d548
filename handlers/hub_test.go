package handlers

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
)

// sseClient is a stream read with net/http's client, which checks the
// chunked framing of the body.
type sseClient struct {
	resp *http.Response
	sc   *bufio.Scanner
}

func openSSE(t *testing.T, url string) *sseClient {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second) // a test never hangs
	t.Cleanup(cancel)
	req, _ := http.NewRequestWithContext(ctx, "GET", url, nil)
	req.Header.Set("Accept", "text/event-stream")
	resp, err := http.DefaultTransport.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { resp.Body.Close() })
	if resp.StatusCode != 200 || len(resp.TransferEncoding) != 1 || resp.TransferEncoding[0] != "chunked" {
		t.Fatalf("answer %d, transfer encoding %v", resp.StatusCode, resp.TransferEncoding)
	}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(nil, 1<<20)
	return &sseClient{resp: resp, sc: sc}
}

// next reads the next event (comments skipped); an error at the end of
// the body.
func (c *sseClient) next() (sseEvent, error) {
	var ev sseEvent
	var data []string
	for c.sc.Scan() {
		l := c.sc.Text()
		switch {
		case l == "":
			if ev.event != "" || len(data) > 0 {
				ev.data = strings.Join(data, "\n")
				return ev, nil
			}
		case strings.HasPrefix(l, "id: "):
			ev.id = l[4:]
		case strings.HasPrefix(l, "event: "):
			ev.event = l[7:]
		case strings.HasPrefix(l, "data: "):
			data = append(data, l[6:])
		}
	}
	if err := c.sc.Err(); err != nil {
		return ev, err
	}
	return ev, io.EOF
}

// waitShared waits until n streams of h are written by the shared
// writers.
func waitShared(t *testing.T, h *Poll, n int64) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for h.hub.n.Load() != n {
		if time.Now().After(deadline) {
			t.Fatalf("%d streams written by the shared writers, want %d", h.hub.n.Load(), n)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// joinedStream serves h, and opens a stream to it that the hub writes.
func joinedStream(t *testing.T, h *Poll) (*testApp, *sseClient, chan struct{}) {
	t.Helper()
	app := newTestApp(t)
	use(t, app, h)
	srv, done := pollServer(t, h)
	c := openSSE(t, srv.URL+"/e")
	waitShared(t, h, 1)
	return app, c, done
}

// TestHubFanOut: streams that have caught up are written by the shared
// writers, every event to each in order, in valid chunks; they leave the
// hub when their clients go.
func TestHubFanOut(t *testing.T) {
	app := newTestApp(t)
	h := &Poll{StreamWriters: 2}
	use(t, app, h)
	srv, done := pollServer(t, h)
	const clients, n = 10, 600
	var cs []*sseClient
	for range clients {
		cs = append(cs, openSSE(t, srv.URL+"/e?source=p"))
	}
	waitShared(t, h, clients)
	first := post(t, app, "p", "e", "0")
	for i := 1; i < n; i++ {
		post(t, app, "q", "e", "filtered out")
		post(t, app, "p", "e", strconv.Itoa(i))
	}
	for k, c := range cs {
		for i := range n {
			ev, err := c.next()
			want := strconv.FormatUint(first+2*uint64(i), 10)
			if err != nil || ev.id != want || ev.data != strconv.Itoa(i) {
				t.Fatalf("client %d, event %d: %+v %v, want id %s", k, i, ev, err, want)
			}
		}
	}
	for _, c := range cs {
		c.resp.Body.Close()
	}
	for range clients {
		waitDone(t, done, 10*time.Second, "a client that went away")
	}
	waitShared(t, h, 0)
}

// TestHubHandsBack: an event the hub does not write (too large for the
// read cache, or in a blob file) goes out from the stream's own goroutine,
// in order, and the stream joins the hub again.
func TestHubHandsBack(t *testing.T) {
	h := &Poll{}
	app, c, _ := joinedStream(t, h)
	sizes := []int{10, readCacheMaxData + 1, 10, 200 << 10, 10}
	var seqs []uint64
	for i, n := range sizes {
		seqs = append(seqs, post(t, app, "p", "e", strings.Repeat(string(rune('a'+i)), n)))
	}
	for i, n := range sizes {
		ev, err := c.next()
		if err != nil || ev.id != strconv.FormatUint(seqs[i], 10) || ev.data != strings.Repeat(string(rune('a'+i)), n) {
			t.Fatalf("event %d: id %s, %d bytes, %v", i, ev.id, len(ev.data), err)
		}
	}
	waitShared(t, h, 1)
}

// TestHubFilteredLarge: an event too large for the writers that a
// stream's filter drops does not take the stream out of the hub.
func TestHubFilteredLarge(t *testing.T) {
	app := newTestApp(t)
	h := &Poll{}
	use(t, app, h)
	srv, _ := pollServer(t, h)
	c := openSSE(t, srv.URL+"/e?source=p")
	waitShared(t, h, 1)
	post(t, app, "q", "e", strings.Repeat("q", readCacheMaxData+1))
	post(t, app, "q", "e", strings.Repeat("b", 200<<10))
	seq := post(t, app, "p", "e", "small")
	if ev, err := c.next(); err != nil || ev.id != strconv.FormatUint(seq, 10) || ev.data != "small" {
		t.Fatalf("%+v %v", ev, err)
	}
	if n := h.hub.back.Load(); n != 0 {
		t.Fatalf("handed back %d times", n)
	}
	seq = post(t, app, "p", "e", strings.Repeat("p", readCacheMaxData+1))
	if ev, err := c.next(); err != nil || ev.id != strconv.FormatUint(seq, 10) || len(ev.data) != readCacheMaxData+1 {
		t.Fatalf("%s %d %v", ev.id, len(ev.data), err)
	}
	if n := h.hub.back.Load(); n != 1 {
		t.Fatalf("handed back %d times, want 1 (for its own large event)", n)
	}
}

// TestHubSlowClient: a client that stops reading fills its socket, is
// handed back to its own goroutine, and dropped after write_timeout, while
// another stream of the same hub gets every event.
func TestHubSlowClient(t *testing.T) {
	app := newTestApp(t)
	h := &Poll{WriteTimeout: caddy.Duration(300 * time.Millisecond), StreamWriters: 1}
	use(t, app, h)
	srv, done := pollServer(t, h)
	before := ReadStats().SlowClientsDropped
	dialSlow(t, srv, "/e", 4096)
	fast := openSSE(t, srv.URL+"/e")
	waitShared(t, h, 2)
	payload := strings.Repeat("x", 4000) // kept in the read cache: the hub writes it
	const n = 400                        // 1.6 MB, far more than the slow client's buffers
	first := post(t, app, "p", "e", payload)
	for range n - 1 {
		post(t, app, "p", "e", payload)
	}
	for i := range n {
		ev, err := fast.next()
		if err != nil || ev.id != strconv.FormatUint(first+uint64(i), 10) || ev.data != payload {
			t.Fatalf("event %d: id %s, %v", i, ev.id, err)
		}
	}
	waitDone(t, done, 20*time.Second, "a client that does not read")
	if got := ReadStats().SlowClientsDropped - before; got != 1 {
		t.Fatalf("slow clients dropped: %d", got)
	}
	waitShared(t, h, 1)
}

// TestHubStalledClientCatchesUp: a client that stalls long enough for its
// socket to take only part of a chunk, then reads again, gets every event
// whole and in order (the rest of the chunk first, from the stream's own
// goroutine), and its stream joins the hub again.
func TestHubStalledClientCatchesUp(t *testing.T) {
	app := newTestApp(t)
	h := &Poll{WriteTimeout: caddy.Duration(time.Minute)}
	use(t, app, h)
	srv, _ := pollServer(t, h)
	c := dialSlow(t, srv, "/e", 4096)
	waitShared(t, h, 1)
	payload := strings.Repeat("y", 3000)
	const n = 300
	first := post(t, app, "p", "e", payload)
	for range n - 1 {
		post(t, app, "p", "e", payload)
	}
	waitShared(t, h, 0) // its socket is full: handed back
	c.SetReadDeadline(time.Now().Add(30 * time.Second))
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatal(err)
	}
	sc := &sseClient{resp: resp, sc: bufio.NewScanner(resp.Body)}
	sc.sc.Buffer(nil, 1<<20)
	for i := range n {
		ev, err := sc.next()
		if err != nil || ev.id != strconv.FormatUint(first+uint64(i), 10) || ev.data != payload {
			t.Fatalf("event %d: id %s, %d bytes, %v", i, ev.id, len(ev.data), err)
		}
	}
	waitShared(t, h, 1)
}

// TestHubClientGone: a client that goes away while the hub writes its
// stream ends the handler at once, with no event needed to find out.
func TestHubClientGone(t *testing.T) {
	h := &Poll{}
	_, c, done := joinedStream(t, h)
	c.resp.Body.Close()
	waitDone(t, done, 5*time.Second, "a client that went away")
	waitShared(t, h, 0)
	if n := h.open.Load(); n != 0 {
		t.Fatalf("%d streams still counted", n)
	}
}

// TestHubEnds: a stop (a reload), or the bus closing, ends the streams in
// the hub with the end of the chunked body, so clients see a clean end.
func TestHubEnds(t *testing.T) {
	for _, tc := range []struct {
		name string
		end  func(*Poll, *testApp)
	}{
		{"stop", func(h *Poll, _ *testApp) { h.stop() }},
		{"bus closed", func(_ *Poll, app *testApp) { app.bus.Close(0) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := &Poll{}
			app, c, done := joinedStream(t, h)
			seq := post(t, app, "p", "e", "before")
			if ev, err := c.next(); err != nil || ev.id != strconv.FormatUint(seq, 10) {
				t.Fatalf("%+v %v", ev, err)
			}
			tc.end(h, app)
			waitDone(t, done, 5*time.Second, tc.name)
			if _, err := c.next(); !errors.Is(err, io.EOF) {
				t.Fatalf("the body ended with %v, not a clean end", err)
			}
			waitShared(t, h, 0)
		})
	}
}

// TestHubKeepAlive: an idle stream in the hub gets keep-alive comments.
func TestHubKeepAlive(t *testing.T) {
	_, c, _ := joinedStream(t, &Poll{KeepAlive: caddy.Duration(100 * time.Millisecond)})
	for range 2 {
		if !c.sc.Scan() || c.sc.Text() != ": keep-alive" {
			t.Fatalf("read %q %v, want a keep-alive comment", c.sc.Text(), c.sc.Err())
		}
		if !c.sc.Scan() || c.sc.Text() != "" {
			t.Fatalf("read %q after the comment", c.sc.Text())
		}
	}
}

// compressing stands for a handler in front that decides, when the
// headers are written, to compress the response (as encode does).
type compressing struct{ http.ResponseWriter }

func (c compressing) WriteHeader(code int) {
	c.Header().Set("Content-Encoding", "br")
	c.ResponseWriter.WriteHeader(code)
}
func (c compressing) Unwrap() http.ResponseWriter { return c.ResponseWriter }

// buffering stands for a handler in front that holds the response in a
// buffer (as intercept does): it says so.
type buffering struct{ http.ResponseWriter }

func (b buffering) Buffered() bool              { return true }
func (b buffering) Unwrap() http.ResponseWriter { return b.ResponseWriter }

// opaqueConn is a connection of a listener wrapper the handler cannot see
// through: hijacked, but written by the stream's own goroutine.
type opaqueConn struct{ net.Conn }

type opaqueListener struct{ net.Listener }

func (l opaqueListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return opaqueConn{c}, nil
}

// TestHubNotUsed: with stream_writers off, or when something before the
// handler compresses or buffers the response, or when the connection
// cannot be written directly, each stream writes itself, and ends cleanly.
func TestHubNotUsed(t *testing.T) {
	for _, tc := range []struct {
		name    string
		writers int
		wrap    func(http.ResponseWriter) http.ResponseWriter
		opaque  bool
	}{
		{"off", -1, nil, false},
		{"compressed", 0, func(w http.ResponseWriter) http.ResponseWriter { return compressing{w} }, false},
		{"buffered", 0, func(w http.ResponseWriter) http.ResponseWriter { return buffering{w} }, false},
		{"opaque connection", 0, nil, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			app := newTestApp(t)
			h := &Poll{StreamWriters: tc.writers}
			use(t, app, h)
			done := make(chan struct{}, 1)
			srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				defer func() { done <- struct{}{} }()
				if tc.wrap != nil {
					w = tc.wrap(w)
				}
				_ = h.ServeHTTP(w, r, nil)
			}))
			if tc.opaque {
				srv.Listener = opaqueListener{srv.Listener}
			}
			srv.Start()
			t.Cleanup(srv.Close)
			c := openSSE(t, srv.URL+"/e?since="+strconv.FormatUint(app.bus.Tail(), 10))
			time.Sleep(100 * time.Millisecond) // would have joined the hub by now
			for i := range 3 {
				post(t, app, "p", "e", fmt.Sprint(i))
			}
			for i := range 3 {
				if ev, err := c.next(); err != nil || ev.data != fmt.Sprint(i) {
					t.Fatalf("event %d: %+v %v", i, ev, err)
				}
			}
			if n := h.hub.n.Load(); n != 0 {
				t.Fatalf("%d streams in the hub", n)
			}
			h.stop()
			waitDone(t, done, 5*time.Second, "stopping")
			if _, err := c.next(); !errors.Is(err, io.EOF) {
				t.Fatalf("the body ended with %v, not a clean end", err)
			}
		})
	}
}

// TestHubOpaqueClientGone: a stream on a connection the handler cannot
// write directly ends as soon as its client goes away.
func TestHubOpaqueClientGone(t *testing.T) {
	app := newTestApp(t)
	h := &Poll{}
	use(t, app, h)
	done := make(chan struct{}, 1)
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		defer func() { done <- struct{}{} }()
		_ = h.ServeHTTP(w, r, nil)
	}))
	srv.Listener = opaqueListener{srv.Listener}
	srv.Start()
	t.Cleanup(srv.Close)
	c := openSSE(t, srv.URL+"/e")
	time.Sleep(100 * time.Millisecond)
	c.resp.Body.Close()
	waitDone(t, done, 5*time.Second, "a client that went away")
}

// fullRaw is a socket that never takes a byte, as one whose client has
// stopped reading and whose buffers are full.
type fullRaw struct{}

func (fullRaw) Control(func(uintptr)) error    { return nil }
func (fullRaw) Read(func(uintptr) bool) error  { return nil }
func (fullRaw) Write(func(uintptr) bool) error { return nil }

// TestHubHandBackBounded: a stream whose socket takes nothing is handed
// back holding at most one pass of frames, bounded by their bytes (SSE's
// framing included: a payload of newlines grows sevenfold), not by the
// payload bytes of a whole batch.
func TestHubHandBackBounded(t *testing.T) {
	for _, tc := range []struct{ name, ch string }{{"text", "x"}, {"newlines", "\n"}} {
		t.Run(tc.name, func(t *testing.T) {
			app := newTestApp(t)
			h := &Poll{StreamWriters: 1}
			use(t, app, h)
			first := app.bus.Tail()
			for range 100 {
				post(t, app, "p", "e", strings.Repeat(tc.ch, readCacheMaxData))
			}
			back := make(chan struct{})
			s := &hubStream{raw: fullRaw{}, poke: func() { close(back) }, since: first}
			if !h.hub.join(h, s, app.bus) {
				t.Fatal("the hub did not take the stream")
			}
			select {
			case <-back:
			case <-time.After(10 * time.Second):
				s.leave(h)
				t.Fatal("the stream was not handed back")
			}
			s.mu.Lock()
			held := len(s.out)
			s.mu.Unlock()
			if max := 64<<10 + 16; held == 0 || held > max { // docs/limits.md: 64 KiB, plus a chunk's size line and end
				t.Errorf("handed back holding %d bytes, want 1 to %d", held, max)
			}
		})
	}
}
