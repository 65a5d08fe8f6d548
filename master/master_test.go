package master

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ipcbus/caddy-ipcbus/zone"
)

func TestNextBackoff(t *testing.T) {
	tests := []struct {
		name     string
		prev, up time.Duration
		want     time.Duration
	}{
		{"first crash", 0, time.Second, time.Second},
		{"crashed again at once", time.Second, 2 * time.Second, 2 * time.Second},
		{"keeps crashing", 8 * time.Second, time.Second, 16 * time.Second},
		{"capped", 16 * time.Second, time.Second, 30 * time.Second},
		{"stays capped", 30 * time.Second, time.Second, 30 * time.Second},
		{"ran a while: reset", 30 * time.Second, backoffReset, time.Second},
	}
	for _, tt := range tests {
		if got := nextBackoff(tt.prev, tt.up); got != tt.want {
			t.Errorf("%s: nextBackoff(%v, %v) = %v, want %v", tt.name, tt.prev, tt.up, got, tt.want)
		}
	}
}

func TestWorkerConfig(t *testing.T) {
	tests := []struct {
		name, in string
	}{
		{"empty", ``},
		{"no admin, no ipcbus", `{"apps":{"http":{"servers":{}}}}`},
		{"admin off and remote", `{"admin":{"disabled":true,"listen":"localhost:2019","remote":{"listen":":2021"},"origins":["x"],"config":{"persist":true}},"apps":{"ipcbus":{"zone":"z","size":1048576}}}`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out, err := workerConfig([]byte(tt.in), "unix//d/z.w1.sock|0600", nil)
			if err != nil {
				t.Fatal(err)
			}
			var got struct {
				Admin map[string]any `json:"admin"`
				Apps  map[string]any `json:"apps"`
			}
			if err := json.Unmarshal(out, &got); err != nil {
				t.Fatal(err)
			}
			want := map[string]any{"listen": "unix//d/z.w1.sock|0600", "config": map[string]any{"persist": false}}
			if b1, b2 := mustJSON(got.Admin), mustJSON(want); b1 != b2 {
				t.Errorf("admin %s, want %s", b1, b2)
			}
			if _, ok := got.Apps["ipcbus"]; !ok {
				t.Errorf("no ipcbus app in %s", out)
			}
			if strings.Contains(tt.in, "1048576") && !strings.Contains(string(out), `"size":1048576`) {
				t.Errorf("numbers changed: %s", out)
			}
		})
	}
}

func mustJSON(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}

func TestZoneOf(t *testing.T) {
	tests := []struct {
		in      string
		want    zone.Options
		wantErr string
	}{
		{`{}`, zone.Options{Name: zone.DefaultName}, ""},
		{`{"apps":{"ipcbus":{"zone":"a","dir":"/d","mode":"0660"}}}`, zone.Options{Name: "a", Dir: "/d", Mode: 0o660}, ""},
		{`{"apps":{"ipcbus":{"mode":"rw"}}}`, zone.Options{}, "invalid ipcbus mode"},
		{`{"apps":{"ipcbus":{"zone":"a/b"}}}`, zone.Options{}, "zone"},
		{`[1]`, zone.Options{}, "not a JSON object"},
	}
	for _, tt := range tests {
		got, err := ZoneOf([]byte(tt.in))
		if tt.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("ZoneOf(%s) = %v, want an error with %q", tt.in, err, tt.wantErr)
			}
			continue
		}
		if err != nil || got != tt.want {
			t.Errorf("ZoneOf(%s) = %+v, %v, want %+v", tt.in, got, err, tt.want)
		}
	}
}

func TestLookup(t *testing.T) {
	cfg := []byte(`{"admin":{"listen":"localhost:2019"},"apps":{"http":{"servers":{"s":{"listen":[":80",":443"]}}}}}`)
	tests := []struct {
		path, want string
		err        bool
	}{
		{"/config/", string(cfg) + "\n", false},
		{"/config/admin/listen", `"localhost:2019"` + "\n", false},
		{"/config/apps/http/servers/s/listen/1", `":443"` + "\n", false},
		{"/config/apps/tls", "", true},
		{"/config/apps/http/servers/s/listen/2", "", true},
	}
	for _, tt := range tests {
		got, err := lookup(cfg, tt.path)
		if (err != nil) != tt.err || string(got) != tt.want {
			t.Errorf("lookup(%s) = %q, %v, want %q", tt.path, got, err, tt.want)
		}
	}
	if got, _ := lookup(nil, "/config/"); string(got) != "null\n" {
		t.Errorf("empty config: %q", got)
	}
}

func TestWithAdminOf(t *testing.T) {
	got, err := withAdminOf([]byte(`{"admin":{"listen":"unix//w.sock"},"apps":{"a":1}}`), []byte(`{"admin":{"listen":"localhost:2019"}}`))
	if err != nil || string(got) != `{"admin":{"listen":"localhost:2019"},"apps":{"a":1}}` {
		t.Errorf("withAdminOf = %s, %v", got, err)
	}
	got, _ = withAdminOf([]byte(`{"admin":{"listen":"unix//w.sock"}}`), []byte(`{}`))
	if string(got) != `{}` {
		t.Errorf("withAdminOf without admin = %s", got)
	}
}

