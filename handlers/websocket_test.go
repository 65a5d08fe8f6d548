package handlers

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/coder/websocket"

	"github.com/ipcbus/caddy-ipcbus/events"
)

// wsDial opens a WebSocket on srv's path, with extra request headers.
func wsDial(t *testing.T, ctx context.Context, url string, hdr http.Header) (*websocket.Conn, *http.Response, error) {
	t.Helper()
	c, resp, err := websocket.Dial(ctx, "ws"+strings.TrimPrefix(url, "http"), &websocket.DialOptions{HTTPHeader: hdr})
	if err == nil {
		c.SetReadLimit(-1)
		t.Cleanup(func() { c.CloseNow() })
	}
	return c, resp, err
}

// payloadOf is the payload of an event's JSON object as posted: a string's
// text, base64 decoded, or the JSON itself.
func payloadOf(e EventJSON) string {
	var s string
	if json.Unmarshal(e.Data, &s) != nil {
		return string(e.Data)
	}
	if e.DataEncoding == EncodingBase64 {
		var b []byte
		json.Unmarshal(e.Data, &b)
		return string(b)
	}
	return s
}

type wsMessage struct {
	typ  websocket.MessageType
	data string
}

// wsRead reads n messages, each within 10 s.
func wsRead(t *testing.T, c *websocket.Conn, n int) []wsMessage {
	t.Helper()
	var out []wsMessage
	for len(out) < n {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		typ, b, err := c.Read(ctx)
		cancel()
		if err != nil {
			t.Fatalf("after %d of %d messages: %v", len(out), n, err)
		}
		out = append(out, wsMessage{typ, string(b)})
	}
	return out
}

// TestWebSocketEvents: the events arrive in order, one message each, as
// posted (binary ones as binary messages) or in their envelope; since and
// Last-Event-ID resume; the filters of the query and of the config hold.
func TestWebSocketEvents(t *testing.T) {
	app := newTestApp(t)
	first := post(t, app, "a", "x", "one")
	post(t, app, "b", "y", []byte{0xff, 0x00})
	post(t, app, "a", "y", json.RawMessage(`{"k":1}`))
	post(t, app, "a", "x", "four")
	for _, tc := range []struct {
		name     string
		h        *Poll
		query    string
		lastID   uint64 // Last-Event-ID header, 0: none
		want     []wsMessage
		envelope bool
	}{
		{name: "raw", h: &Poll{}, query: fmt.Sprintf("since=%d", first), want: []wsMessage{
			{websocket.MessageText, "one"}, {websocket.MessageBinary, "\xff\x00"}, {websocket.MessageText, `{"k":1}`}, {websocket.MessageText, "four"}}},
		{name: "since resumes", h: &Poll{}, query: fmt.Sprintf("since=%d", first+2), want: []wsMessage{
			{websocket.MessageText, `{"k":1}`}, {websocket.MessageText, "four"}}},
		{name: "Last-Event-ID resumes", h: &Poll{}, lastID: first + 2, want: []wsMessage{{websocket.MessageText, "four"}}},
		{name: "query filters", h: &Poll{}, query: fmt.Sprintf("since=%d&source=a&event=x", first), want: []wsMessage{
			{websocket.MessageText, "one"}, {websocket.MessageText, "four"}}},
		{name: "configured filters", h: &Poll{Sources: []string{"b"}}, query: fmt.Sprintf("since=%d&source=a", first), want: []wsMessage{
			{websocket.MessageBinary, "\xff\x00"}}},
		{name: "envelope", h: &Poll{Envelope: true}, query: fmt.Sprintf("since=%d", first), envelope: true, want: []wsMessage{
			{websocket.MessageText, "a x one"}, {websocket.MessageText, "b y \xff\x00"}, {websocket.MessageText, `a y {"k":1}`}, {websocket.MessageText, "a x four"}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			use(t, app, tc.h)
			srv, _ := pollServer(t, tc.h)
			hdr := http.Header{}
			if tc.lastID != 0 {
				hdr.Set("Last-Event-ID", strconv.FormatUint(tc.lastID, 10))
			}
			c, _, err := wsDial(t, context.Background(), srv.URL+"/e?"+tc.query, hdr)
			if err != nil {
				t.Fatal(err)
			}
			got := wsRead(t, c, len(tc.want))
			if tc.envelope {
				for i, m := range got {
					var e EventJSON
					if err := json.Unmarshal([]byte(m.data), &e); err != nil || e.Seq != first+uint64(i) || e.PID == 0 || e.Time.IsZero() {
						t.Fatalf("envelope %d: %q: %v", i, m.data, err)
					}
					got[i].data = e.Source + " " + e.Event + " " + payloadOf(e)
				}
			}
			for i := range tc.want {
				if got[i] != tc.want[i] {
					t.Fatalf("message %d: %v %q, want %v %q", i, got[i].typ, got[i].data, tc.want[i].typ, tc.want[i].data)
				}
			}
			// Live events follow, in order.
			for i := 0; i < 50; i++ {
				post(t, app, "a", "x", fmt.Sprintf("live %d", i))
			}
			live := 50
			if tc.name == "configured filters" {
				live = 0
			}
			for i, m := range wsRead(t, c, live) {
				if want := fmt.Sprintf("live %d", i); !strings.Contains(m.data, want) {
					t.Fatalf("live message %d: %q", i, m.data)
				}
			}
		})
	}
}

