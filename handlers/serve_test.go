package handlers

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"

	"github.com/ipcbus/caddy-ipcbus/events"
	"github.com/ipcbus/caddy-ipcbus/ipc"
	"github.com/ipcbus/caddy-ipcbus/workermgr"
	"github.com/ipcbus/caddy-ipcbus/zone"
)

// testApp is a running ipcbus app on a zone of its own: a bus, an alerts
// endpoint and a worker of this process.
type testApp struct {
	z          *zone.Zone
	bus        *events.Bus
	alerts     *ipc.IPC
	maxPayload int64
	live       map[int]bool
	down       bool // Bus and IPC answer nil, as a stopped app's
}

func (a *testApp) Bus() *events.Bus {
	if a.down {
		return nil
	}
	return a.bus
}

func (a *testApp) IPC() *ipc.IPC {
	if a.down {
		return nil
	}
	return a.alerts
}
func (a *testApp) MaxPayloadBytes() int64          { return a.maxPayload }
func (a *testApp) UniqueKeyTimeout() time.Duration { return time.Minute }
func (a *testApp) LiveWorker(pid int) bool         { return a.live[pid] }

func newTestApp(t *testing.T) *testApp {
	t.Helper()
	z, err := zone.Open(zone.Options{Name: "h", Dir: t.TempDir(), Size: 4 << 20})
	if err != nil {
		t.Fatal(err)
	}
	w, err := workermgr.Join(z, workermgr.Config{Generation: 1})
	if err != nil {
		t.Fatal(err)
	}
	bus, err := events.New(events.Options{Zone: z, PID: os.Getpid(), Generation: 1, UniqueTimeout: time.Minute, MaxPayload: 64 << 20})
	if err != nil {
		t.Fatal(err)
	}
	c, err := ipc.New(ipc.Options{Zone: z, PID: os.Getpid(), Generation: 1})
	if err != nil {
		t.Fatal(err)
	}
	c.SetWorkerSlot(w.Slot())
	if err := c.Start(); err != nil {
		t.Fatal(err)
	}
	if err := bus.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		bus.Close(time.Second)
		c.Close()
		w.Leave(workermgr.ReasonShutdown)
		bus.Detach()
		c.Detach()
		z.Close()
	})
	return &testApp{z: z, bus: bus, alerts: c, maxPayload: 64 << 20, live: map[int]bool{os.Getpid(): true}}
}

// use wires a handler to the app as Provision would.
func use(t *testing.T, app *testApp, h any) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	b := base{app: app, stopping: ctx, stop: cancel}
	switch h := h.(type) {
	case *Send:
		h.base = b
		h.limit = bodyLimit(h.MaxSize, app.maxPayload)
	case *Broadcast:
		h.base = b
		h.limit = bodyLimit(h.MaxSize, app.maxPayload)
	case *Poll:
		h.base = b
		h.logger = zap.NewNop()
		h.setDefaults()
		h.limit = bodyLimit(h.MaxSize, app.maxPayload)
	default:
		t.Fatalf("%T", h)
	}
}

// untouchable is a body that fails the test when it is read.
type untouchable struct{ t *testing.T }

func (u untouchable) Read([]byte) (int, error) {
	u.t.Error("the body was read")
	return 0, io.EOF
}

// zeros is an endless body of zero bytes that counts what was read.
type zeros struct{ n int64 }

func (z *zeros) Read(p []byte) (int, error) {
	clear(p)
	z.n += int64(len(p))
	return len(p), nil
}

type answer struct {
	code   int
	header http.Header
	body   string
}

// request makes a request as Caddy hands it to a handler: with a replacer
// for the placeholders.
func request(method, target string, body io.Reader, length int64, header ...string) *http.Request {
	r := httptest.NewRequest(method, target, body)
	r.ContentLength = length
	for i := 0; i+1 < len(header); i += 2 {
		r.Header.Set(header[i], header[i+1])
	}
	return r.WithContext(context.WithValue(r.Context(), caddy.ReplacerCtxKey, caddyhttp.NewTestReplacer(r)))
}

