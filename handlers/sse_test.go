package handlers

import (
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
)

// smallBuffers makes the server's side of every connection buffer little,
// so that a client that does not read blocks the writer soon.
type smallBuffers struct{ net.Listener }

func (l smallBuffers) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if tc, ok := c.(*net.TCPConn); ok {
		tc.SetWriteBuffer(16 << 10)
	}
	return c, err
}

// pollServer serves h on a real listener; done receives once per request
// when ServeHTTP returns.
func pollServer(t *testing.T, h *Poll) (*httptest.Server, chan struct{}) {
	t.Helper()
	done := make(chan struct{}, 16)
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		defer func() { done <- struct{}{} }()
		if err := h.ServeHTTP(w, r, nil); err != nil {
			t.Errorf("ServeHTTP: %v", err)
		}
	}))
	srv.Listener = smallBuffers{srv.Listener}
	srv.Start()
	t.Cleanup(srv.Close)
	return srv, done
}

// dialSlow opens a connection whose receive buffer is small, sends a
// stream request, and never reads.
func dialSlow(t *testing.T, srv *httptest.Server, path string, rcvbuf int) net.Conn {
	t.Helper()
	c, err := rcvbufDialer(rcvbuf).Dial("tcp", srv.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	fmt.Fprintf(c, "GET %s HTTP/1.1\r\nHost: test\r\nAccept: text/event-stream\r\n\r\n", path)
	return c
}

// rcvbufDialer dials sockets whose receive buffer is n bytes.
func rcvbufDialer(n int) *net.Dialer {
	return &net.Dialer{Control: func(_, _ string, c syscall.RawConn) error {
		return c.Control(func(fd uintptr) { syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, n) })
	}}
}

// postBig posts 16 events of 200KiB as p/e, more than a client with small
// buffers takes at once, and returns the seq of the first.
func postBig(t *testing.T, app *testApp) uint64 {
	t.Helper()
	first := post(t, app, "p", "e", strings.Repeat("x", 200<<10))
	for range 15 {
		post(t, app, "p", "e", strings.Repeat("x", 200<<10))
	}
	return first
}

func waitDone(t *testing.T, done chan struct{}, within time.Duration, what string) {
	t.Helper()
	select {
	case <-done:
	case <-time.After(within):
		t.Fatalf("%s: the handler still runs after %v", what, within)
	}
}

// TestSSESlowClientDropped: a stream client that stops reading is dropped
// after write_timeout, and counted.
func TestSSESlowClientDropped(t *testing.T) {
	app := newTestApp(t)
	h := &Poll{WriteTimeout: caddy.Duration(300 * time.Millisecond)}
	use(t, app, h)
	srv, done := pollServer(t, h)
	first := postBig(t, app)
	before := ReadStats().SlowClientsDropped
	dialSlow(t, srv, fmt.Sprintf("/e?since=%d", first), 4096)
	waitDone(t, done, 20*time.Second, "a client that does not read")
	if got := ReadStats().SlowClientsDropped - before; got != 1 {
		t.Fatalf("slow clients dropped: %d", got)
	}
}

// TestSSEStopAbortsBlockedWrite: on stopping, a stream blocked on a client
// that does not read ends at once, and is not counted as a slow client.
func TestSSEStopAbortsBlockedWrite(t *testing.T) {
	app := newTestApp(t)
	h := &Poll{WriteTimeout: caddy.Duration(time.Minute)}
	use(t, app, h)
	srv, done := pollServer(t, h)
	first := postBig(t, app)
	before := ReadStats().SlowClientsDropped
	dialSlow(t, srv, fmt.Sprintf("/e?since=%d", first), 4096)
	time.Sleep(500 * time.Millisecond) // the writes block
	h.stop()
	waitDone(t, done, 5*time.Second, "stopping")
	if got := ReadStats().SlowClientsDropped - before; got != 0 {
		t.Fatalf("a stop counted as %d slow clients", got)
	}
}

