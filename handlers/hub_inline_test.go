package handlers

import (
	"fmt"
	"io"
	"net"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"golang.org/x/sys/unix"

	"github.com/ipcbus/caddy-ipcbus/events"
)

// rawStream opens a stream to srv over a plain TCP connection and reads
// what comes until the server has sent nothing for a moment.
func rawStream(t *testing.T, addr, path string) net.Conn {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	fmt.Fprintf(c, "GET %s HTTP/1.1\r\nHost: test\r\nAccept: text/event-stream\r\n\r\n", path)
	return c
}

// drain reads what the connection has for up to d.
func drain(t *testing.T, c net.Conn, d time.Duration) string {
	t.Helper()
	var b strings.Builder
	buf := make([]byte, 64<<10)
	for {
		c.SetReadDeadline(time.Now().Add(d))
		n, err := c.Read(buf)
		b.Write(buf[:n])
		if err != nil {
			return b.String()
		}
	}
}

// queued is what the connection's socket holds now, read without waiting.
func queued(t *testing.T, c net.Conn) string {
	t.Helper()
	raw, err := c.(*net.TCPConn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 64<<10)
	n := 0
	raw.Control(func(fd uintptr) {
		n, _, err = unix.Recvfrom(int(fd), buf, unix.MSG_DONTWAIT)
	})
	if err != nil && err != syscall.EAGAIN {
		t.Fatal(err)
	}
	return string(buf[:max(n, 0)])
}

// TestHubInlineFromPoster: a small shard's streams are written by the
// poster itself: the event is on the client's socket when Post returns,
// with no wake-up of the shard's goroutine in between. (Not every time: a
// poster that finds the shard being written, by its goroutine or by the
// delivery goroutine, wakes the goroutine instead.)
func TestHubInlineFromPoster(t *testing.T) {
	app := newTestApp(t)
	h := &Poll{StreamWriters: 1}
	use(t, app, h)
	srv, _ := pollServer(t, h)
	c := rawStream(t, srv.Listener.Addr().String(), "/e?source=p")
	waitShared(t, h, 1)
	if head := drain(t, c, 100*time.Millisecond); !strings.HasPrefix(head, "HTTP/1.1 200") {
		t.Fatalf("answer %q", head)
	}
	const posts = 40
	before, there, rest := stats.inlinePasses.Load(), 0, ""
	for i := range posts {
		// Paced, as most posts come: the delivery goroutine, woken by the
		// previous one, has gone back to sleep.
		time.Sleep(2 * time.Millisecond)
		data := fmt.Sprintf("inline-%d", i)
		post(t, app, "p", "e", data)
		got := queued(t, c)
		if strings.Contains(got, "data: "+data+"\n") {
			there++
		}
		rest += got
	}
	t.Logf("%d of %d on the socket at once", there, posts)
	if there < posts/2 {
		t.Fatalf("%d of %d events on the socket when Post returned", there, posts)
	}
	if stats.inlinePasses.Load() == before {
		t.Fatal("no inline pass")
	}
	rest += drain(t, c, 200*time.Millisecond)
	for i := range posts {
		if !strings.Contains(rest, fmt.Sprintf("data: inline-%d\n", i)) {
			t.Fatalf("event %d never came", i)
		}
	}
}

// TestHubInlineFromDelivery: another process's event is written to a small
// shard's streams by the delivery goroutine that reads it.
func TestHubInlineFromDelivery(t *testing.T) {
	app := newTestApp(t)
	h := &Poll{StreamWriters: 1}
	use(t, app, h)
	srv, _ := pollServer(t, h)
	c := openSSE(t, srv.URL+"/e?source=p")
	waitShared(t, h, 1)
	other, err := events.New(events.Options{Zone: app.z, PID: 1 << 22, Generation: 1})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { other.Close(time.Second); other.Detach() })
	before := stats.inlinePasses.Load()
	for i := range 50 { // one at a time: each is a delivery of its own
		if _, err := other.Post("p", "e", fmt.Sprint(i)); err != nil {
			t.Fatal(err)
		}
		ev, err := c.next()
		if err != nil || ev.data != fmt.Sprint(i) {
			t.Fatalf("event %d: %+v %v", i, ev, err)
		}
	}
	if stats.inlinePasses.Load() == before {
		t.Fatal("no inline pass for another process's events")
	}
}

// TestHubLargeShardByWriter: a shard with more than hubInline streams is
// written by its own goroutine, so a post never waits for its writes.
func TestHubLargeShardByWriter(t *testing.T) {
	app := newTestApp(t)
	h := &Poll{StreamWriters: 1}
	use(t, app, h)
	srv, _ := pollServer(t, h)
	var cs []*sseClient
	for range hubInline + 1 {
		cs = append(cs, openSSE(t, srv.URL+"/e?source=p"))
	}
	waitShared(t, h, hubInline+1)
	if n := postToAll(t, app, cs, 20); n != 0 {
		t.Fatalf("%d inline passes over a shard of %d streams", n, hubInline+1)
	}
}

// postToAll posts n events, checks that every client gets them all in
// order, and returns the inline passes made meanwhile.
func postToAll(t *testing.T, app *testApp, cs []*sseClient, n int) int64 {
	t.Helper()
	before := stats.inlinePasses.Load()
	for i := range n {
		post(t, app, "p", "e", fmt.Sprint(i))
	}
	for k, c := range cs {
		for i := range n {
			if ev, err := c.next(); err != nil || ev.data != fmt.Sprint(i) {
				t.Fatalf("client %d, event %d: %+v %v", k, i, ev, err)
			}
		}
	}
	return stats.inlinePasses.Load() - before
}

