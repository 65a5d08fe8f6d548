package integration

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	ipcbus "github.com/ipcbus/caddy-ipcbus"
)

// TestSharedWritersUnderLoad: many streams over two processes, written by
// the shared writers while two publishers post events of mixed sizes
// (some over what the writers write themselves), clients that stall and
// then read again, and a reload of one process in the middle (its
// clients reconnect with Last-Event-ID): every client gets every event,
// in order and byte for byte, and nothing is announced lost.
func TestSharedWritersUnderLoad(t *testing.T) {
	n := newNode(t)
	n.size = "32MiB" // holds all the events: a stalled client loses none
	a, b := n.start(), n.start()
	const (
		fast, stalling = 24, 4
		events         = 4000
	)
	postersDone := make(chan struct{})
	tail := a.stats().Ring.Tail // the first seq the clients must see
	var (
		mu   sync.Mutex
		sent = map[uint64]sentEvent{}
		wg   sync.WaitGroup
	)
	check := make(chan error, fast+stalling+2)
	seen := make([]map[uint64]string, fast+stalling) // each client's seq → payload
	for i := range seen {
		seen[i] = map[uint64]string{}
	}
	for i := range fast {
		p := a
		if i%2 == 1 {
			p = b // reloaded in the middle: its clients reconnect
		}
		wg.Go(func() { check <- readAll(p, tail, events, seen[i]) })
	}
	bigs := 0 // the events named big: i%50 == 7 of each poster's events/2
	for i := range events / 2 {
		if i%50 == 7 {
			bigs += 2
		}
	}
	for i := range stalling {
		wg.Go(func() { check <- readStalling(a, tail, events-bigs, seen[fast+i], postersDone) })
	}
	time.Sleep(300 * time.Millisecond) // the streams have caught up and joined

	var posters sync.WaitGroup
	for k := range 2 {
		posters.Go(func() {
			r := rand.New(rand.NewPCG(uint64(k), 7))
			for i := range events / 2 {
				size, name := 10+r.IntN(4000), "e"
				if i%50 == 7 {
					// Over 8 KiB: written by the stream's own goroutine (the
					// stalling clients filter it out, and stay with the writers).
					size, name = 9000+r.IntN(4000), "big"
				}
				body := strings.Repeat(string(rune('a'+k)), size) + strconv.Itoa(i)
				seq, err := publishErr(a, name, body)
				if err != nil {
					check <- err
					return
				}
				mu.Lock()
				sent[seq] = sentEvent{name, body}
				mu.Unlock()
				if k == 0 && i == events/4 {
					if out, err := cli(t, "reload", "--config", b.config, "--adapter", "caddyfile", "--address", b.admin, "--force"); err != nil {
						check <- fmt.Errorf("reload: %v\n%s", err, out)
						return
					}
				}
			}
		})
	}
	posters.Wait()
	close(postersDone)
	wg.Wait()
	close(check)
	for err := range check {
		if err != nil {
			mu.Lock()
			for i, got := range seen {
				var missing []uint64
				for seq, ev := range sent {
					if _, ok := got[seq]; !ok && (i < fast || ev.name == "e") {
						missing = append(missing, seq)
					}
				}
				if len(missing) > 0 {
					slices.Sort(missing)
					t.Logf("client %d lacks %d events: %v", i, len(missing), missing[:min(len(missing), 20)])
				}
			}
			mu.Unlock()
			// The servers' side of it: their counters, then their
			// goroutines (SIGQUIT: Go prints every stack; the logs are
			// printed with the failure).
			for _, p := range []*proc{a, b} {
				var rep ipcbus.StatsReport
				err := p.get("/ipcbus/stats", &rep)
				t.Logf("caddy %d stats (%v): %+v", p.pid(), err, rep)
				p.cmd.Process.Signal(syscall.SIGQUIT)
				select {
				case <-p.exited:
				case <-time.After(10 * time.Second):
				}
			}
			t.Fatal(err)
		}
	}
	if len(sent) != events {
		t.Fatalf("%d events posted, want %d", len(sent), events)
	}
	for i, got := range seen {
		for seq, want := range sent {
			if i >= fast && want.name != "e" {
				continue // filtered out
			}
			if data, ok := got[seq]; !ok || data != want.body {
				t.Fatalf("client %d, seq %d: %d bytes (seen %v), want %d", i, seq, len(data), ok, len(want.body))
			}
		}
	}
	if n := a.stats().HTTP.SlowClientsDropped; n != 0 {
		t.Fatalf("%d slow clients dropped", n)
	}
}

// sentEvent is an event a poster sent.
type sentEvent struct{ name, body string }