type serveFunc func(http.ResponseWriter, *http.Request) error

func run(t *testing.T, serve serveFunc, r *http.Request) answer {
	t.Helper()
	rec := httptest.NewRecorder()
	if err := serve(rec, r); err != nil {
		t.Errorf("%s %s: ServeHTTP returned %v", r.Method, r.URL, err)
	}
	return answer{code: rec.Code, header: rec.Header(), body: rec.Body.String()}
}

func sendServe(h *Send) serveFunc {
	return func(w http.ResponseWriter, r *http.Request) error { return h.ServeHTTP(w, r, nil) }
}

func broadcastServe(h *Broadcast) serveFunc {
	return func(w http.ResponseWriter, r *http.Request) error { return h.ServeHTTP(w, r, nil) }
}

func pollServe(h *Poll) serveFunc {
	return func(w http.ResponseWriter, r *http.Request) error { return h.ServeHTTP(w, r, nil) }
}

// text is an answer's error message, or its body when it is no error.
func text(a answer) string {
	var e struct{ Error string }
	if a.code != 200 && json.Unmarshal([]byte(a.body), &e) == nil && e.Error != "" {
		return e.Error
	}
	return a.body
}

func errorOf(t *testing.T, a answer) string {
	t.Helper()
	var e struct{ Error string }
	if err := json.Unmarshal([]byte(a.body), &e); err != nil || e.Error == "" {
		t.Fatalf("answer %d %q is not a JSON error", a.code, a.body)
	}
	return e.Error
}

// TestSendServeHTTP: every answer of ipcbus_send, the cheap checks made
// before the body is read, and max_size.
func TestSendServeHTTP(t *testing.T) {
	app := newTestApp(t)
	me := os.Getpid()
	h := &Send{MaxSize: 1024}
	use(t, app, h)
	for _, c := range []struct {
		name, method, target string
		body                 io.Reader // nil: one that must not be read
		length               int64
		code                 int
		want                 string
	}{
		{"method", "GET", "/s?pid=1&name=x", nil, 0, 405, "method GET not allowed: use POST"},
		{"bad pid", "POST", "/s?pid=abc&name=x", nil, 10, 400, `pid "abc" is not a process id`},
		{"no pid", "POST", "/s?name=x", nil, 10, 400, `pid "" is not a process id`},
		{"no name", "POST", fmt.Sprintf("/s?pid=%d", me), nil, 10, 400, "alert name cannot be empty"},
		{"long name", "POST", fmt.Sprintf("/s?pid=%d&name=%s", me, strings.Repeat("n", 255)), nil, 10, 400, "alert name length cannot exceed 254, was 255"},
		{"dead pid", "POST", "/s?pid=999999999&name=x", nil, 1 << 30, 404, "No worker process with PID 999999999"},
		{"length over max_size", "POST", fmt.Sprintf("/s?pid=%d&name=x", me), nil, 1 << 30, 413, "request body over the limit of 1024 bytes"},
		{"unsized body over max_size", "POST", fmt.Sprintf("/s?pid=%d&name=x", me), strings.NewReader(strings.Repeat("x", 1025)), -1, 413, "request body over the limit of 1024 bytes"},
		{"at max_size", "POST", fmt.Sprintf("/s?pid=%d&name=x", me), strings.NewReader(strings.Repeat("x", 1024)), 1024, 200, `{"ok":true}`},
		{"unsized at max_size", "POST", fmt.Sprintf("/s?pid=%d&name=x", me), strings.NewReader(strings.Repeat("x", 1024)), -1, 200, `{"ok":true}`},
	} {
		t.Run(c.name, func(t *testing.T) {
			body := c.body
			if body == nil {
				body = untouchable{t}
			}
			a := run(t, sendServe(h), request(c.method, c.target, body, c.length))
			if a.code != c.code || !strings.Contains(text(a), c.want) {
				t.Fatalf("%d %s, want %d %q", a.code, a.body, c.code, c.want)
			}
			if c.code == 405 && a.header.Get("Allow") != "POST" {
				t.Errorf("Allow: %q", a.header.Get("Allow"))
			}
			// Answered without reading the body: the connection closes
			// after the answer, so net/http does not read the body first.
			if unread := (c.body == nil && c.length != 0) || c.code == 413; unread != (a.header.Get("Connection") == "close") {
				t.Errorf("body unread %v, Connection: %q", unread, a.header.Get("Connection"))
			}
		})
	}
	t.Run("not running", func(t *testing.T) {
		app.down = true
		defer func() { app.down = false }()
		a := run(t, sendServe(h), request("POST", fmt.Sprintf("/s?pid=%d&name=x", me), untouchable{t}, 3))
		if a.code != 503 {
			t.Fatalf("%d %s", a.code, a.body)
		}
	})
	t.Run("default max_size", func(t *testing.T) {
		d := &Send{}
		use(t, app, d)
		if d.limit != DefaultMaxSize {
			t.Fatalf("limit %d", d.limit)
		}
		a := run(t, sendServe(d), request("POST", fmt.Sprintf("/s?pid=%d&name=x", me), untouchable{t}, DefaultMaxSize+1))
		if a.code != 413 {
			t.Fatalf("%d %s", a.code, a.body)
		}
		small := &testApp{bus: app.bus, alerts: app.alerts, maxPayload: 100, live: app.live}
		d = &Send{}
		use(t, small, d)
		if d.limit != 100 {
			t.Fatalf("limit %d with max_payload 100", d.limit)
		}
	})
}