// TestWebSocketLost: events the ring no longer holds are announced.
func TestWebSocketLost(t *testing.T) {
	app := newTestApp(t)
	h := &Poll{}
	use(t, app, h)
	srv, _ := pollServer(t, h)
	first := postPastRing(t, app)
	c, _, err := wsDial(t, context.Background(), srv.URL+fmt.Sprintf("/e?since=%d", first), nil)
	if err != nil {
		t.Fatal(err)
	}
	m := wsRead(t, c, 2)
	var n struct {
		Event string
		Data  struct{ From, Count uint64 }
	}
	if json.Unmarshal([]byte(m[0].data), &n) != nil || n.Event != NoticeLost || n.Data.From != first || n.Data.Count == 0 {
		t.Fatalf("first message %q", m[0].data)
	}
	if m[1].data != strconv.FormatUint(n.Data.Count, 10) {
		t.Fatalf("after the notice: %q (lost %d)", m[1].data, n.Data.Count)
	}
}

// TestWebSocketMaxStreams: beyond max_streams the request is answered 503
// before any upgrade; a closed socket gives its slot back.
func TestWebSocketMaxStreams(t *testing.T) {
	app := newTestApp(t)
	h := &Poll{MaxStreams: 1}
	use(t, app, h)
	srv, done := pollServer(t, h)
	c, _, err := wsDial(t, context.Background(), srv.URL+"/e", nil)
	if err != nil {
		t.Fatal(err)
	}
	_, resp, err := wsDial(t, context.Background(), srv.URL+"/e", nil)
	if err == nil || resp == nil || resp.StatusCode != http.StatusServiceUnavailable {
		t.Fatalf("a second socket: %v, %+v", err, resp)
	}
	c.Close(websocket.StatusNormalClosure, "")
	waitDone(t, done, 5*time.Second, "a closed socket")
	waitDone(t, done, 5*time.Second, "the refused request")
	if _, _, err := wsDial(t, context.Background(), srv.URL+"/e", nil); err != nil {
		t.Fatalf("after the first closed: %v", err)
	}
}

