package integration

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// goroutines reads the process's goroutine count from the admin pprof endpoint.
func (p *proc) goroutines(t *testing.T) int {
	t.Helper()
	resp, err := http.Get("http://" + p.admin + "/debug/pprof/goroutine?debug=1")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	m := regexp.MustCompile(`goroutine profile: total (\d+)`).FindSubmatch(b)
	if m == nil {
		t.Fatalf("no goroutine count in %.100s", b)
	}
	n, _ := strconv.Atoi(string(m[1]))
	return n
}

func (p *proc) fds(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", p.pid()))
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

// TestReloadLeavesNothingBehind: reloads do not pile up goroutines, file
// descriptors or mappings (each reload starts a worker, a bus and an
// alerts reader, and stops the old ones), also with the reactions to
// alerts configured (the goroutines of webhooks and emit, an alerts
// stream route), and with a fleet (its connection and bridge).
func TestReloadLeavesNothingBehind(t *testing.T) {
	for _, tc := range []struct{ name, settings, routes string }{
		{"plain", "", ""},
		{"reactions", `on_alert deploy webhook http://127.0.0.1:9/hook
		on_alert deploy log
		emit {
			alerts *
			events ops
		}`, `handle /my-alerts {
		ipcbus_poll {
			alerts
		}
	}`},
		// The fleet part: a NATS connection, the lease candidacy and (in
		// this only process) the bridge's goroutines, per worker.
		{"fleet", "fleet itest {\n\t\t\tnats NATS_URL\n\t\t}", ""},
		// Streams written by the shared writers (their goroutines and
		// connections), open when each reload comes.
		{"streams", "", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			n := newNode(t)
			n.settings, n.routes = tc.settings, tc.routes
			if strings.Contains(n.settings, "NATS_URL") {
				n.settings = strings.ReplaceAll(n.settings, "NATS_URL", startNATSProc(t).url())
			}
			reloadLeavesNothing(t, n, tc.name == "streams")
		})
	}
}

func reloadLeavesNothing(t *testing.T, n *node, streams bool) {
	a := n.start()
	reload := func() {
		var ended []<-chan sseEvent
		if streams { // two streams that have caught up (in the hub), ended by the reload
			for range 2 {
				ch, err := sse(t, t.Context(), a.url("/events"), "")
				if err != nil {
					t.Fatal(err)
				}
				ended = append(ended, ch)
			}
			for deadline := time.Now().Add(10 * time.Second); a.stats().HTTP.SharedStreams != 2; time.Sleep(10 * time.Millisecond) {
				if time.Now().After(deadline) {
					t.Fatalf("%d streams with the shared writers, want 2", a.stats().HTTP.SharedStreams)
				}
			}
			seq := a.publish(t, "source=leak&event=e", "x")
			for _, ch := range ended {
				if ev := next(t, ch); ev.id != fmt.Sprint(seq) {
					t.Fatalf("got %+v, want event %d", ev, seq)
				}
			}
		}
		if out, err := cli(t, "reload", "--config", a.config, "--adapter", "caddyfile", "--address", a.admin, "--force"); err != nil {
			t.Fatalf("reload: %v\n%s", err, out)
		}
		for _, ch := range ended {
			select {
			case _, ok := <-ch:
				if ok {
					t.Fatal("an event after the reload")
				}
			case <-time.After(10 * time.Second):
				t.Fatal("a stream still open 10s after the reload")
			}
		}
	}
	reload() // let the first reload's one-time allocations happen
	time.Sleep(300 * time.Millisecond)
	g0, f0 := a.goroutines(t), a.fds(t)
	for i := 0; i < 8; i++ {
		reload()
	}
	var g, f int
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		g, f = a.goroutines(t), a.fds(t)
		if g <= g0+2 && f <= f0+2 {
			break
		}
	}
	if g > g0+2 || f > f0+2 {
		t.Fatalf("after 8 reloads: %d goroutines (was %d), %d fds (was %d)", g, g0, f, f0)
	}
	if maps, _ := os.ReadFile(fmt.Sprintf("/proc/%d/maps", a.pid())); countZoneMaps(maps) != 1 {
		t.Fatalf("the zone is mapped %d times", countZoneMaps(maps))
	}
	t.Logf("after 8 reloads: %d goroutines (was %d), %d fds (was %d)", g, g0, f, f0)
}

func countZoneMaps(maps []byte) int {
	return len(regexp.MustCompile(`/ipcbus-\d+/itest\.zone`).FindAll(maps, -1))
}