// TestBodyCutOff: a body without a length is cut off right after the
// limit, not read to its end.
func TestBodyCutOff(t *testing.T) {
	app := newTestApp(t)
	h := &Send{MaxSize: 4096}
	use(t, app, h)
	z := &zeros{}
	a := run(t, sendServe(h), request("POST", fmt.Sprintf("/s?pid=%d&name=x", os.Getpid()), z, -1))
	if a.code != 413 || z.n > 1<<20 {
		t.Fatalf("%d %s after reading %d bytes", a.code, a.body, z.n)
	}
}

// TestBroadcastServeHTTP: every answer of ipcbus_broadcast, reserved
// names refused before the body is read, max_size, and the full unique
// key table.
func TestBroadcastServeHTTP(t *testing.T) {
	app := newTestApp(t)
	release := ReserveSource("upstreams")
	defer release()
	h := &Broadcast{MaxSize: 1024}
	use(t, app, h)
	for _, c := range []struct {
		name, target string
		body         io.Reader
		length       int64
		ctype        string
		code         int
		want         string
	}{
		{"no event", "/p?source=s", nil, 3, "", 400, "event is empty"},
		{"no source", "/p?event=e", nil, 3, "", 400, "source is empty"},
		{"line break", "/p?source=s&event=x%0Aid:%209", nil, 3, "", 400, "holds a line break or NUL"},
		{"long unique", "/p?source=s&event=e&unique=" + strings.Repeat("u", 256), nil, 3, "", 400, "unique key is 256 bytes"},
		{"source ipcbus", "/p?source=ipcbus&event=stopping", nil, 3, "", 400, `source "ipcbus" is reserved`},
		{"source ipcbus.workers", "/p?source=ipcbus.workers&event=worker_crashed", nil, 3, "", 400, `source "ipcbus.workers" is reserved`},
		{"source caddy", "/p?source=caddy&event=cert_obtained", nil, 3, "", 400, `source "caddy" is reserved`},
		{"a forwarder's source", "/p?source=upstreams&event=down", nil, 3, "", 400, `source "upstreams" is reserved`},
		{"notice name", "/p?source=s&event=ipcbus.lost", nil, 3, "", 400, `names starting with "ipcbus." are reserved`},
		{"length over max_size", "/p?source=s&event=e", nil, 1 << 30, "", 413, "request body over the limit of 1024 bytes"},
		{"bad JSON", "/p?source=s&event=e", strings.NewReader("{bad"), 4, "application/json", 400, "not valid JSON"},
		{"ok", "/p?source=ipcbusy&event=e", strings.NewReader("hello"), 5, "", 200, `{"seq":`},
		{"ok JSON", "/p?source=s&event=e", strings.NewReader(`{"a":1}`), 7, "application/json", 200, `{"seq":`},
		{"unique", "/p?source=s&event=e&unique=k", strings.NewReader("x"), 1, "", 200, `{"seq":`},
		{"duplicate", "/p?source=s&event=e&unique=k", strings.NewReader("x"), 1, "", 409, "duplicate unique key"},
	} {
		t.Run(c.name, func(t *testing.T) {
			body := c.body
			if body == nil {
				body = untouchable{t}
			}
			a := run(t, broadcastServe(h), request("POST", c.target, body, c.length, "Content-Type", c.ctype))
			if a.code != c.code || !strings.Contains(text(a), c.want) {
				t.Fatalf("%d %s, want %d %q", a.code, a.body, c.code, c.want)
			}
		})
	}
	t.Run("released forwarder source", func(t *testing.T) {
		release()
		a := run(t, broadcastServe(h), request("POST", "/p?source=upstreams&event=down", strings.NewReader("x"), 1))
		if a.code != 200 {
			t.Fatalf("%d %s", a.code, a.body)
		}
	})
	t.Run("alert", func(t *testing.T) {
		al := &Broadcast{Alert: true}
		use(t, app, al)
		if a := run(t, broadcastServe(al), request("POST", "/a", untouchable{t}, 3)); a.code != 400 || !strings.Contains(a.body, "alert name cannot be empty") {
			t.Fatalf("%d %s", a.code, a.body)
		}
		if a := run(t, broadcastServe(al), request("POST", "/a?name=x", untouchable{t}, DefaultMaxSize+1)); a.code != 413 {
			t.Fatalf("%d %s", a.code, a.body)
		}
		if a := run(t, broadcastServe(al), request("POST", "/a?name=x", strings.NewReader("d"), 1)); a.code != 200 || a.body != "{\"ok\":true}\n" {
			t.Fatalf("%d %s", a.code, a.body)
		}
	})
	t.Run("unique table full", func(t *testing.T) {
		var full bool
		for i := 0; i < 2*zone.DefaultUniqueKeys && !full; i++ {
			a := run(t, broadcastServe(h), request("POST", fmt.Sprintf("/p?source=s&event=e&unique=key-%d", i), strings.NewReader("x"), 1))
			switch a.code {
			case 200:
			case 503:
				full = true
				if !strings.Contains(errorOf(t, a), "unique key table full") || a.header.Get("Retry-After") != "60" {
					t.Fatalf("%d %s Retry-After %q", a.code, a.body, a.header.Get("Retry-After"))
				}
			default:
				t.Fatalf("post %d: %d %s", i, a.code, a.body)
			}
		}
		if !full {
			t.Fatal("the unique key table never filled")
		}
		if n := app.bus.Stats().UniqueTableFull; n != 1 {
			t.Fatalf("unique_table_full %d after one refusal, want 1", n)
		}
	})
}

