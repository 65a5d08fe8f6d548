package ipcbus

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/ipcbus/caddy-ipcbus/events"
	"github.com/ipcbus/caddy-ipcbus/ipc"
)

func init() { caddy.RegisterModule(recorder{}) }

// recorded gets the Caddy events the test-only events handler is given.
var recorded = make(chan caddy.Event, 64)

// recorder is a test-only events handler (events.handlers.ipcbus_test_record).
type recorder struct{}

func (recorder) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{ID: "events.handlers.ipcbus_test_record", New: func() caddy.Module { return recorder{} }}
}

func (recorder) Handle(_ context.Context, e caddy.Event) error {
	recorded <- e
	return nil
}

// startConfig provisions a config with Caddy's own helper and starts its
// ipcbus and events apps (the events app subscribes its handlers at
// Start); the ipcbus app stops at the end of the test.
func startConfig(t *testing.T, ipcbusJSON string) *App {
	t.Helper()
	cfg := fmt.Sprintf(`{"apps":{
		"ipcbus": %s,
		"events": {"subscriptions":[
			{"events":["ipcbus_alert","ipcbus_event"],"handlers":[{"handler":"ipcbus_test_record"}]},
			{"events":["ipcbus_event","ipcbus_alert"],"handlers":[{"handler":"ipcbus_forward"}]}
		]}}}`, ipcbusJSON)
	var c caddy.Config
	if err := json.Unmarshal([]byte(cfg), &c); err != nil {
		t.Fatal(err)
	}
	ctx, err := caddy.ProvisionContext(&c)
	if err != nil {
		t.Fatal(err)
	}
	ev, _ := ctx.App("events")
	if err := ev.(caddy.App).Start(); err != nil {
		t.Fatal(err)
	}
	v, _ := ctx.App("ipcbus")
	a := v.(*App)
	if err := a.Validate(); err != nil {
		t.Fatal(err)
	}
	if err := a.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Stop() })
	return a
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(2 * time.Millisecond) {
		if cond() {
			return
		}
	}
	t.Fatalf("timed out waiting for %s", what)
}

// TestReactions: an alert runs its on_alert post and webhook actions and
// is emitted as ipcbus_alert; the posted bus event is emitted as
// ipcbus_event; the webhook retries a failing backend, then succeeds;
// ipcbus_forward does not put the emitted events back on the bus; and
// the alert counts as received, not unhandled.
func TestReactions(t *testing.T) {
	var calls atomic.Int32
	var lastAttempt, lastName, lastBody atomic.Value
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b := make([]byte, 64)
		n, _ := r.Body.Read(b)
		lastBody.Store(string(b[:n]))
		lastAttempt.Store(r.Header.Get("X-Ipcbus-Attempt"))
		lastName.Store(r.Header.Get("X-Ipcbus-Alert"))
		if calls.Add(1) < 3 {
			http.Error(w, "not yet", http.StatusServiceUnavailable)
			return
		}
		w.WriteHeader(http.StatusNoContent)
	}))
	defer backend.Close()
	a := startConfig(t, fmt.Sprintf(`{"zone":"react","dir":%q,"size":2097152,
		"on_alert":[
			{"name":"deploy","action":"post","source":"ops","event":"deployed"},
			{"name":"dep*","action":"webhook","url":%q,"backoff":10000000}
		],
		"emit":{"alerts":["deploy"],"events":["ops/deployed"]}}`, t.TempDir(), backend.URL))
	before := readReactionStats()
	var forwarded atomic.Int32
	a.Bus().Register(func(*events.Event) { forwarded.Add(1) }, "caddy")
	if err := a.IPC().Send(os.Getpid(), "deploy", []byte("v2")); err != nil {
		t.Fatal(err)
	}
	got := map[string]map[string]any{}
	for len(got) < 2 {
		select {
		case e := <-recorded:
			got[e.Name()] = e.Data
		case <-time.After(10 * time.Second):
			t.Fatalf("emitted only %v", got)
		}
	}
	if d := got[EmitAlertEvent]; d["name"] != "deploy" || d["data"] != "v2" || d["pid"] != os.Getpid() || d["broadcast"] != false {
		t.Errorf("ipcbus_alert data %v", d)
	}
	if d := got[EmitBusEvent]; d["source"] != "ops" || d["event"] != "deployed" || d["data"] != "v2" || d["pid"] != os.Getpid() {
		t.Errorf("ipcbus_event data %v", d)
	}
	waitFor(t, "the webhook's third attempt", func() bool { return readReactionStats().WebhookSent > before.WebhookSent })
	if s := readReactionStats(); s.WebhookRetries-before.WebhookRetries != 2 || s.WebhookFailed != before.WebhookFailed || s.Posted-before.Posted != 1 {
		t.Errorf("stats %+v, before %+v", s, before)
	}
	if lastAttempt.Load() != "3" || lastName.Load() != "deploy" || lastBody.Load() != "v2" {
		t.Errorf("webhook got attempt %v, alert %v, body %v", lastAttempt.Load(), lastName.Load(), lastBody.Load())
	}
	if st := a.IPC().Stats(); st.Received != 1 || st.Unhandled != 0 {
		t.Errorf("alerts received %d, unhandled %d", st.Received, st.Unhandled)
	}
	a.Bus().Poll()
	time.Sleep(50 * time.Millisecond) // a forwarded event would be posted by now
	a.Bus().Poll()
	if n := forwarded.Load(); n != 0 {
		t.Errorf("ipcbus_forward put %d emitted events back on the bus", n)
	}
}