// publishErr posts body to /publish on p as source soak, event name.
func publishErr(p *proc, name, body string) (uint64, error) {
	resp, err := http.Post(p.url("/publish?source=soak&event="+name), "text/plain", strings.NewReader(body))
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		return 0, fmt.Errorf("publish: %d %s", resp.StatusCode, b)
	}
	var seq uint64
	if _, err := fmt.Sscanf(string(b), `{"seq":%d}`, &seq); err != nil {
		return 0, fmt.Errorf("publish answer %q", b)
	}
	return seq, nil
}

// readAll follows p's stream of source soak from seq since until it has
// count events, in order, reconnecting after Last-Event-ID when the stream
// ends (a reload), and keeps them in got.
func readAll(p *proc, since uint64, count int, got map[uint64]string) error {
	last := ""
	var prev uint64
	deadline := time.Now().Add(60 * time.Second)
	for len(got) < count {
		if time.Now().After(deadline) {
			return fmt.Errorf("%d of %d events in 60s", len(got), count)
		}
		ctx, cancel := context.WithCancel(context.Background())
		url := p.url("/events?source=soak&since=" + strconv.FormatUint(since, 10))
		ch, _, err := sseWith(ctx, http.DefaultClient, url, last)
		if err != nil {
			cancel()
			time.Sleep(50 * time.Millisecond) // the process is reloading
			continue
		}
		for ev := range untilDeadline(ctx, ch, deadline) {
			if ev.event != "e" && ev.event != "big" {
				cancel()
				return fmt.Errorf("event %q (%s)", ev.event, ev.data)
			}
			seq, _ := strconv.ParseUint(ev.id, 10, 64)
			if seq <= prev && prev != 0 {
				cancel()
				return fmt.Errorf("seq %d after %d", seq, prev)
			}
			prev, last = seq, ev.id
			got[seq] = ev.data
			if len(got) == count {
				break
			}
		}
		cancel()
		if time.Now().After(deadline) {
			return fmt.Errorf("%d of %d events in 60s: the stream stalled after seq %d", len(got), count, prev)
		}
	}
	return nil
}

// untilDeadline passes on ch's events until ch closes, ctx ends (the
// reader is done with them) or deadline passes.
func untilDeadline(ctx context.Context, ch <-chan sseEvent, deadline time.Time) <-chan sseEvent {
	out := make(chan sseEvent)
	go func() {
		defer close(out)
		t := time.NewTimer(time.Until(deadline))
		defer t.Stop()
		for {
			select {
			case ev, ok := <-ch:
				if !ok {
					return
				}
				select {
				case out <- ev:
				case <-ctx.Done():
					return
				case <-t.C:
					return
				}
			case <-ctx.Done():
				return
			case <-t.C:
				return
			}
		}
	}()
	return out
}

// readStalling opens a stream of source soak on p with a small receive
// buffer, stops reading once events flow until resume (its socket fills,
// so the shared writers write only part of a chunk, and hand it back),
// then reads count events of name e, in order, into got.
func readStalling(p *proc, since uint64, count int, got map[uint64]string, resume <-chan struct{}) error {
	d := net.Dialer{Control: func(_, _ string, c syscall.RawConn) error {
		return c.Control(func(fd uintptr) { syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 4096) })
	}}
	host := strings.TrimPrefix(p.url(""), "http://")
	c, err := d.Dial("tcp", host)
	if err != nil {
		return err
	}
	defer c.Close()
	fmt.Fprintf(c, "GET /events?source=soak&event=e&since=%d HTTP/1.1\r\nHost: %s\r\nAccept: text/event-stream\r\n\r\n", since, host)
	c.SetDeadline(time.Now().Add(60 * time.Second))
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != "text/event-stream" {
		return fmt.Errorf("stalling client: answer %d %s", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	body := bufio.NewScanner(resp.Body)
	body.Buffer(nil, 1<<20)
	var prev uint64
	var id, data, name string
	stalled := false
	for len(got) < count && body.Scan() {
		l := body.Text()
		switch {
		case strings.HasPrefix(l, "id: "):
			id = l[4:]
		case strings.HasPrefix(l, "event: "):
			name = l[7:]
		case strings.HasPrefix(l, "data: "):
			data = l[6:]
		case l == "" && id != "":
			if name != "e" {
				return fmt.Errorf("stalling client: event %q (%s)", name, data)
			}
			seq, _ := strconv.ParseUint(id, 10, 64)
			if seq <= prev && prev != 0 {
				return fmt.Errorf("stalling client: seq %d after %d", seq, prev)
			}
			prev = seq
			got[seq] = data
			id, data, name = "", "", ""
			if !stalled && len(got) == 20 {
				stalled = true
				<-resume // about 8 MB posted meanwhile: more than its socket takes
				time.Sleep(200 * time.Millisecond)
			}
		}
	}
	if len(got) < count {
		return fmt.Errorf("stalling client: %d of %d events: %v", len(got), count, body.Err())
	}
	return nil
}