// TestSSESlowReaderKept: a client that reads slowly but steadily gets a
// payload that takes longer than write_timeout to send as a whole.
func TestSSESlowReaderKept(t *testing.T) {
	app := newTestApp(t)
	h := &Poll{WriteTimeout: caddy.Duration(time.Second)}
	use(t, app, h)
	srv, done := pollServer(t, h)
	const size = 1536 << 10
	first := post(t, app, "p", "e", strings.Repeat("x", size))
	c := dialSlow(t, srv, fmt.Sprintf("/e?since=%d", first), 32<<10)
	buf := make([]byte, 32<<10)
	var got int
	start := time.Now()
	c.SetReadDeadline(start.Add(30 * time.Second))
	for got < size {
		n, err := c.Read(buf) // at most 32KiB every 50ms: 640KiB/s
		if err != nil {
			t.Fatalf("after %d bytes: %v", got, err)
		}
		got += strings.Count(string(buf[:n]), "x")
		time.Sleep(50 * time.Millisecond)
	}
	if got < size {
		t.Fatalf("got %d of %d bytes", got, size)
	}
	if time.Since(start) < 2*time.Second {
		t.Logf("the payload came in %v: not slower than write_timeout, the test proves little", time.Since(start))
	}
	select {
	case <-done:
		t.Fatal("the stream ended")
	default:
	}
}

// postPastRing posts 20,000 events "0", "1"… as p/e, more than the 4MiB
// ring holds (8,192), and returns the seq of the first.
func postPastRing(t *testing.T, app *testApp) uint64 {
	t.Helper()
	first := post(t, app, "p", "e", "0")
	for i := 1; i < 20000; i++ {
		post(t, app, "p", "e", strconv.Itoa(i))
	}
	return first
}

type sseEvent struct{ id, event, data string }

func readSSE(t *testing.T, url string, n int) []sseEvent {
	t.Helper()
	c := openSSE(t, url)
	defer c.resp.Body.Close()
	if c.resp.Header.Get("Content-Type") != "text/event-stream" || c.resp.Header.Get("Vary") != "Accept" {
		t.Fatalf("headers %v", c.resp.Header)
	}
	var out []sseEvent
	for len(out) < n {
		ev, err := c.next()
		if err != nil {
			t.Fatalf("%d of %d events: %v", len(out), n, err)
		}
		out = append(out, ev)
	}
	return out
}

// TestSSELostNotice: events the ring no longer holds are announced as
// ipcbus.lost, a name no publisher can post.
func TestSSELostNotice(t *testing.T) {
	app := newTestApp(t)
	h := &Poll{}
	use(t, app, h)
	srv, _ := pollServer(t, h)
	first := postPastRing(t, app)
	evs := readSSE(t, srv.URL+fmt.Sprintf("/e?since=%d", first), 2)
	var l struct {
		From, Count uint64
		Reason      string
	}
	if evs[0].event != NoticeLost || json.Unmarshal([]byte(evs[0].data), &l) != nil || l.From != first || l.Count == 0 || l.Reason != "overrun" {
		t.Fatalf("first event %+v", evs[0])
	}
	if evs[1].event != "e" || evs[1].id != strconv.FormatUint(first+l.Count, 10) {
		t.Fatalf("after the notice: %+v (lost %d)", evs[1], l.Count)
	}
}

// TestSSEEnvelope: with envelope, data is the event's JSON object, so
// sources can be told apart and binary payloads arrive whole.
func TestSSEEnvelope(t *testing.T) {
	app := newTestApp(t)
	first := post(t, app, "a", "same", "text\nwith a line break")
	post(t, app, "b", "same", []byte{0xff, 0x00})
	post(t, app, "a", "same", json.RawMessage("{\n\"k\": 1\n}"))
	for _, envelope := range []bool{false, true} {
		h := &Poll{Envelope: envelope}
		use(t, app, h)
		srv, _ := pollServer(t, h)
		evs := readSSE(t, srv.URL+fmt.Sprintf("/e?since=%d", first), 3)
		if !envelope {
			if evs[0].data != "text\nwith a line break" || evs[0].event != "same" {
				t.Fatalf("raw: %+v", evs[0])
			}
			continue
		}
		var got []EventJSON
		for _, ev := range evs {
			var e EventJSON
			if err := json.Unmarshal([]byte(ev.data), &e); err != nil || ev.event != "same" || ev.id != strconv.FormatUint(e.Seq, 10) {
				t.Fatalf("envelope %+v: %v", ev, err)
			}
			got = append(got, e)
		}
		var s string
		var b []byte
		var obj struct{ K int }
		if got[0].Source != "a" || json.Unmarshal(got[0].Data, &s) != nil || s != "text\nwith a line break" ||
			got[1].Source != "b" || got[1].DataEncoding != "base64" || json.Unmarshal(got[1].Data, &b) != nil || string(b) != "\xff\x00" ||
			json.Unmarshal(got[2].Data, &obj) != nil || obj.K != 1 {
			t.Fatalf("envelopes %+v", got)
		}
	}
}
