package integration

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/ipcbus/caddy-ipcbus/handlers"
)

// wsRoutes is a WebSocket route with envelope and publishing on a node.
const wsRoutes = `handle /ws {
		ipcbus_poll {
			envelope
			publish
			max_size 4KiB
			ping_interval 1s
		}
	}`

// wsDial opens a WebSocket on a process's site (path and query).
func (p *proc) wsDial(t *testing.T, path string) *websocket.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, _, err := websocket.Dial(ctx, "ws"+strings.TrimPrefix(p.url(path), "http"), nil)
	if err != nil {
		t.Fatalf("websocket %s: %v", path, err)
	}
	c.SetReadLimit(-1)
	t.Cleanup(func() { c.CloseNow() })
	return c
}

// wsNext reads the next message within 30 s.
func wsNext(t *testing.T, c *websocket.Conn) (websocket.MessageType, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	typ, b, err := c.Read(ctx)
	if err != nil {
		t.Fatalf("reading a websocket: %v", err)
	}
	return typ, string(b)
}

// TestWebSocketAcrossProcesses: a WebSocket on process B receives, in
// order and byte for byte, what is published to process A; a socket with
// envelope resumes at since; an event published on B's socket is read on
// A; a message over max_size ends the socket with status 1009.
func TestWebSocketAcrossProcesses(t *testing.T) {
	n := newNode(t)
	n.routes = wsRoutes
	a, b := n.start(), n.start()
	raw := b.wsDial(t, "/events?source=chat")
	b.waitFor("the socket to be open", func() bool { return b.stats().HTTP.OpenStreams == 1 })
	const total = 200
	seqs := make([]uint64, total)
	for i := range total {
		seqs[i] = a.publish(t, "source=chat&event=msg", fmt.Sprintf("message %d", i))
	}
	for i := range total {
		if typ, got := wsNext(t, raw); typ != websocket.MessageText || got != fmt.Sprintf("message %d", i) {
			t.Fatalf("message %d: %v %q", i, typ, got)
		}
	}
	// Resume at since, in envelopes.
	env := b.wsDial(t, fmt.Sprintf("/ws?source=chat&since=%d", seqs[150]))
	for i := 150; i < total; i++ {
		_, m := wsNext(t, env)
		var e handlers.EventJSON
		if err := json.Unmarshal([]byte(m), &e); err != nil || e.Seq != seqs[i] || e.Source != "chat" || string(e.Data) != fmt.Sprintf(`"message %d"`, i) || e.PID != a.pid() {
			t.Fatalf("envelope %d: %s (%v), want seq %d from pid %d", i, m, err, seqs[i], a.pid())
		}
	}
	// Publish on B's socket; read it on A.
	ctx := context.Background()
	if err := env.Write(ctx, websocket.MessageText, []byte(`{"source":"chat","event":"ws","data":{"from":"b"},"id":"x1"}`)); err != nil {
		t.Fatal(err)
	}
	var answer struct {
		Seq uint64
		ID  string
	}
	for answer.ID == "" { // the answer and the event itself, in either order
		_, m := wsNext(t, env)
		json.Unmarshal([]byte(m), &answer)
	}
	page, _ := longPoll(t, a.url(fmt.Sprintf("/events?since=%d&timeout=0", answer.Seq)))
	if len(page.Events) != 1 || page.Events[0].Seq != answer.Seq || string(page.Events[0].Data) != `{"from":"b"}` || page.Events[0].PID != b.pid() {
		t.Fatalf("published on B's socket (answer %+v), A reads %+v", answer, page)
	}
	// Over max_size (4KiB): refused by the read limit.
	env.Write(ctx, websocket.MessageText, []byte(`{"source":"chat","event":"ws","data":"`+strings.Repeat("x", 5000)+`"}`))
	for {
		rctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		_, _, err := env.Read(rctx)
		cancel()
		if err != nil {
			if websocket.CloseStatus(err) != websocket.StatusMessageTooBig {
				t.Fatalf("a message over max_size: %v, want close status 1009", err)
			}
			break
		}
	}
}

// TestWebSocketEndsOnReloadAndStop: open sockets get a close frame with
// status 1001 (going away) when the process reloads and when it stops,
// within the bound of the SSE streams; after the reload no goroutine of
// theirs is left.
func TestWebSocketEndsOnReloadAndStop(t *testing.T) {
	n := newNode(t)
	n.routes = wsRoutes
	a := n.start()
	reload := func() {
		if out, err := cli(t, "reload", "--config", a.config, "--adapter", "caddyfile", "--address", a.admin, "--force"); err != nil {
			t.Fatalf("reload: %v\n%s", err, out)
		}
	}
	reload() // the first reload's one-time allocations
	time.Sleep(300 * time.Millisecond)
	g0 := a.goroutines(t)
	open := func() []*websocket.Conn {
		var cs []*websocket.Conn
		for i := range 6 {
			path := "/events"
			if i%2 == 1 {
				path = "/ws" // with publish: a reader of the handler's own
			}
			cs = append(cs, a.wsDial(t, path))
		}
		a.waitFor("6 open sockets", func() bool { return a.stats().HTTP.OpenStreams == 6 })
		return cs
	}
	const bound = 2 * time.Second
	closed := func(what string, cs []*websocket.Conn) {
		start := time.Now()
		for i, c := range cs {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			_, _, err := c.Read(ctx)
			cancel()
			var ce websocket.CloseError
			if !errors.As(err, &ce) || ce.Code != websocket.StatusGoingAway {
				t.Fatalf("socket %d after the %s: %v, want a close frame with status 1001", i, what, err)
			}
		}
		if took := time.Since(start); took > bound {
			t.Fatalf("the %s took %v to close 6 sockets, over %v", what, took, bound)
		}
	}
	cs := open()
	reload()
	closed("reload", cs)
	a.waitFor("the sockets closed by the reload to be counted closed", func() bool { return a.stats().HTTP.OpenStreams == 0 })
	for _, c := range cs {
		c.CloseNow()
	}
	var g int
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		if g = a.goroutines(t); g <= g0+2 {
			break
		}
	}
	if g > g0+2 {
		t.Fatalf("after 6 sockets and a reload: %d goroutines (was %d)", g, g0)
	}
	t.Logf("goroutines before the sockets %d, after the reload %d", g0, g)
	cs = open()
	a.signal(syscall.SIGTERM)
	closed("stop", cs)
	a.waitExit()
}