// TestMasterLock: one master per zone; the second is refused with the
// first one's pid, and the published Info says whether it runs.
func TestMasterLock(t *testing.T) {
	dir := t.TempDir()
	f, err := lockInfo(dir, "z")
	if err != nil {
		t.Fatal(err)
	}
	if err := f.write(Info{PID: os.Getpid()}); err != nil {
		t.Fatal(err)
	}
	if _, err := lockInfo(dir, "z"); err == nil || !strings.Contains(err.Error(), "pid "+strconv.Itoa(os.Getpid())) {
		t.Fatalf("second lock: %v", err)
	}
	in, err := ReadInfo(dir, "z")
	if err != nil || !in.Running || in.PID != os.Getpid() {
		t.Fatalf("ReadInfo = %+v, %v", in, err)
	}
	f.remove()
	if _, err := ReadInfo(dir, "z"); !os.IsNotExist(err) {
		t.Fatalf("after remove: %v", err)
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 0 {
		t.Fatalf("left behind: %v", ents)
	}
	g, err := lockInfo(dir, "z")
	if err != nil {
		t.Fatalf("lock after the first master left: %v", err)
	}
	g.remove()
}

func TestCheckOrigin(t *testing.T) {
	m := &Master{opts: Options{AdminHosts: []string{"localhost:2019", "127.0.0.1:2019"}}}
	h := m.checkOrigin(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {}))
	tests := []struct {
		name, host, origin, upgrade string
		want                        int
	}{
		{"allowed host", "localhost:2019", "", "", 200},
		{"allowed origin", "127.0.0.1:2019", "http://localhost:2019", "", 200},
		{"rebound host", "evil.example:2019", "", "", 403},
		{"foreign origin", "localhost:2019", "http://evil.example", "", 403},
		{"websocket", "localhost:2019", "", "websocket", 403},
	}
	for _, tt := range tests {
		r := httptest.NewRequest(http.MethodGet, "/config/", nil)
		r.Host = tt.host
		if tt.origin != "" {
			r.Header.Set("Origin", tt.origin)
		}
		if tt.upgrade != "" {
			r.Header.Set("Upgrade", tt.upgrade)
		}
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
		if w.Code != tt.want {
			t.Errorf("%s: %d, want %d", tt.name, w.Code, tt.want)
		}
	}
}

func TestRemoveStale(t *testing.T) {
	dir := t.TempDir()
	for _, n := range []string{"z.w1.sock", "z.w12.json", "z.zone", "z.blob-0123", "y.w1.sock", "z.wx.sock", "z.master.json"} {
		os.WriteFile(filepath.Join(dir, n), nil, 0o600)
	}
	m := &Master{dir: dir, zone: zone.Options{Name: "z"}, all: map[*proc]struct{}{}}
	m.removeStale()
	var left []string
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		left = append(left, e.Name())
	}
	if got := strings.Join(left, " "); got != "y.w1.sock z.blob-0123 z.master.json z.wx.sock z.zone" {
		t.Errorf("left %s", got)
	}
}

func TestWorkerEnv(t *testing.T) {
	share := strconv.Itoa(max(1, runtime.GOMAXPROCS(0)/2))
	tests := []struct {
		name string
		env  []string
		want string
	}{
		{"share of the CPUs", []string{"A=1"}, "GOMAXPROCS=" + share},
		{"the user's setting kept", []string{"GOMAXPROCS=7"}, "GOMAXPROCS=7"},
		{"inherited sockets only from the master", []string{ListenFDsEnv + "=tcp/:80=3"}, "GOMAXPROCS=" + share},
	}
	for _, tt := range tests {
		m := &Master{opts: Options{Env: tt.env, Workers: 2}}
		env := m.workerEnv()
		var got []string
		for _, kv := range env {
			if strings.HasPrefix(kv, ListenFDsEnv+"=") {
				t.Errorf("%s: %s passed on", tt.name, kv)
			}
			if strings.HasPrefix(kv, "GOMAXPROCS=") {
				got = append(got, kv)
			}
		}
		if len(got) != 1 || got[0] != tt.want {
			t.Errorf("%s: %v, want %s", tt.name, got, tt.want)
		}
	}
}

func TestAdminListen(t *testing.T) {
	tests := []struct{ cfg, want string }{
		{`{}`, ""},
		{`{"admin":{"listen":"localhost:2020"}}`, "localhost:2020"},
		{`{"admin":{"disabled":true}}`, ""},
		{`not json`, ""},
	}
	for _, tt := range tests {
		if got := adminListen([]byte(tt.cfg)); got != tt.want {
			t.Errorf("adminListen(%s) = %q, want %q", tt.cfg, got, tt.want)
		}
	}
}
