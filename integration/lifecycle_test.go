package integration

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	ipcbus "github.com/ipcbus/caddy-ipcbus"
)

// TestNodeLifecycle runs three Caddy processes on one zone and one site
// port, then reloads one, kills one with SIGKILL, stops the rest with
// SIGTERM, and starts the node again.
func TestNodeLifecycle(t *testing.T) {
	n := newNode(t)
	a, b, c := n.start(), n.start(), n.start()

	rep := a.workers()
	if live := countState(rep, "live"); live != 3 || rep.Node.Starts != 1 || rep.Node.WorkerStarts != 3 || rep.Node.State != "running" {
		t.Fatalf("three processes: %d live, node %+v", live, rep.Node)
	}
	if rep.Zone.Name != "itest" || rep.Zone.Path != n.zonePath() || rep.Zone.Size != 8<<20 {
		t.Fatalf("zone %+v", rep.Zone)
	}
	for _, p := range []*proc{a, b, c} {
		if st, _, ok := findWorker(rep, fmt.Sprintf("1-%d", p.pid())); !ok || st != "live" {
			t.Fatalf("worker 1-%d: %q %v in %+v", p.pid(), st, ok, rep.Workers)
		}
	}
	// The three share the site port (SO_REUSEPORT).
	resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/", n.sitePort))
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if string(body) != "site" {
		t.Fatalf("site answered %q", body)
	}

	// Reload a: generation 2 for its pid, a reload counted, the old worker gone with reason reload.
	if out, err := cli(t, "reload", "--config", a.config, "--adapter", "caddyfile", "--address", a.admin, "--force"); err != nil {
		t.Fatalf("caddy reload: %v\n%s", err, out)
	}
	a.waitFor("generation 2", func() bool {
		st, _, _ := findWorker(a.workers(), fmt.Sprintf("2-%d", a.pid()))
		return st == "live"
	})
	rep = c.workers()
	if st, reason, _ := findWorker(rep, fmt.Sprintf("1-%d", a.pid())); st != "exited" || reason != "reload" {
		t.Fatalf("old worker of the reloaded process: %q %q", st, reason)
	}
	if rep.Node.Reloads != 1 || countState(rep, "live") != 3 {
		t.Fatalf("after reload: %d live, node %+v", countState(rep, "live"), rep.Node)
	}

	// kill -9 b: the others record it crashed, through its liveness lock,
	// within a second of the kill (dead_after is 2s, so no heartbeat
	// timeout can have done it).
	killed := time.Now()
	b.signal(syscall.SIGKILL)
	bID := fmt.Sprintf("1-%d", b.pid())
	c.waitFor("the crash to be seen", func() bool {
		st, _, _ := findWorker(c.workers(), bID)
		return st == "crashed"
	})
	rep = a.workers()
	for _, w := range rep.Workers {
		if w.ID == bID {
			if w.Reason != "crash" || w.ExitedAt.Sub(killed) > time.Second {
				t.Fatalf("crashed worker %+v, killed at %v", w, killed)
			}
			t.Logf("crash recorded %v after SIGKILL", w.ExitedAt.Sub(killed))
		}
	}
	if rep.Node.Crashes != 1 || countState(rep, "live") != 2 {
		t.Fatalf("after kill: %d live, node %+v", countState(rep, "live"), rep.Node)
	}

	// SIGTERM the rest: clean exits, the node stops.
	a.signal(syscall.SIGTERM)
	c.signal(syscall.SIGTERM)
	a.waitExit()
	c.waitExit()
	out, err := cli(t, "ipcbus", "workers", "--zone", n.zone, "--dir", n.dir, "--json")
	if err != nil {
		t.Fatalf("caddy ipcbus workers: %v\n%s", err, out)
	}
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	if rep.Node.State != "stopped" || countState(rep, "live") != 0 || rep.Node.Exits != 3 {
		t.Fatalf("after SIGTERM: node %+v workers %+v", rep.Node, rep.Workers)
	}
	for _, p := range []*proc{a, c} {
		if st, reason, _ := findWorker(rep, fmt.Sprintf("%d-%d", map[*proc]int{a: 2, c: 1}[p], p.pid())); st != "exited" || reason != "shutdown" {
			t.Fatalf("worker of %d after SIGTERM: %q %q", p.pid(), st, reason)
		}
	}
	table, err := cli(t, "ipcbus", "workers", "--zone", n.zone, "--dir", n.dir)
	if err != nil || !strings.Contains(table, "node stopped") || !strings.Contains(table, "crashes 1") || !strings.Contains(table, "shutdown") {
		t.Fatalf("table: %v\n%s", err, table)
	}

	// Start again: a fresh node start that keeps the history; stale entries reaped.
	d := n.start()
	rep = d.workers()
	if rep.Node.Starts != 2 || rep.Node.Crashes != 1 || rep.Node.Reloads != 1 || rep.Node.State != "running" || rep.Node.Epoch != 2 {
		t.Fatalf("restarted node %+v", rep.Node)
	}
	if len(rep.Workers) != 1 || rep.Workers[0].PID != d.pid() || rep.Workers[0].State != "live" {
		t.Fatalf("restarted node lists %+v", rep.Workers)
	}
}