// post puts an event on the bus as Go code would (reserved sources too).
func post(t *testing.T, app *testApp, source, event string, data any) uint64 {
	t.Helper()
	seq, err := app.bus.Post(source, event, data)
	if err != nil {
		t.Fatal(err)
	}
	return seq
}

func page(t *testing.T, a answer) EventsPage {
	t.Helper()
	return decodePage[EventsPage](t, a)
}

// decodePage decodes a 200 answer's JSON page.
func decodePage[T any](t *testing.T, a answer) T {
	t.Helper()
	var p T
	if a.code != 200 || json.Unmarshal([]byte(a.body), &p) != nil {
		t.Fatalf("not a page: %d %s", a.code, a.body)
	}
	return p
}

// TestPollServeHTTP: the long-poll's answers: methods, HEAD, headers,
// timeout=0, the limit as a ceiling, the byte cap, payload encodings.
func TestPollServeHTTP(t *testing.T) {
	app := newTestApp(t)
	h := &Poll{Limit: 3, MaxBytes: 1000}
	use(t, app, h)
	first := post(t, app, "p", "text", "héllo <b>\n")
	post(t, app, "p", "json", json.RawMessage(`{"a": [1, 2]}`))
	post(t, app, "p", "bin", []byte{0xff, 0xfe, 0, 'x'})
	post(t, app, "p", "four", "4")
	post(t, app, "p", "five", "5")

	t.Run("method", func(t *testing.T) {
		a := run(t, pollServe(h), request("POST", "/e", nil, 0))
		if a.code != 405 || a.header.Get("Allow") != "GET, HEAD" {
			t.Fatalf("%d %v %s", a.code, a.header, a.body)
		}
	})
	t.Run("HEAD", func(t *testing.T) {
		start := time.Now()
		a := run(t, pollServe(h), request("HEAD", "/e", nil, 0))
		if a.code != 200 || a.body != "" || a.header.Get("Content-Type") != "application/json" || time.Since(start) > 5*time.Second {
			t.Fatalf("%d %v %q", a.code, a.header, a.body)
		}
		a = run(t, pollServe(h), request("HEAD", "/e", nil, 0, "Accept", "text/event-stream"))
		if a.code != 200 || a.body != "" || a.header.Get("Content-Type") != "text/event-stream" {
			t.Fatalf("%d %v %q", a.code, a.header, a.body)
		}
	})
	t.Run("headers", func(t *testing.T) {
		a := run(t, pollServe(h), request("GET", fmt.Sprintf("/e?since=%d", first), nil, 0))
		if a.header.Get("Cache-Control") != "no-store" || a.header.Get("Vary") != "Accept" || a.header.Get("Content-Type") != "application/json" {
			t.Fatalf("headers %v", a.header)
		}
	})
	t.Run("limit is a ceiling", func(t *testing.T) {
		p := page(t, run(t, pollServe(h), request("GET", fmt.Sprintf("/e?since=%d&limit=10000", first), nil, 0)))
		if len(p.Events) != 3 || p.Next != first+3 {
			t.Fatalf("%d events, next %d", len(p.Events), p.Next)
		}
		p = page(t, run(t, pollServe(h), request("GET", fmt.Sprintf("/e?since=%d&limit=2", first), nil, 0)))
		if len(p.Events) != 2 || p.Next != first+2 {
			t.Fatalf("%d events, next %d", len(p.Events), p.Next)
		}
		a := run(t, pollServe(h), request("GET", "/e?limit=0", nil, 0))
		if a.code != 400 || !strings.Contains(a.body, `limit=\"0\"`) {
			t.Fatalf("%d %s", a.code, a.body)
		}
	})
	t.Run("payloads", func(t *testing.T) {
		p := page(t, run(t, pollServe(h), request("GET", fmt.Sprintf("/e?since=%d", first), nil, 0)))
		var text string
		if json.Unmarshal(p.Events[0].Data, &text) != nil || text != "héllo <b>\n" || p.Events[0].DataEncoding != "" {
			t.Errorf("text: %s %q", p.Events[0].Data, p.Events[0].DataEncoding)
		}
		var obj struct{ A []int }
		if json.Unmarshal(p.Events[1].Data, &obj) != nil || len(obj.A) != 2 || p.Events[1].DataEncoding != "" {
			t.Errorf("JSON: %s", p.Events[1].Data)
		}
		var b64 []byte // encoding/json decodes base64 into []byte
		if json.Unmarshal(p.Events[2].Data, &b64) != nil || !bytes.Equal(b64, []byte{0xff, 0xfe, 0, 'x'}) || p.Events[2].DataEncoding != "base64" {
			t.Errorf("binary: %s %q", p.Events[2].Data, p.Events[2].DataEncoding)
		}
	})
	t.Run("timeout=0", func(t *testing.T) {
		start := time.Now()
		p := page(t, run(t, pollServe(h), request("GET", fmt.Sprintf("/e?since=%d&timeout=0", first+3), nil, 0)))
		if len(p.Events) != 2 || time.Since(start) > 5*time.Second {
			t.Fatalf("%d events after %v", len(p.Events), time.Since(start))
		}
		p = page(t, run(t, pollServe(h), request("GET", "/e?timeout=0", nil, 0)))
		if len(p.Events) != 0 || time.Since(start) > 5*time.Second {
			t.Fatalf("%d events after %v", len(p.Events), time.Since(start))
		}
		a := run(t, pollServe(h), request("GET", "/e?timeout=-1", nil, 0))
		if a.code != 400 {
			t.Fatalf("timeout=-1: %d", a.code)
		}
	})
}

