package integration

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/ipcbus/caddy-ipcbus/handlers"
)

func (p *proc) url(path string) string { return fmt.Sprintf("http://127.0.0.1:%d%s", p.port, path) }

// publish posts body to /publish on p and returns the event's seq.
func (p *proc) publish(t *testing.T, query, body string) uint64 {
	t.Helper()
	resp, err := http.Post(p.url("/publish?"+query), "text/plain", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var r struct{ Seq uint64 }
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK || json.Unmarshal(b, &r) != nil {
		t.Fatalf("publish: %d %s", resp.StatusCode, b)
	}
	return r.Seq
}

// sseEvent is one parsed Server-Sent Event.
type sseEvent struct{ id, event, data string }

// sse opens a stream and returns a channel of its events; closing ctx ends it.
func sse(t *testing.T, ctx context.Context, url, lastID string) (<-chan sseEvent, error) {
	ch, _, err := sseWith(ctx, http.DefaultClient, url, lastID)
	return ch, err
}

// sseWith is sse through a client of the caller's (HTTP/2, HTTP/3), with
// the response, whose body the channel's reader closes.
func sseWith(ctx context.Context, client *http.Client, url, lastID string) (<-chan sseEvent, *http.Response, error) {
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	req.Header.Set("Accept", "text/event-stream")
	if lastID != "" {
		req.Header.Set("Last-Event-ID", lastID)
	}
	resp, err := client.Do(req)
	if err != nil {
		return nil, nil, err
	}
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		return nil, nil, fmt.Errorf("%s: %s", resp.Status, b)
	}
	ch := make(chan sseEvent, 1024)
	go func() {
		defer resp.Body.Close()
		defer close(ch)
		sc := bufio.NewScanner(resp.Body)
		var ev sseEvent
		var data []string
		for sc.Scan() {
			l := sc.Text()
			switch {
			case l == "":
				if ev.event != "" || len(data) > 0 {
					ev.data = strings.Join(data, "\n")
					ch <- ev
				}
				ev, data = sseEvent{}, nil
			case strings.HasPrefix(l, "id: "):
				ev.id = l[4:]
			case strings.HasPrefix(l, "event: "):
				ev.event = l[7:]
			case strings.HasPrefix(l, "data: "):
				data = append(data, l[6:])
			}
		}
	}()
	return ch, resp, nil
}

func next(t *testing.T, ch <-chan sseEvent) sseEvent {
	t.Helper()
	select {
	case ev, ok := <-ch:
		if !ok {
			t.Fatal("stream ended")
		}
		return ev
	case <-time.After(30 * time.Second):
		t.Fatal("no event within 30s")
	}
	return sseEvent{}
}

// TestSSEAcrossProcesses: a subscriber on process b receives, in order and
// byte for byte, what is published to process a; it resumes after
// Last-Event-ID without losing anything the ring holds.
func TestSSEAcrossProcesses(t *testing.T) {
	n := newNode(t)
	a, b := n.start(), n.start()
	ctx, cancel := context.WithCancel(context.Background())
	ch, err := sse(t, ctx, b.url("/events?source=chat"), "")
	if err != nil {
		t.Fatal(err)
	}
	const total = 200
	var seqs []uint64
	for i := 0; i < total; i++ {
		body := fmt.Sprintf("message %d", i)
		if i == 7 {
			body = "two\nlines"
		}
		seqs = append(seqs, a.publish(t, "source=chat&event=msg", body))
		if i%50 == 0 {
			a.publish(t, "source=other&event=msg", "filtered out")
		}
	}
	for i := 0; i < 100; i++ {
		ev := next(t, ch)
		want := fmt.Sprintf("message %d", i)
		if i == 7 {
			want = "two\nlines"
		}
		if ev.id != strconv.FormatUint(seqs[i], 10) || ev.event != "msg" || ev.data != want {
			t.Fatalf("event %d: %+v, want id %d data %q", i, ev, seqs[i], want)
		}
	}
	cancel() // the client goes away after 100 events and comes back
	ctx2, cancel2 := context.WithCancel(context.Background())
	defer cancel2()
	ch2, err := sse(t, ctx2, b.url("/events?source=chat"), strconv.FormatUint(seqs[99], 10))
	if err != nil {
		t.Fatal(err)
	}
	for i := 100; i < total; i++ {
		if ev := next(t, ch2); ev.id != strconv.FormatUint(seqs[i], 10) || ev.data != fmt.Sprintf("message %d", i) {
			t.Fatalf("resumed event %d: %+v", i, ev)
		}
	}
}

