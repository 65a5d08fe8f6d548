package workermgr

import (
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/ipcbus/caddy-ipcbus/zone"
)

func openZone(t testing.TB) *zone.Zone {
	t.Helper()
	z, err := zone.Open(zone.Options{Name: "w", Dir: t.TempDir(), Size: zone.MinSize})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { z.Close() })
	return z
}

// recorder collects lifecycle events as "kind id prev mine next reason".
type recorder struct {
	mu  sync.Mutex
	evs []string
}

func (r *recorder) on(ev Event) {
	r.mu.Lock()
	defer r.mu.Unlock()
	s := fmt.Sprintf("%s %s %v %v %v", ev.Kind, ev.ID, ev.Prev, ev.Mine, ev.Next)
	if ev.Reason != ReasonNone {
		s += " " + ev.Reason.String()
	}
	r.evs = append(r.evs, s)
}

func (r *recorder) take() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	e := r.evs
	r.evs = nil
	return e
}

func join(t *testing.T, z *zone.Zone, gen int, rec *recorder, mod ...func(*Config)) *Worker {
	t.Helper()
	cfg := Config{Generation: gen, OnEvent: rec.on, Heartbeat: time.Hour, DeadAfter: 2 * time.Hour, ProbeInterval: time.Hour}
	for _, m := range mod {
		m(&cfg)
	}
	w, err := Join(z, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { w.Leave(ReasonShutdown) })
	return w
}

