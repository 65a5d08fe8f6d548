package integration

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"

	ipcbus "github.com/ipcbus/caddy-ipcbus"
	"github.com/ipcbus/caddy-ipcbus/handlers"
)

func compact(b []byte) string {
	var buf bytes.Buffer
	json.Compact(&buf, b)
	return buf.String()
}

func (p *proc) post(path, body string) (int, string) {
	p.n.t.Helper()
	resp, err := http.Post("http://"+p.admin+path, "application/json", strings.NewReader(body))
	if err != nil {
		p.n.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func (p *proc) events(since uint64) handlers.EventsPage {
	p.n.t.Helper()
	var page handlers.EventsPage
	if err := p.get(fmt.Sprintf("/ipcbus/events?since=%d&limit=10000", since), &page); err != nil {
		p.n.t.Fatal(err)
	}
	return page
}

func (p *proc) stats() ipcbus.StatsReport {
	p.n.t.Helper()
	var rep ipcbus.StatsReport
	if err := p.get("/ipcbus/stats", &rep); err != nil {
		p.n.t.Fatal(err)
	}
	return rep
}

// TestEventsAcrossProcesses: an event posted through one process's admin
// API is handled by every worker of the node and can be read from the
// other process; lifecycle and Caddy's own events are on the bus; bad
// posts get their status.
func TestEventsAcrossProcesses(t *testing.T) {
	n := newNode(t)
	n.settings = "max_payload 1KiB\n\t\tunique_timeout 1m"
	n.extra = "events {\n\t\ton started ipcbus_forward\n\t}"
	a, b := n.start(), n.start()
	before := b.stats().Events.Delivered

	code, body := a.post("/ipcbus/events", `{"source":"app","event":"hello","data":{"n":1}}`)
	if code != http.StatusOK || !strings.Contains(body, `"seq"`) {
		t.Fatalf("POST /ipcbus/events: %d %s", code, body)
	}
	var posted struct{ Seq uint64 }
	json.Unmarshal([]byte(body), &posted)
	a.post("/ipcbus/events", `{"source":"app","event":"text","data":"plain text"}`)

	b.waitFor("b to handle the event", func() bool { return b.stats().Events.Delivered >= before+2 })
	page := b.events(posted.Seq)
	if len(page.Events) < 2 || page.Events[0].Seq != posted.Seq || page.Events[0].Source != "app" || page.Events[0].Event != "hello" ||
		compact(page.Events[0].Data) != `{"n":1}` || page.Events[0].PID != a.pid() || string(page.Events[1].Data) != `"plain text"` {
		t.Fatalf("events read from b: %+v", page)
	}

	// The whole history: both workers' started and lifecycle events, and
	// Caddy's own "started" event forwarded by ipcbus_forward.
	all := b.events(0)
	seen := map[string]int{}
	for _, e := range all.Events {
		seen[e.Source+"/"+e.Event]++
	}
	if seen["ipcbus/started"] != 2 || seen["ipcbus.workers/node_started"] != 1 || seen["ipcbus.workers/worker_started"] != 2 || seen["caddy/started"] < 2 {
		t.Fatalf("history %v", seen)
	}
	if all.Lost != 0 || all.Next <= posted.Seq {
		t.Fatalf("page next %d lost %d", all.Next, all.Lost)
	}

	// Unique: the second post of a key is a 409 from any process.
	if code, body := a.post("/ipcbus/events", `{"source":"app","event":"job","unique":"k1"}`); code != http.StatusOK {
		t.Fatalf("unique post: %d %s", code, body)
	}
	for _, c := range []struct {
		body string
		code int
		want string
	}{
		{`{"source":"app","event":"job","unique":"k1"}`, http.StatusConflict, "duplicate unique key"},
		{`{"source":"","event":"x"}`, http.StatusBadRequest, "source is empty"},
		{`{"source":"app"}`, http.StatusBadRequest, "event is empty"},
		{`not json`, http.StatusBadRequest, "must be a JSON object"},
		{`{"source":"app","event":"big","data":"` + strings.Repeat("x", 2000) + `"}`, http.StatusRequestEntityTooLarge, "event payload too large: 2000 bytes, the limit is 1024"},
	} {
		code, body := b.post("/ipcbus/events", c.body)
		if code != c.code || !strings.Contains(body, c.want) {
			t.Errorf("POST %.40s: %d %s, want %d %q", c.body, code, body, c.code, c.want)
		}
	}
	// Like Caddy's /load: the body must say it is JSON.
	resp, err := http.Post("http://"+a.admin+"/ipcbus/events", "text/plain", strings.NewReader(`{"source":"app","event":"x"}`))
	if err != nil {
		t.Fatal(err)
	}
	ct, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnsupportedMediaType || !strings.Contains(string(ct), "application/json") {
		t.Fatalf("POST /ipcbus/events as text/plain: %d %s", resp.StatusCode, ct)
	}
	if code, body := b.post("/ipcbus/events", `{"source":"app","event":"x","data":"`+strings.Repeat("x", ipcbus.AdminMaxBody)+`"}`); code != http.StatusRequestEntityTooLarge || !strings.Contains(body, "request body over the limit of 1048576 bytes") {
		t.Fatalf("a body over the admin limit: %d %.200s", code, body)
	}
	var e struct{ Error string }
	resp, _ = http.Get("http://" + a.admin + "/ipcbus/events?since=x")
	json.NewDecoder(resp.Body).Decode(&e)
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadRequest || !strings.Contains(e.Error, `since="x" is not a sequence number`) {
		t.Fatalf("bad since: %d %+v", resp.StatusCode, e)
	}

	// A reload of a: its old worker's exit (reason reload) reaches b's bus.
	if out, err := cli(t, "reload", "--config", a.config, "--adapter", "caddyfile", "--address", a.admin, "--force"); err != nil {
		t.Fatalf("reload: %v\n%s", err, out)
	}
	want := fmt.Sprintf(`"id":"1-%d"`, a.pid())
	b.waitFor("the reload's exit event", func() bool {
		for _, e := range b.events(all.Next).Events {
			if e.Event == "worker_exited" && strings.Contains(compact(e.Data), want) && strings.Contains(compact(e.Data), `"reason":"reload"`) {
				return true
			}
		}
		return false
	})
}