// TestPollPageBytes: an answer holds about max_bytes of payload, and at
// least one event, however large.
func TestPollPageBytes(t *testing.T) {
	app := newTestApp(t)
	h := &Poll{MaxBytes: 250 << 10}
	use(t, app, h)
	big := bytes.Repeat([]byte("a"), 100<<10) // over the inline limit: blobs
	first := post(t, app, "p", "e", big)
	for i := 0; i < 4; i++ {
		post(t, app, "p", "e", big)
	}
	huge := post(t, app, "p", "huge", bytes.Repeat([]byte("b"), 600<<10))
	post(t, app, "p", "e", "small")
	p := page(t, run(t, pollServe(h), request("GET", fmt.Sprintf("/e?since=%d", first), nil, 0)))
	if len(p.Events) != 2 || p.Next != first+2 || p.Lost != 0 {
		t.Fatalf("first page: %d events, next %d", len(p.Events), p.Next)
	}
	p = page(t, run(t, pollServe(h), request("GET", fmt.Sprintf("/e?since=%d", huge), nil, 0)))
	if len(p.Events) != 1 || p.Next != huge+1 || len(p.Events[0].Data) < 600<<10 {
		t.Fatalf("an event over max_bytes: %d events, next %d", len(p.Events), p.Next)
	}
	// Every event comes exactly once, page after page.
	var seqs []uint64
	for since := first; since < huge+2; {
		p := page(t, run(t, pollServe(h), request("GET", fmt.Sprintf("/e?since=%d&timeout=0", since), nil, 0)))
		for _, e := range p.Events {
			seqs = append(seqs, e.Seq)
		}
		since = p.Next
	}
	if len(seqs) != 7 || seqs[0] != first || seqs[6] != huge+1 {
		t.Fatalf("paged: %v", seqs)
	}
}