// TestOnAlertLog: the log action writes one line at its level with the
// alert's name, sender and data (cut at 1 KiB), and nothing below the
// logger's level.
func TestOnAlertLog(t *testing.T) {
	for _, tc := range []struct {
		level, loggerLevel string
		data               string
		lines              int
		truncated          bool
	}{
		{"warn", "info", "v2", 1, false},
		{"debug", "info", "v2", 0, false},
		{"error", "debug", strings.Repeat("x", 2000), 1, true},
	} {
		t.Run(tc.level+"/"+tc.loggerLevel, func(t *testing.T) {
			ll, _ := zapcore.ParseLevel(tc.loggerLevel)
			core, logs := observer.New(ll)
			o := &OnAlert{Name: "dep*", Action: ActionLog, Level: tc.level}
			o.setDefaults()
			if err := o.validate(0); err != nil {
				t.Fatal(err)
			}
			r := &reactions{actions: []*OnAlert{o}, log: zap.New(core)}
			if !r.Wants("deploy") || r.Wants("other") {
				t.Fatal("Wants does not follow the pattern")
			}
			r.Alert(&ipc.Alert{Name: "deploy", Data: []byte(tc.data), Sender: 42})
			if logs.Len() != tc.lines {
				t.Fatalf("%d lines, want %d", logs.Len(), tc.lines)
			}
			if tc.lines == 0 {
				return
			}
			e := logs.All()[0]
			f := e.ContextMap()
			if e.Level.String() != tc.level || f["name"] != "deploy" || f["sender"] != int64(42) || len(f["data"].(string)) > logDataMax || (f["data_truncated"] == true) != tc.truncated {
				t.Fatalf("line %s %v", e.Level, f)
			}
		})
	}
}

// TestOnAlertReloadOutsideRun: outside `caddy run` (here, a test binary,
// where SIGUSR1 would end the process) reload signals nothing: it logs an
// error and counts no reload.
func TestOnAlertReloadOutsideRun(t *testing.T) {
	core, logs := observer.New(zapcore.InfoLevel)
	r := &reactions{actions: []*OnAlert{{Name: "reload-me", Action: ActionReload}}, log: zap.New(core)}
	before := readReactionStats().Reloads
	r.Alert(&ipc.Alert{Name: "reload-me", Sender: 7})
	if readReactionStats().Reloads != before {
		t.Fatal("a reload was counted")
	}
	if logs.Len() != 1 || logs.All()[0].Level != zapcore.ErrorLevel || !strings.Contains(logs.All()[0].Message, "not started with `caddy run`") {
		t.Fatalf("log %v", logs.All())
	}
}
