package integration

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ipcbus/caddy-ipcbus/handlers"
)

// testCaddy is cmd/caddy plus the test-only events handler of
// integration/testcaddy, built once, when a test first needs it.
var testCaddy struct {
	once sync.Once
	path string
	err  error
}

func testCaddyBin(t *testing.T) string {
	t.Helper()
	testCaddy.once.Do(func() {
		testCaddy.path = filepath.Join(filepath.Dir(caddyBin), "testcaddy")
		out, err := exec.Command("go", "build", "-o", testCaddy.path, "github.com/ipcbus/caddy-ipcbus/integration/testcaddy").CombinedOutput()
		if err != nil {
			testCaddy.err = fmt.Errorf("building integration/testcaddy: %v\n%s", err, out)
		}
	})
	if testCaddy.err != nil {
		t.Fatal(testCaddy.err)
	}
	return testCaddy.path
}

// emittedLine is a line of the test-only events handler's file.
type emittedLine struct {
	PID  int            `json:"pid"`
	Name string         `json:"name"`
	Data map[string]any `json:"data"`
}

func readEmitted(t *testing.T, path string) []emittedLine {
	t.Helper()
	f, err := os.Open(path)
	if os.IsNotExist(err) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []emittedLine
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var l emittedLine
		if json.Unmarshal(sc.Bytes(), &l) == nil {
			out = append(out, l)
		}
	}
	return out
}

// TestReactToAlerts: two Caddy processes configured with on_alert, emit
// and an ipcbus_poll alerts route. An alert sent over HTTP through B to A
// makes A post a bus event that an SSE subscriber on B sees, log a line,
// emit ipcbus_alert to an events handler, and stream the alert to an SSE
// client of A's alerts route; a broadcast alert is posted once for the
// node although both processes react; a webhook retries a failing
// backend, then succeeds; an alert made A reload its config; and no
// alert counts as unhandled.
func TestReactToAlerts(t *testing.T) {
	bin := testCaddyBin(t)
	var calls atomic.Int32
	bodies := make(chan string, 16)
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		if calls.Add(1) <= 2 {
			http.Error(w, "not yet", http.StatusServiceUnavailable)
			return
		}
		bodies <- r.Header.Get("X-Ipcbus-Attempt") + " " + r.Header.Get("X-Ipcbus-Alert") + " " + string(b)
		w.WriteHeader(http.StatusNoContent)
	}))
	defer backend.Close()

	n := newNode(t)
	emitted := filepath.Join(n.dir, "emitted.jsonl")
	n.settings = fmt.Sprintf(`on_alert deploy post ops deployed
		on_alert deploy log warn
		on_alert hook webhook %s/hook {
			backoff 50ms
		}
		on_alert reload-me reload
		emit {
			alerts deploy
		}`, backend.URL)
	n.extra = fmt.Sprintf(`events {
		on ipcbus_alert ipcbus_test_file %s
	}`, emitted)
	n.routes = `handle /my-alerts {
		ipcbus_poll {
			alerts deploy reload-*
		}
	}`
	useTest := func(c *exec.Cmd) { c.Path, c.Args[0] = bin, bin }
	a, b := n.startWith(useTest), n.startWith(useTest)

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ops, err := sse(t, ctx, b.url("/events?source=ops"), "")
	if err != nil {
		t.Fatal(err)
	}
	mine, err := sse(t, ctx, a.url("/my-alerts"), "")
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(200 * time.Millisecond) // both streams caught up with the ring

	// An alert to A, sent over HTTP through B.
	if code, body := b.postSite(t, fmt.Sprintf("/send?pid=%d&name=deploy", a.pid()), "text/plain", []byte("v2")); code != http.StatusOK {
		t.Fatalf("send: %d %s", code, body)
	}
	if ev := next(t, ops); ev.event != "deployed" || ev.data != "v2" {
		t.Fatalf("B's subscriber got %+v", ev)
	}
	ev := next(t, mine)
	var al handlers.AlertJSON
	if err := json.Unmarshal([]byte(ev.data), &al); err != nil || ev.event != "deploy" || al.Name != "deploy" || al.PID != b.pid() || string(al.Data) != `"v2"` || al.Broadcast {
		t.Fatalf("A's alerts stream got %+v (%v)", ev, err)
	}
	a.waitFor("the log line", func() bool {
		for _, l := range strings.Split(a.logText(), "\n") {
			if strings.Contains(l, `"alert received"`) && strings.Contains(l, `"level":"warn"`) && strings.Contains(l, `"name":"deploy"`) && strings.Contains(l, fmt.Sprintf(`"sender":%d`, b.pid())) {
				return true
			}
		}
		return false
	})
	a.waitFor("ipcbus_alert to reach the events handler", func() bool {
		for _, l := range readEmitted(t, emitted) {
			if l.PID == a.pid() && l.Name == "ipcbus_alert" && l.Data["name"] == "deploy" && l.Data["data"] == "v2" && l.Data["pid"] == float64(b.pid()) {
				return true
			}
		}
		return false
	})

	// A broadcast through ipcbus_broadcast { alert }: both react, the
	// node gets one event.
	if code, body := b.postSite(t, "/alert?name=deploy", "text/plain", []byte("v3")); code != http.StatusOK {
		t.Fatalf("broadcast: %d %s", code, body)
	}
	if ev := next(t, ops); ev.data != "v3" {
		t.Fatalf("after the broadcast: %+v", ev)
	}
	b.waitFor("B to handle the broadcast", func() bool { return b.stats().Alerts.Received == 1 })
	a.waitFor("A to handle the broadcast", func() bool { return a.stats().Alerts.Received == 2 })
	select {
	case ev := <-ops:
		t.Fatalf("the broadcast was posted twice: %+v", ev)
	case <-time.After(300 * time.Millisecond):
	}

	// The webhook: two 503s, then 204.
	if code, body := b.postSite(t, fmt.Sprintf("/send?pid=%d&name=hook", a.pid()), "text/plain", []byte("payload")); code != http.StatusOK {
		t.Fatalf("send hook: %d %s", code, body)
	}
	select {
	case got := <-bodies:
		if got != "3 hook payload" {
			t.Fatalf("the backend got %q", got)
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("the webhook never succeeded (%d calls)", calls.Load())
	}
	a.waitFor("the webhook's counters", func() bool {
		r := a.stats().Reactions
		return r.WebhookSent == 1 && r.WebhookRetries == 2 && r.WebhookFailed == 0
	})

	// reload: A's config is loaded again from its file (generation 2).
	if code, body := b.postSite(t, fmt.Sprintf("/send?pid=%d&name=reload-me", a.pid()), "text/plain", nil); code != http.StatusOK {
		t.Fatalf("send reload-me: %d %s", code, body)
	}
	a.waitFor("A's reload", func() bool { return a.stats().Generation == 2 })
	if s := a.stats(); s.Alerts.Unhandled != 0 || s.Reactions.Reloads != 1 {
		t.Fatalf("A: unhandled %d, reloads %d", s.Alerts.Unhandled, s.Reactions.Reloads)
	}
	if s := b.stats(); s.Alerts.Unhandled != 0 {
		t.Fatalf("B: unhandled %d", s.Alerts.Unhandled)
	}
}