// TestPollReserved: reserved sources reach a poller only through a
// configured source that names them.
func TestPollReserved(t *testing.T) {
	app := newTestApp(t)
	release := ReserveSource("fwd")
	defer release()
	first := post(t, app, "ipcbus.workers", "worker_crashed", "w")
	post(t, app, "ipcbus", "stopping", "s")
	post(t, app, "caddy", "cert_obtained", "c")
	post(t, app, "fwd", "down", "f")
	post(t, app, "app", "e", "a")
	for _, c := range []struct {
		name    string
		sources []string
		query   string
		want    string
	}{
		{"no filter", nil, "", "app"},
		{"query", nil, "&source=ipcbus*,caddy,fwd,app", "app"},
		{"query star", nil, "&source=*", "app"},
		{"configured star", []string{"*"}, "", "app"},
		{"configured prefix too short", []string{"ipc*", "cad*"}, "", ""},
		{"configured ipcbus*", []string{"ipcbus*"}, "", "ipcbus.workers ipcbus"},
		{"configured ipcbus.*", []string{"ipcbus.*"}, "", "ipcbus.workers"},
		{"configured exact", []string{"ipcbus.workers", "caddy", "fwd"}, "", "ipcbus.workers caddy fwd"},
		{"configured placeholder", []string{"{http.request.uri.query.s}"}, "&s=ipcbus.workers", ""},
	} {
		t.Run(c.name, func(t *testing.T) {
			h := &Poll{Sources: c.sources}
			use(t, app, h)
			p := page(t, run(t, pollServe(h), request("GET", fmt.Sprintf("/e?since=%d&timeout=0%s", first, c.query), nil, 0)))
			var got []string
			for _, e := range p.Events {
				got = append(got, e.Source)
			}
			if strings.Join(got, " ") != c.want {
				t.Fatalf("sources %q, want %q", got, c.want)
			}
		})
	}
}