// TestWebSocketPublish: with publish, text messages are posted as by
// ipcbus_broadcast and answered; what the bus refuses is answered with
// an error; a message over max_size ends the socket with status 1009.
func TestWebSocketPublish(t *testing.T) {
	app := newTestApp(t)
	h := &Poll{Publish: true, MaxSize: 1024, Sources: []string{"chat"}, Envelope: true}
	use(t, app, h)
	srv, done := pollServer(t, h)
	c, _, err := wsDial(t, context.Background(), srv.URL+"/e", nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	for _, tc := range []struct {
		name, frame string
		binary      bool
		want        string // a part of the answer
		data        string // the payload posted ("": nothing posted)
	}{
		{"text", `{"source":"chat","event":"msg","data":"hi","id":7}`, false, `"id":7`, "hi"},
		{"json", `{"source":"chat","event":"msg","data":{"a":[1,2]}}`, false, `{"seq":`, `{"a":[1,2]}`},
		{"base64", `{"source":"chat","event":"msg","data":"/wA=","data_encoding":"base64"}`, false, `{"seq":`, "\xff\x00"},
		{"reserved source", `{"source":"ipcbus","event":"msg","data":1}`, false, `"status":400`, ""},
		{"reserved event", `{"source":"chat","event":"ipcbus.lost","data":1}`, false, `"status":400`, ""},
		{"no event", `{"source":"chat","data":1}`, false, `"status":400`, ""},
		{"not JSON", `hello`, false, `"status":400`, ""},
		{"binary", "\x00\x01", true, `"status":400`, ""},
	} {
		typ := websocket.MessageText
		if tc.binary {
			typ = websocket.MessageBinary
		}
		tail := app.bus.Tail()
		if err := c.Write(ctx, typ, []byte(tc.frame)); err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		var answer string
		var ev EventJSON
		for answer == "" { // the answer and the event may come in either order
			m := wsRead(t, c, 1)[0]
			switch {
			case strings.HasPrefix(m.data, `{"seq":`) && strings.Contains(m.data, `"source":`):
				json.Unmarshal([]byte(m.data), &ev)
			default:
				answer = m.data
			}
		}
		if !strings.Contains(answer, tc.want) {
			t.Fatalf("%s: answered %s, want %s", tc.name, answer, tc.want)
		}
		if tc.data == "" {
			if app.bus.Tail() != tail {
				t.Fatalf("%s: posted", tc.name)
			}
			continue
		}
		if ev.Seq == 0 {
			json.Unmarshal([]byte(wsRead(t, c, 1)[0].data), &ev)
		}
		var seq struct{ Seq uint64 }
		json.Unmarshal([]byte(answer), &seq)
		got := payloadOf(ev)
		if ev.Seq != seq.Seq || ev.Source != "chat" || ev.Event != "msg" || got != tc.data {
			t.Fatalf("%s: answered %s, streamed %+v", tc.name, answer, ev)
		}
	}
	// Over max_size: refused by the read limit, the socket ends with 1009.
	tail := app.bus.Tail()
	big := `{"source":"chat","event":"msg","data":"` + strings.Repeat("x", 2000) + `"}`
	c.Write(ctx, websocket.MessageText, []byte(big))
	rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	_, _, err = c.Read(rctx)
	if websocket.CloseStatus(err) != websocket.StatusMessageTooBig {
		t.Fatalf("a message over max_size: %v, want close status 1009", err)
	}
	waitDone(t, done, 5*time.Second, "a socket past max_size")
	if app.bus.Tail() != tail {
		t.Fatal("a message over max_size was posted")
	}
}

// TestWebSocketPing: a client that answers pings stays connected while
// nothing happens for many write_timeouts; one that does not (it never
// reads, so it never answers) is dropped after write_timeout, and counted.
func TestWebSocketPing(t *testing.T) {
	app := newTestApp(t)
	h := &Poll{PingInterval: caddy.Duration(50 * time.Millisecond), WriteTimeout: caddy.Duration(200 * time.Millisecond)}
	use(t, app, h)
	srv, done := pollServer(t, h)
	c, _, err := websocket.Dial(context.Background(), "ws"+strings.TrimPrefix(srv.URL, "http")+"/e", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.CloseNow()
	got := make(chan string, 1)
	go func() { // reading answers the pings; it goes on reading, so that
		// this client is never the one dropped below
		first := true
		for {
			_, b, err := c.Read(context.Background())
			if first {
				if err != nil {
					got <- err.Error()
				} else {
					got <- string(b)
				}
				first = false
			}
			if err != nil {
				return
			}
		}
	}()
	time.Sleep(time.Second) // 20 pings, 5 write_timeouts
	post(t, app, "p", "e", "still here")
	select {
	case m := <-got:
		if m != "still here" {
			t.Fatalf("after an idle second: %s", m)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no message after an idle second")
	}

	before := ReadStats().SlowClientsDropped
	deaf, _, err := websocket.Dial(context.Background(), "ws"+strings.TrimPrefix(srv.URL, "http")+"/e", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer deaf.CloseNow()
	waitDone(t, done, 5*time.Second, "a client that does not answer pings")
	if d := ReadStats().SlowClientsDropped - before; d != 1 {
		t.Fatalf("slow clients dropped: %d", d)
	}
}

// TestWebSocketStop: when the handler stops (a reload or a stop), open
// sockets, idle or not, get a close frame with status 1001 (going away)
// and the handler returns.
func TestWebSocketStop(t *testing.T) {
	for _, tc := range []struct {
		name    string
		publish bool
	}{{"stream", false}, {"publish", true}} {
		t.Run(tc.name, func(t *testing.T) {
			app := newTestApp(t)
			h := &Poll{Publish: tc.publish}
			use(t, app, h)
			srv, done := pollServer(t, h)
			c, _, err := wsDial(t, context.Background(), srv.URL+"/e", nil)
			if err != nil {
				t.Fatal(err)
			}
			post(t, app, "p", "e", "before")
			wsRead(t, c, 1)
			start := time.Now()
			h.stop()
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			_, _, err = c.Read(ctx)
			var ce websocket.CloseError
			if !errors.As(err, &ce) || ce.Code != websocket.StatusGoingAway {
				t.Fatalf("after the stop: %v, want a close frame with status 1001", err)
			}
			waitDone(t, done, 5*time.Second, "the stop")
			if d := time.Since(start); d > wsCloseGrace {
				t.Fatalf("the socket took %v to close", d)
			}
		})
	}
}

// slowWSDial opens a WebSocket whose receive buffer is small, and never
// reads from it.
func slowWSDial(t *testing.T, url string) *websocket.Conn {
	t.Helper()
	client := &http.Client{Transport: &http.Transport{DialContext: rcvbufDialer(4096).DialContext}}
	c, _, err := websocket.Dial(context.Background(), "ws"+strings.TrimPrefix(url, "http"), &websocket.DialOptions{HTTPClient: client})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.CloseNow() })
	return c
}

// TestWebSocketSlowClient: a client that stops reading is dropped after
// write_timeout by the write deadline (no ping within the test), and
// counted once; on a stop, a write blocked on such a client is cut after
// the close grace, not write_timeout, and not counted.
func TestWebSocketSlowClient(t *testing.T) {
	for _, tc := range []struct {
		name    string
		timeout time.Duration
		stop    bool
		within  time.Duration
		dropped int64
	}{
		{"dropped", 300 * time.Millisecond, false, 20 * time.Second, 1},
		{"stopped", time.Minute, true, wsCloseGrace + 2*time.Second, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			app := newTestApp(t)
			h := &Poll{WriteTimeout: caddy.Duration(tc.timeout), PingInterval: caddy.Duration(time.Hour)}
			use(t, app, h)
			srv, done := pollServer(t, h)
			first := postBig(t, app)
			before := ReadStats().SlowClientsDropped
			slowWSDial(t, srv.URL+fmt.Sprintf("/e?since=%d", first))
			if tc.stop {
				time.Sleep(500 * time.Millisecond) // the writes block
				h.stop()
			}
			waitDone(t, done, tc.within, tc.name)
			if got := ReadStats().SlowClientsDropped - before; got != tc.dropped {
				t.Fatalf("slow clients dropped: %d, want %d", got, tc.dropped)
			}
		})
	}
}

// TestWebSocketAlerts: a route with alerts serves the alerts to its
// process over a WebSocket, each as its JSON object.
func TestWebSocketAlerts(t *testing.T) {
	app := newTestApp(t)
	first := app.alerts.Tail()
	if err := app.alerts.Send(os.Getpid(), "deploy", []byte("v2")); err != nil {
		t.Fatal(err)
	}
	if err := app.alerts.Broadcast("cert-renewed", []byte{0xff, 0}); err != nil {
		t.Fatal(err)
	}
	h := &Poll{Alerts: []string{"*"}}
	use(t, app, h)
	srv, _ := pollServer(t, h)
	c, _, err := wsDial(t, context.Background(), srv.URL+fmt.Sprintf("/a?since=%d", first), nil)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, m := range wsRead(t, c, 2) {
		var a struct {
			Name         string
			Data         string
			DataEncoding string `json:"data_encoding"`
			PID          int
			Broadcast    bool
		}
		if err := json.Unmarshal([]byte(m.data), &a); err != nil || m.typ != websocket.MessageText || a.PID != os.Getpid() {
			t.Fatalf("alert %q: %v", m.data, err)
		}
		got = append(got, fmt.Sprintf("%s:%s:%s:%v", a.Name, a.Data, a.DataEncoding, a.Broadcast))
	}
	if want := "deploy:v2::false cert-renewed:/wA=:base64:true"; strings.Join(got, " ") != want {
		t.Fatalf("alerts %v, want %s", got, want)
	}
}

// noDeadline is a connection whose write deadline is not needed.
type noDeadline struct{ net.Conn }

func (noDeadline) SetWriteDeadline(time.Time) error { return nil }

// TestWSEnvelopeBufferNotKept: an envelope larger than 64 KiB (an inline
// payload of control characters grows sixfold as JSON) is not kept in the
// socket's buffer after it is written.
func TestWSEnvelopeBufferNotKept(t *testing.T) {
	app := newTestApp(t)
	h := &Poll{Envelope: true}
	use(t, app, h)
	accepted := make(chan *websocket.Conn, 1)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, err := websocket.Accept(w, r, nil)
		if err != nil {
			return
		}
		accepted <- c
	}))
	defer srv.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cc, _, err := wsDial(t, ctx, srv.URL, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer cc.CloseNow()
	go func() {
		for {
			if _, _, err := cc.Read(ctx); err != nil {
				return
			}
		}
	}()
	sc := <-accepted
	defer sc.CloseNow()
	cc.SetReadLimit(-1)
	s := &wsSink{h: h, c: &wsConn{Conn: sc, nc: noDeadline{}, timeout: 10 * time.Second}, ctx: ctx, envelope: true}
	for _, size := range []int{100, 60 << 10, 100} {
		ev := &event{Event: &events.Event{Seq: 1, Source: "p", Name: "e", Data: bytes.Repeat([]byte{1}, size)}}
		if err := s.event(ev); err != nil {
			t.Fatal(err)
		}
		if c := s.buf.Cap(); c > writeChunk {
			t.Fatalf("after an envelope of a %d-byte payload the socket keeps a %d-byte buffer, want at most %d", size, c, writeChunk)
		}
	}
}