// TestHubInlineProcessCap: small shards of several handlers, with more
// streams than hubInlineTotal between them, are written by their
// goroutines: one post never writes them all itself.
func TestHubInlineProcessCap(t *testing.T) {
	app := newTestApp(t)
	const handlers, each = 3, 6 // 18 streams, 6 per shard
	var cs []*sseClient
	for range handlers {
		h := &Poll{StreamWriters: 1}
		use(t, app, h)
		srv, _ := pollServer(t, h)
		for range each {
			cs = append(cs, openSSE(t, srv.URL+"/e?source=p"))
		}
		waitShared(t, h, each)
	}
	if n := postToAll(t, app, cs, 10); n != 0 {
		t.Fatalf("%d inline passes with %d streams in the process's shared writers", n, handlers*each)
	}
}

// TestHubInlineConcurrentPosters: posters racing each other and the
// shard's goroutine for a small shard: each stream gets every event once,
// in the bus's order (run with -race).
func TestHubInlineConcurrentPosters(t *testing.T) {
	app := newTestApp(t)
	h := &Poll{StreamWriters: 1}
	use(t, app, h)
	srv, _ := pollServer(t, h)
	const clients, posters, each = 3, 4, 300
	var cs []*sseClient
	for range clients {
		cs = append(cs, openSSE(t, srv.URL+"/e?source=p"))
	}
	waitShared(t, h, clients)
	errs := make(chan error, posters)
	for p := range posters {
		go func() {
			for i := range each {
				if _, err := app.bus.Post("p", "e", fmt.Sprintf("%d-%d", p, i)); err != nil {
					errs <- err
					return
				}
			}
			errs <- nil
		}()
	}
	for range posters {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	for k, c := range cs {
		var last uint64
		next := make([]int, posters)
		for range posters * each {
			ev, err := c.next()
			if err != nil {
				t.Fatalf("client %d: %v", k, err)
			}
			var id uint64
			var p, i int
			fmt.Sscan(ev.id, &id)
			fmt.Sscanf(ev.data, "%d-%d", &p, &i)
			if id <= last || p < 0 || p >= posters || i != next[p] {
				t.Fatalf("client %d: event %s %q after id %d, want poster %d's #%d", k, ev.id, ev.data, last, p, next[max(p, 0)%posters])
			}
			last, next[p] = id, i+1
		}
	}
}

// slowRaw is a socket whose writes each take 250 µs: eight such streams
// make a shard's pass as long as hundreds of real ones.
type slowRaw struct{ syscall.RawConn }

func (s slowRaw) Write(f func(uintptr) bool) error {
	time.Sleep(250 * time.Microsecond)
	return s.RawConn.Write(f)
}

// tcpPair is a connected pair of sockets: the client's end, and the
// server's as a RawConn.
func tcpPair(t *testing.T, ln net.Listener) (net.Conn, syscall.RawConn) {
	t.Helper()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	sc, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close(); sc.Close() })
	raw, err := sc.(*net.TCPConn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	return c, raw
}

// TestHubKeepAliveUnderLoad: while events keep coming faster than a
// shard's pass takes, its goroutine still writes keep-alives (to a stream
// whose filter drops every event) and still sees the stop.
func TestHubKeepAliveUnderLoad(t *testing.T) {
	app := newTestApp(t)
	h := &Poll{StreamWriters: 1, KeepAlive: caddy.Duration(50 * time.Millisecond)}
	use(t, app, h)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	// These streams have no goroutine of their own: the test takes them
	// out of the hub at the end, as their goroutines would.
	var joined []*hubStream
	join := func(s *hubStream) {
		h.hub.join(h, s, app.bus)
		joined = append(joined, s)
	}
	defer func() {
		for _, s := range joined {
			s.leave(h)
		}
	}()
	quiet, raw := tcpPair(t, ln)
	join(&hubStream{raw: raw, poke: func() {}, since: app.bus.Tail(), keep: func(s, _ string) bool { return s == "quiet" }})
	for range hubInline {
		c, raw := tcpPair(t, ln)
		go io.Copy(io.Discard, c)
		join(&hubStream{raw: slowRaw{raw}, poke: func() {}, since: app.bus.Tail()})
	}
	stop := make(chan struct{})
	posted := make(chan struct{})
	go func() {
		defer close(posted)
		for {
			select {
			case <-stop:
				return
			default:
			}
			app.bus.Post("busy", "e", "x")
			time.Sleep(time.Millisecond)
		}
	}()
	defer func() { close(stop); <-posted }()
	if got := drainUntil(t, quiet, "keep-alive", 10*time.Second); !strings.Contains(got, "keep-alive") {
		t.Fatalf("no keep-alive in 10 s under load: %q", got)
	}
	h.stop()
	sh := h.hub.cur.shards[0]
	for deadline := time.Now().Add(10 * time.Second); !sh.ended.Load(); time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the shard did not stop in 10 s under load")
		}
	}
}

// drainUntil reads c until what it read contains want, or for d.
func drainUntil(t *testing.T, c net.Conn, want string, d time.Duration) string {
	t.Helper()
	var b strings.Builder
	buf := make([]byte, 4096)
	for end := time.Now().Add(d); time.Now().Before(end) && !strings.Contains(b.String(), want); {
		c.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
		n, _ := c.Read(buf)
		b.Write(buf[:n])
	}
	return b.String()
}