// TestSSELost: a client asking for events the ring no longer holds gets an
// explicit lost event with the count, then the events that remain.
func TestSSELost(t *testing.T) {
	n := newNode(t)
	n.size = "1MiB" // 2,048 records
	a := n.start()
	first := a.publish(t, "source=s&event=e", "0")
	var last uint64
	for i := 1; i < 2100; i++ {
		last = a.publish(t, "source=s&event=e", strconv.Itoa(i))
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ch, err := sse(t, ctx, a.url("/events?source=s"), strconv.FormatUint(first-1, 10))
	if err != nil {
		t.Fatal(err)
	}
	// The ring holds the last 2,048 records: everything from first up to
	// the tail less 2,048 is gone, exactly that many, and the stream goes
	// on with the oldest record it still holds.
	ev := next(t, ch)
	var l struct{ From, Count uint64 }
	want := last + 1 - 2048 - first
	if ev.event != handlers.NoticeLost || json.Unmarshal([]byte(ev.data), &l) != nil || l.From != first || l.Count != want {
		t.Fatalf("first event %+v, want a lost event of %d from %d", ev, want, first)
	}
	if ev := next(t, ch); ev.event != "e" || ev.id != strconv.FormatUint(first+want, 10) || ev.data != strconv.FormatUint(first+want-first, 10) {
		t.Fatalf("after the lost event: %+v, want event %d", ev, first+want)
	}
}

func longPoll(t *testing.T, url string) (handlers.EventsPage, time.Duration) {
	t.Helper()
	start := time.Now()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var page handlers.EventsPage
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK || json.Unmarshal(b, &page) != nil {
		t.Fatalf("GET %s: %d %s", url, resp.StatusCode, b)
	}
	return page, time.Since(start)
}

// TestLongPoll: answers at once when events exist after since, when one
// arrives, or after the timeout with none.
func TestLongPoll(t *testing.T) {
	n := newNode(t)
	a, b := n.start(), n.start()
	seq := a.publish(t, "source=lp&event=e", `payload`)
	page, _ := longPoll(t, b.url(fmt.Sprintf("/events?source=lp&since=%d", seq)))
	if len(page.Events) != 1 || page.Events[0].Seq != seq || string(page.Events[0].Data) != `"payload"` || page.Next != seq+1 {
		t.Fatalf("existing event: %+v", page)
	}
	// Nothing after next: the answer comes after the timeout, empty.
	page, took := longPoll(t, b.url(fmt.Sprintf("/events?source=lp&since=%d&timeout=300ms", page.Next)))
	if len(page.Events) != 0 || took < 300*time.Millisecond {
		t.Fatalf("empty long-poll: %+v after %v", page, took)
	}
	// An event published while the poll waits ends it. The poll is seen
	// waiting (counted open by b's handlers) before the event is published,
	// so this is the wake-up path, not the answer at once.
	done := make(chan handlers.EventsPage, 1)
	go func() {
		p, _ := longPoll(t, b.url(fmt.Sprintf("/events?source=lp&since=%d&timeout=30s", page.Next)))
		done <- p
	}()
	b.waitFor("the long-poll to wait", func() bool { return b.stats().HTTP.OpenStreams == 1 })
	resp, err := http.Post(a.url("/publish?source=lp&event=e"), "application/json", strings.NewReader(`{"n":2}`))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("publish: %d", resp.StatusCode)
	}
	select {
	case p := <-done:
		if len(p.Events) != 1 || string(p.Events[0].Data) != `{"n":2}` {
			t.Fatalf("woken long-poll: %+v", p)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the waiting long-poll was not woken by the event")
	}
}

// TestManySubscribers: 1,000 concurrent SSE clients, spread over two
// processes, all receive a burst in order.
func TestManySubscribers(t *testing.T) {
	n := newNode(t)
	a, b := n.start(), n.start()
	const clients, burst = 1000, 50
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var chans []<-chan sseEvent
	for i := 0; i < clients; i++ {
		p := a
		if i%2 == 1 {
			p = b
		}
		ch, err := sse(t, ctx, p.url("/events?source=fan"), "")
		if err != nil {
			t.Fatalf("client %d: %v", i, err)
		}
		chans = append(chans, ch)
	}
	for i := 0; i < burst; i++ {
		a.publish(t, "source=fan&event=e", strconv.Itoa(i))
	}
	var wg sync.WaitGroup
	errs := make(chan string, clients)
	for c, ch := range chans {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < burst; i++ {
				select {
				case ev := <-ch:
					if ev.data != strconv.Itoa(i) {
						errs <- fmt.Sprintf("client %d: event %d is %+v", c, i, ev)
						return
					}
				case <-time.After(30 * time.Second):
					errs <- fmt.Sprintf("client %d: got %d of %d events", c, i, burst)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for e := range errs {
		t.Fatal(e)
	}
}

// TestStreamsEndOnReloadAndStop: open streams and long-polls end when the
// process reloads and when it stops, so neither waits on them.
func TestStreamsEndOnReloadAndStop(t *testing.T) {
	n := newNode(t)
	a := n.start()
	open := func() ([]<-chan sseEvent, chan int) {
		var chans []<-chan sseEvent
		for i := 0; i < 5; i++ {
			ch, err := sse(t, context.Background(), a.url("/events"), "")
			if err != nil {
				t.Fatal(err)
			}
			chans = append(chans, ch)
		}
		polls := make(chan int, 5)
		for i := 0; i < 5; i++ {
			go func() {
				resp, err := http.Get(a.url("/events?timeout=5m"))
				if err != nil {
					polls <- -1
					return
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				polls <- resp.StatusCode
			}()
		}
		// Counted open by the handlers, not slept for.
		a.waitFor("10 open streams and polls", func() bool { return a.stats().HTTP.OpenStreams == 10 })
		return chans, polls
	}
	// The README promises that a reload or a stop never waits on streams
	// (about 30 ms here): each stream and poll must end well within a bound
	// far below the 3 s that a stream sleeping on "stopping" would take,
	// and every long-poll is answered 200.
	const bound = 2 * time.Second
	ended := func(what string, start time.Time, chans []<-chan sseEvent, polls chan int) {
		deadline := time.After(30 * time.Second)
		drainAll(t, chans, deadline, what)
		for i := 0; i < 5; i++ {
			select {
			case code := <-polls:
				if code != http.StatusOK {
					t.Fatalf("a long-poll ended by the %s answered %d, want 200", what, code)
				}
			case <-deadline:
				t.Fatalf("a long-poll still open 30s after the %s", what)
			}
		}
		took := time.Since(start)
		t.Logf("%s with 10 open streams and polls done in %v", what, took)
		if took > bound {
			t.Fatalf("the %s took %v to end 10 streams and polls, over %v: it waits on them", what, took, bound)
		}
	}
	chans, polls := open()
	start := time.Now()
	if out, err := cli(t, "reload", "--config", a.config, "--adapter", "caddyfile", "--address", a.admin, "--force"); err != nil {
		t.Fatalf("reload: %v\n%s", err, out)
	}
	ended("reload", start, chans, polls)

	a.waitFor("the streams closed by the reload to be counted closed", func() bool { return a.stats().HTTP.OpenStreams == 0 })
	chans, polls = open()
	start = time.Now()
	a.signal(syscall.SIGTERM)
	ended("stop", start, chans, polls)
	a.waitExit()
}

// drainAll reads every stream until it ends, failing the test at deadline
// (what says after what they should have ended).
func drainAll(t *testing.T, chans []<-chan sseEvent, deadline <-chan time.Time, what string) {
	t.Helper()
	for _, ch := range chans {
		for {
			select {
			case _, ok := <-ch:
				if ok {
					continue
				}
			case <-deadline:
				t.Fatalf("a stream still open 30s after the %s", what)
			}
			break
		}
	}
}

// TestHTTPErrors: every error status of the handlers, as JSON.
func TestHTTPErrors(t *testing.T) {
	n := newNode(t)
	n.settings = "max_payload 1KiB"
	a := n.start()
	a.publish(t, "source=s&event=e&unique=once", "first")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	for i := 0; i < 2; i++ {
		if _, err := sse(t, ctx, a.url("/limited"), ""); err != nil {
			t.Fatal(err)
		}
	}
	req, _ := http.NewRequest("GET", a.url("/events"), nil)
	req.Header.Set("Accept", "text/event-stream")
	req.Header.Set("Last-Event-ID", "18446744073709551615")
	if resp, err := http.DefaultClient.Do(req); err != nil || resp.StatusCode != 400 {
		t.Fatalf("Last-Event-ID at the end of the sequence space: %v %v", resp, err)
	} else {
		resp.Body.Close()
	}
	for _, c := range []struct {
		method, path, ctype, body string
		code                      int
		want                      string
	}{
		{"POST", "/publish?source=s", "", "x", 400, "event is empty"},
		{"POST", "/publish?source=s&event=e&unique=once", "", "again", 409, "duplicate unique key"},
		{"POST", "/publish?source=s&event=e", "", strings.Repeat("x", 2000), 413, "request body over the limit of 1024 bytes"},
		{"POST", "/publish?source=s&event=e", "application/json", "{bad", 400, "not valid JSON"},
		{"POST", "/publish?source=s&event=x%0Aid:%209", "", "forged", 400, "holds a line break or NUL"},
		{"GET", "/publish?source=s&event=e", "", "", 405, "method GET not allowed: use POST"},
		{"POST", "/events", "", "", 405, "method POST not allowed: use GET"},
		{"GET", "/events?since=abc", "", "", 400, `since=\"abc\" is not a sequence number`},
		{"GET", "/events?timeout=forever", "", "", 400, `timeout=\"forever\"`},
		{"GET", "/events?limit=0", "", "", 400, `limit=\"0\": give a number of events from 1`},
		{"GET", "/limited", "", "", 503, "too many open polls and streams (limit 2 for this route"},
		{"POST", "/publish?source=ipcbus.workers&event=worker_crashed", "", "x", 400, `source \"ipcbus.workers\" is reserved`},
		{"POST", "/publish?source=caddy&event=cert_obtained", "", "x", 400, `source \"caddy\" is reserved`},
		{"POST", "/publish?source=s&event=ipcbus.lost", "", "x", 400, `names starting with \"ipcbus.\" are reserved`},
		{"HEAD", "/events", "", "", 200, ""},
		{"POST", fmt.Sprintf("/send?pid=%d&name=x", a.pid()), "", strings.Repeat("x", 2000), 413, "request body over the limit of 1024 bytes"},
		{"POST", "/send?pid=999999999&name=x", "", "", 404, "No worker process with PID 999999999"},
		{"POST", "/send?pid=abc&name=x", "", "", 400, `pid \"abc\" is not a process id`},
		{"POST", fmt.Sprintf("/send?pid=%d&name=%s", a.pid(), strings.Repeat("n", 255)), "", "", 400, "alert name length cannot exceed 254, was 255"},
		{"POST", "/alert", "", "", 400, "alert name cannot be empty"},
		{"POST", fmt.Sprintf("/send?pid=%d&name=hi", a.pid()), "", "data", 200, `"ok":true`},
		{"POST", "/alert?name=all", "", "data", 200, `"ok":true`},
	} {
		req, _ := http.NewRequest(c.method, a.url(c.path), strings.NewReader(c.body))
		if c.ctype != "" {
			req.Header.Set("Content-Type", c.ctype)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != c.code || !strings.Contains(string(b), c.want) || (c.code != 200 && !strings.HasPrefix(string(b), `{"error":`)) || (c.method == "HEAD" && len(b) != 0) {
			t.Errorf("%s %.60s: %d %s, want %d %q", c.method, c.path, resp.StatusCode, b, c.code, c.want)
		}
	}
}

// TestSharedStreamWriters: in a real Caddy, caught-up HTTP/1.1 streams are
// written by the shared writers (the stats and the metrics say how many),
// each gets every event in order across processes, and a large event
// (written by the stream's own goroutine) comes in its place.
func TestSharedStreamWriters(t *testing.T) {
	n := newNode(t)
	a, b := n.start(), n.start()
	const streams = 3
	var chs []<-chan sseEvent
	for range streams {
		ch, err := sse(t, t.Context(), b.url("/events?source=fan"), "")
		if err != nil {
			t.Fatal(err)
		}
		chs = append(chs, ch)
	}
	for deadline := time.Now().Add(10 * time.Second); b.stats().HTTP.SharedStreams != streams; time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("%d streams with the shared writers, want %d", b.stats().HTTP.SharedStreams, streams)
		}
	}
	if m := b.metrics(t); !strings.Contains(m, fmt.Sprintf("caddy_ipcbus_http_shared_streams %d\n", streams)) {
		t.Fatal("no caddy_ipcbus_http_shared_streams gauge in the metrics")
	}
	var seqs []uint64
	var want []string
	for i := range 100 {
		body := fmt.Sprintf("message %d", i)
		if i == 50 {
			body = strings.Repeat("L", 40<<10) // over what the shared writers write (8 KiB)
		}
		seqs = append(seqs, a.publish(t, "source=fan&event=msg", body))
		want = append(want, body)
	}
	for k, ch := range chs {
		for i := range seqs {
			if ev := next(t, ch); ev.id != strconv.FormatUint(seqs[i], 10) || ev.data != want[i] {
				t.Fatalf("stream %d, event %d: id %s (%d bytes), want id %d", k, i, ev.id, len(ev.data), seqs[i])
			}
		}
	}
	// Three streams are few enough for b's delivery goroutine to write them
	// itself as it reads a's events.
	if b.stats().HTTP.InlinePasses == 0 {
		t.Fatal("no inline pass for another process's events")
	}
	if m := b.metrics(t); !strings.Contains(m, "caddy_ipcbus_http_inline_passes_total ") {
		t.Fatal("no caddy_ipcbus_http_inline_passes_total counter in the metrics")
	}
}