// TestAdminStats checks GET /ipcbus/stats and the errors of the admin routes.
func TestAdminStats(t *testing.T) {
	n := newNode(t)
	p := n.start()
	var rep ipcbus.StatsReport
	if err := p.get("/ipcbus/stats", &rep); err != nil {
		t.Fatal(err)
	}
	if rep.Worker != fmt.Sprintf("1-%d", p.pid()) || rep.Generation != 1 || rep.Ring.Slots == 0 || rep.Ring.Segments < 16 || rep.Ring.SegmentSize == 0 || rep.Workers != 1 {
		t.Fatalf("stats %+v", rep)
	}
	// The same counters as Prometheus metrics on the admin /metrics endpoint.
	n.start()
	mresp, err := http.Get("http://" + p.admin + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	metrics, _ := io.ReadAll(mresp.Body)
	mresp.Body.Close()
	for _, want := range []string{"caddy_ipcbus_live_workers 2", "caddy_ipcbus_node_starts_total 1", "caddy_ipcbus_events_posted_total", "caddy_ipcbus_ring_segments_reclaimed_total 0"} {
		if !strings.Contains(string(metrics), want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
	resp, err := http.Post("http://"+p.admin+"/ipcbus/workers", "application/json", nil)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	var e struct{ Error string }
	if resp.StatusCode != http.StatusMethodNotAllowed || json.Unmarshal(body, &e) != nil || !strings.Contains(e.Error, "use GET") {
		t.Fatalf("POST /ipcbus/workers: %s %s", resp.Status, body)
	}
}

// TestValidateDoesNotJoin: `caddy validate` provisions the app but must
// not create or join the zone.
func TestValidateDoesNotJoin(t *testing.T) {
	n := newNode(t)
	cfg := filepath.Join(n.dir, "Caddyfile")
	if err := os.WriteFile(cfg, []byte(n.caddyfile("127.0.0.1:0", freePort(t))), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, err := cli(t, "validate", "--config", cfg, "--adapter", "caddyfile"); err != nil {
		t.Fatalf("validate: %v\n%s", err, out)
	}
	if _, err := os.Stat(n.zoneDir()); !os.IsNotExist(err) {
		t.Fatalf("validate created the zone's directory: %v", err)
	}
}

// TestBadConfig: each bad value of the global option gives its error,
// from `caddy adapt` (Caddyfile) or `caddy validate` (JSON).
func TestBadConfig(t *testing.T) {
	dir := t.TempDir()
	caddyfiles := map[string]string{
		"zone a/b":        `invalid zone name "a/b"`,
		"dir rel":         `ipcbus dir: "rel" is not an absolute path`,
		"size huge":       `ipcbus size: "huge" is not a size`,
		"size 512KiB":     `ipcbus size: 512KiB: must be between 1MiB and 64GiB`,
		"mode 0777":       `invalid zone mode "0777"`,
		"heartbeat never": `ipcbus heartbeat: "never" is not a duration`,
		"dead_after 0s":   `ipcbus dead_after: 0s must be positive`,
		"heartbeat 9s":    `dead_after (5s) must be longer than heartbeat (9s)`,
		"shape round":     `unknown ipcbus setting "shape"`,
		"zone one two":    `ipcbus zone needs exactly one value`,
		"blob_quota 1KiB": `ipcbus blob_quota: 1024 bytes is smaller than max_payload`,
		"blob_quota many": `ipcbus blob_quota: "many" is not a size`,
	}
	i := 0
	for line, want := range caddyfiles {
		i++
		cfg := filepath.Join(dir, fmt.Sprintf("Caddyfile%d", i))
		os.WriteFile(cfg, []byte("{\n\tipcbus {\n\t\t"+line+"\n\t}\n}\n:0 {\n\trespond ok\n}\n"), 0o600)
		out, err := cli(t, "adapt", "--config", cfg, "--adapter", "caddyfile")
		if err == nil || !strings.Contains(strings.ReplaceAll(out, `\"`, `"`), want) {
			t.Errorf("%s: %v\n%s\nwant %q", line, err, out, want)
		}
	}
	jsons := map[string]string{
		`{"zone":"../x"}`:  `invalid zone name "../x"`,
		`{"size":1000}`:    `invalid zone size 1000 bytes`,
		`{"mode":"0606"}`:  `invalid zone mode "0606"`,
		`{"heartbeat":-1}`: `invalid heartbeat`,
		`{"heartbeat":2000000000,"dead_after":1000000000}`: `invalid dead_after 1s: must be longer than heartbeat (2s)`,
		`{"colour":"blue"}`:      `unknown field "colour"`,
		`{"dir":"rel"}`:          `invalid dir "rel": give an absolute path`,
		`{"blob_quota":1048576}`: `invalid blob_quota 1048576: it is smaller than max_payload`,
		`{"blob_quota":-5}`:      `invalid blob_quota -5`,
	}
	for app, want := range jsons {
		i++
		cfg := filepath.Join(dir, fmt.Sprintf("config%d.json", i))
		os.WriteFile(cfg, []byte(`{"apps":{"ipcbus":`+app+`}}`), 0o600)
		out, err := cli(t, "validate", "--config", cfg)
		if err == nil || !strings.Contains(strings.ReplaceAll(out, `\"`, `"`), want) {
			t.Errorf("%s: %v\n%s\nwant %q", app, err, out, want)
		}
	}
}

// TestSizeMismatch: a process asking for another size than the zone file
// has is refused with an error naming the file.
func TestSizeMismatch(t *testing.T) {
	n := newNode(t)
	n.start()
	cfg := filepath.Join(n.dir, "other-size")
	os.WriteFile(cfg, []byte(strings.Replace(n.caddyfile(fmt.Sprintf("127.0.0.1:%d", freePort(t)), freePort(t)), "size 8MiB", "size 16MiB", 1)), 0o600)
	out, err := cli(t, "run", "--config", cfg, "--adapter", "caddyfile")
	want := fmt.Sprintf("zone file %s is 8388608 bytes but the config asks for 16777216", n.zonePath())
	if err == nil || !strings.Contains(strings.ReplaceAll(out, `\"`, `"`), want) {
		t.Fatalf("%v\n%s\nwant %q", err, out, want)
	}
}