func expect(t *testing.T, got []string, want ...string) {
	t.Helper()
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Fatalf("events:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

// TestLifecycle walks worker-manager's lifecycle in one process: start,
// reload (old and new generation overlapping), stop, and a fresh start.
func TestLifecycle(t *testing.T) {
	z := openZone(t)
	rec := &recorder{}
	pid := fmt.Sprint(osPid())
	w1 := join(t, z, 1, rec)
	expect(t, rec.take(),
		"node_started 1-"+pid+" nil 1 nil",
		"worker_started 1-"+pid+" nil 1 nil")
	w2 := join(t, z, 2, rec)
	expect(t, rec.take(), "worker_started 2-"+pid+" 1 2 nil")
	if err := w1.Leave(ReasonAuto); err != nil {
		t.Fatal(err)
	}
	expect(t, rec.take(), "worker_exited 1-"+pid+" nil 2 1 reload")
	w2.Leave(ReasonShutdown)
	expect(t, rec.take(),
		"worker_exited 2-"+pid+" 0 1 nil shutdown",
		"node_stopped 2-"+pid+" 0 1 nil shutdown")
	n := z.Node()
	if n.Starts.Load() != 1 || n.WorkerStarts.Load() != 2 || n.Reloads.Load() != 1 || n.Exits.Load() != 2 || n.State.Load() != zone.NodeStopped {
		t.Fatalf("node counters: starts %d worker_starts %d reloads %d exits %d state %d", n.Starts.Load(), n.WorkerStarts.Load(), n.Reloads.Load(), n.Exits.Load(), n.State.Load())
	}
	_, ws := Snapshot(z)
	if len(ws) != 2 || ws[0].Reason != "reload" && ws[1].Reason != "reload" {
		t.Fatalf("table after stop: %+v", ws)
	}
	// A fresh node start: old entries are reaped, counters kept.
	join(t, z, 3, rec)
	expect(t, rec.take(),
		"node_started 3-"+pid+" 0 1 nil",
		"worker_started 3-"+pid+" 0 1 nil")
	ni, ws := Snapshot(z)
	if ni.Starts != 2 || ni.Epoch != 2 || ni.Exits != 2 || len(ws) != 1 || ws[0].State != "live" {
		t.Fatalf("after restart: %+v %+v", ni, ws)
	}
}

// TestRollback: a newer worker stopped while the older one lives (a failed
// config load) exits with reason rollback.
func TestRollback(t *testing.T) {
	z := openZone(t)
	rec := &recorder{}
	join(t, z, 1, rec)
	w2 := join(t, z, 2, rec)
	rec.take()
	w2.Leave(ReasonAuto)
	got := rec.take()
	if len(got) != 1 || !strings.HasSuffix(got[0], " rollback") {
		t.Fatalf("events %v", got)
	}
}

// TestCrashSeen: a worker whose handle is closed without leaving (what the
// kernel does when its process dies) is recorded as crashed by a probe.
func TestCrashSeen(t *testing.T) {
	z := openZone(t)
	rec := &recorder{}
	w1 := join(t, z, 1, rec)
	w2 := join(t, z, 2, rec)
	rec.take()
	close(w2.stop)
	<-w2.done
	w2.left.Store(true)
	w2.h.Close()
	w1.Probe(time.Now())
	got := rec.take()
	if len(got) != 1 || !strings.HasPrefix(got[0], "worker_crashed "+w2.ID()) || !strings.HasSuffix(got[0], "crash") {
		t.Fatalf("events %v", got)
	}
	if z.Node().Crashes.Load() != 1 || w1.Stats().CrashesSeen != 1 {
		t.Fatal("crash not counted")
	}
	w1.Probe(time.Now())
	if got := rec.take(); len(got) != 0 {
		t.Fatalf("crash recorded twice: %v", got)
	}
	_, ws := Snapshot(z)
	for _, w := range ws {
		if w.ID == w2.ID() && (w.State != "crashed" || w.Reason != "crash") {
			t.Fatalf("crashed worker listed as %+v", w)
		}
	}
}

// TestHungAndRecovered: a worker that stops beating is counted hung after
// DeadAfter, and live again at its next heartbeat.
func TestHungAndRecovered(t *testing.T) {
	z := openZone(t)
	rec := &recorder{}
	w1 := join(t, z, 1, rec)
	w2 := join(t, z, 2, rec)
	rec.take()
	now := time.Now()
	w1.Probe(now.Add(time.Hour))
	if got := rec.take(); len(got) != 0 {
		t.Fatalf("hung before dead_after: %v", got)
	}
	w1.Probe(now.Add(3 * time.Hour))
	got := rec.take()
	if len(got) != 1 || !strings.HasSuffix(got[0], " hung") || z.Node().MissedHeartbeats.Load() != 1 {
		t.Fatalf("events %v", got)
	}
	w2.Beat(time.Now())
	got = rec.take()
	if len(got) != 1 || !strings.HasPrefix(got[0], "worker_recovered "+w2.ID()) || z.Worker(w2.Slot()).State.Load() != zone.WorkerLive {
		t.Fatalf("after a heartbeat: %v", got)
	}
}

// TestCallbackPanic: a panicking callback is logged with its stack and the
// node lock is released.
func TestCallbackPanic(t *testing.T) {
	z := openZone(t)
	core, logs := observer.New(zap.InfoLevel)
	w1 := join(t, z, 1, &recorder{}, func(c *Config) {
		c.OnEvent = func(Event) { panic("boom") }
		c.Logger = zap.New(core)
	})
	if w1.Stats().CallbackPanics != 2 {
		t.Fatalf("panics %d", w1.Stats().CallbackPanics)
	}
	entries := logs.FilterMessage("lifecycle callback panicked").All()
	if len(entries) != 2 || !strings.Contains(fmt.Sprint(entries[0].ContextMap()["stack"]), "worker_test.go") {
		t.Fatalf("log %+v", entries)
	}
	done := make(chan struct{})
	go func() {
		join(t, z, 2, &recorder{})
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("node lock kept after a panicking callback")
	}
}

func TestBadConfig(t *testing.T) {
	z := openZone(t)
	for _, c := range []struct {
		cfg  Config
		want string
	}{
		{Config{}, "generation must be at least 1"},
		{Config{Generation: 1, Heartbeat: time.Second, DeadAfter: time.Second}, "must be longer than heartbeat"},
	} {
		if _, err := Join(z, c.cfg); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("Join(%+v) = %v, want %q", c.cfg, err, c.want)
		}
	}
}

func TestCount(t *testing.T) {
	for _, c := range []struct {
		c    Count
		s, j string
	}{{Count{}, "nil", "null"}, {present(0), "0", "0"}, {present(3), "3", "3"}} {
		j, _ := c.c.MarshalJSON()
		if c.c.String() != c.s || string(j) != c.j {
			t.Errorf("%+v: %s %s", c.c, c.c.String(), j)
		}
	}
}

// TestLogLevels: a crash is logged at error, a hang at warn, the rest of
// the lifecycle at info (an operator's alerting keys on the level).
func TestLogLevels(t *testing.T) {
	tests := []struct {
		ev   Event
		want zapcore.Level
	}{
		{Event{Kind: WorkerCrashed, Reason: ReasonCrash}, zapcore.ErrorLevel},
		{Event{Kind: WorkerCrashed, Reason: ReasonHung}, zapcore.WarnLevel},
		{Event{Kind: WorkerExited, Reason: ReasonReload}, zapcore.InfoLevel},
		{Event{Kind: NodeStarted}, zapcore.InfoLevel},
		{Event{Kind: NodeStopped}, zapcore.InfoLevel},
		{Event{Kind: WorkerRecovered}, zapcore.InfoLevel},
	}
	for _, tt := range tests {
		if got := logLevel(tt.ev); got != tt.want {
			t.Errorf("%s %s logged at %v, want %v", tt.ev.Kind, tt.ev.Reason, got, tt.want)
		}
	}
}

// TestLifecycleLogged: the lifecycle as it is logged, captured: a crash
// at error, a hang at warn, node start and stop, starts, reloads and exits
// at info, each once.
func TestLifecycleLogged(t *testing.T) {
	z := openZone(t)
	core, logs := observer.New(zap.DebugLevel)
	logged := func(c *Config) { c.Logger = zap.New(core) }
	rec := &recorder{}
	w1 := join(t, z, 1, rec, logged)
	w2 := join(t, z, 2, rec, logged)
	w1.Leave(ReasonAuto)
	w3 := join(t, z, 3, rec, logged)
	now := time.Now()
	w2.Probe(now.Add(3 * time.Hour)) // w3 silent: hung
	close(w3.stop)
	<-w3.done
	w3.left.Store(true)
	w3.h.Close() // w3's process "dies"
	w2.Probe(now.Add(3 * time.Hour))
	w2.Leave(ReasonShutdown)

	type entry struct {
		msg    string
		level  zapcore.Level
		reason string
	}
	want := []entry{
		{"ipcbus node_started", zapcore.InfoLevel, ""},
		{"ipcbus worker_started", zapcore.InfoLevel, ""},
		{"ipcbus worker_started", zapcore.InfoLevel, ""}, // the reload's new generation
		{"ipcbus worker_exited", zapcore.InfoLevel, "reload"},
		{"ipcbus worker_started", zapcore.InfoLevel, ""},
		{"ipcbus worker_crashed", zapcore.WarnLevel, "hung"},
		{"ipcbus worker_crashed", zapcore.ErrorLevel, "crash"},
		{"ipcbus worker_exited", zapcore.InfoLevel, "shutdown"},
		{"ipcbus node_stopped", zapcore.InfoLevel, "shutdown"},
	}
	var got []entry
	for _, e := range logs.All() {
		r, _ := e.ContextMap()["reason"].(string)
		got = append(got, entry{e.Message, e.Level, r})
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("logged:\n%v\nwant:\n%v", got, want)
	}
}