// TestMaxStreamsPerHandler: max_streams counts a handler's own polls; the
// process-wide cap counts all.
func TestMaxStreamsPerHandler(t *testing.T) {
	app := newTestApp(t)
	one, other := &Poll{MaxStreams: 1}, &Poll{MaxStreams: 1}
	use(t, app, one)
	use(t, app, other)
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		run(t, pollServe(one), request("GET", "/e?timeout=1m", nil, 0).WithContext(ctx))
	}()
	for deadline := time.Now().Add(10 * time.Second); one.open.Load() == 0; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the first poll never opened")
		}
	}
	if a := run(t, pollServe(one), request("GET", "/e?timeout=0", nil, 0)); a.code != 503 || !strings.Contains(a.body, "limit 1 for this route") {
		t.Fatalf("the same handler: %d %s", a.code, a.body)
	}
	if a := run(t, pollServe(other), request("GET", "/e?timeout=0", nil, 0)); a.code != 200 {
		t.Fatalf("another handler: %d %s", a.code, a.body)
	}
	SetProcessMaxStreams(1)
	defer SetProcessMaxStreams(0)
	if a := run(t, pollServe(other), request("GET", "/e?timeout=0", nil, 0)); a.code != 503 || !strings.Contains(a.body, "1 for the process") {
		t.Fatalf("over the process cap: %d %s", a.code, a.body)
	}
	cancel() // the client goes away: no answer, no error
	wg.Wait()
	if one.open.Load() != 0 || ReadStats().OpenStreams != 0 {
		t.Fatalf("slots not given back: %d %d", one.open.Load(), ReadStats().OpenStreams)
	}
}

// failingWriter is a client that went away: every write fails.
type failingWriter struct{ h http.Header }

func (f *failingWriter) Header() http.Header       { return f.h }
func (f *failingWriter) WriteHeader(int)           {}
func (f *failingWriter) Write([]byte) (int, error) { return 0, errors.New("broken pipe") }

// TestClientGoneIsNoError: a long-poll whose client went away returns no
// error (Caddy would log it as a server error).
func TestClientGoneIsNoError(t *testing.T) {
	app := newTestApp(t)
	h := &Poll{}
	use(t, app, h)
	first := post(t, app, "p", "e", "x")
	if err := h.ServeHTTP(&failingWriter{h: http.Header{}}, request("GET", fmt.Sprintf("/e?since=%d", first), nil, 0), nil); err != nil {
		t.Fatalf("a failed write: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(50*time.Millisecond, cancel)
	if a := run(t, pollServe(h), request("GET", "/e?timeout=1m", nil, 0).WithContext(ctx)); a.body != "" {
		t.Fatalf("answered a client that went away: %s", a.body)
	}
}

// TestProcessCap: the process-wide cap is its base, or the largest
// max_streams of a live handler.
func TestProcessCap(t *testing.T) {
	if got := ProcessMaxStreams(); got != DefaultProcessMaxStreams {
		t.Fatalf("cap %d", got)
	}
	release := countHandler(20000)
	small := countHandler(5)
	if got := ProcessMaxStreams(); got != 20000 {
		t.Fatalf("with a handler of 20000: %d", got)
	}
	release()
	release()
	if got := ProcessMaxStreams(); got != DefaultProcessMaxStreams {
		t.Fatalf("after it went: %d", got)
	}
	SetProcessMaxStreams(3) // set by the app's max_streams: exact
	if got := ProcessMaxStreams(); got != 3 {
		t.Fatalf("cap 3 set, a handler of 5: %d", got)
	}
	small()
	SetProcessMaxStreams(0)
	if got := ProcessMaxStreams(); got != DefaultProcessMaxStreams {
		t.Fatalf("reset: %d", got)
	}
}
