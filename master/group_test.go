package master

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// waitUntil polls cond for up to 30 s: a guard against hangs, not a timing assertion.
func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		if cond() {
			return
		}
	}
	t.Fatalf("timed out waiting for %s", what)
}

// markers reads apps.fake.v of each live worker's config, in slot order.
func markers(t *testing.T, m *Master) []string {
	t.Helper()
	var out []string
	for _, p := range m.live() {
		_, b, err := p.call(context.Background(), http.MethodGet, "/config/", nil, nil)
		if err != nil {
			t.Fatal(err)
		}
		v, _ := lookup(b, "/config/apps/fake/v")
		out = append(out, strings.TrimSpace(string(v)))
	}
	return out
}

// TestRollingLoad: POST /load reaches the workers one at a time; the
// first one's refusal leaves all on the old config and is the answer; a
// later one's gives those already done the old config back.
func TestRollingLoad(t *testing.T) {
	m, client, stop := fakeGroup(t, 3)
	defer stop()
	socks := []string{m.cur[0].sock, m.cur[1].sock, m.cur[2].sock}
	tests := []struct {
		name       string
		refuse     string
		wantStatus int
		wantErr    string
		want       string // every worker's marker after it
	}{
		{"accepted", "", http.StatusOK, "", "1"},
		{"refused by the first", socks[0], http.StatusBadRequest, "refused by the fake worker", "1"},
		{"refused by the last", socks[2], http.StatusInternalServerError, "after 2 others took it, and they were given the previous one back", "1"},
		{"accepted again", "", http.StatusOK, "", "4"},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := fmt.Sprintf(`{"apps":{"ipcbus":{"zone":"f","dir":%q},"fake":{"v":%d,"refuse":%q}}}`, m.zone.Dir, i+1, tt.refuse)
			resp, err := client.Post("http://admin/load", "application/json", strings.NewReader(cfg))
			if err != nil {
				t.Fatal(err)
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != tt.wantStatus || !strings.Contains(string(b), tt.wantErr) {
				t.Fatalf("POST /load: %d %s, want %d with %q", resp.StatusCode, b, tt.wantStatus, tt.wantErr)
			}
			if got := markers(t, m); fmt.Sprint(got) != fmt.Sprint([]string{tt.want, tt.want, tt.want}) {
				t.Fatalf("workers' configs %v, want %s for all", got, tt.want)
			}
			got, _ := lookup(m.config, "/config/apps/fake/v")
			if strings.TrimSpace(string(got)) != tt.want {
				t.Fatalf("the master's config has v %s, want %s", got, tt.want)
			}
		})
	}
}

// TestCrashRestart: a worker killed is restarted in its slot, counted.
func TestCrashRestart(t *testing.T) {
	m, client, stop := fakeGroup(t, 2)
	defer stop()
	victim := m.live()[0].pid()
	syscall.Kill(victim, syscall.SIGKILL)
	waitUntil(t, "the replacement", func() bool {
		var in Info
		if getInfo(client, &in) != nil {
			return false
		}
		for _, w := range in.Workers {
			if w.Slot == 0 && w.PID != victim && w.Restarts == 1 {
				return true
			}
		}
		return false
	})
}

// TestUpgradeFake: an upgrade to a binary that exits at once fails and
// keeps the workers; one to a working binary replaces them all.
func TestUpgradeFake(t *testing.T) {
	m, _, stop := fakeGroup(t, 2)
	defer stop()
	bin := t.TempDir()
	bad, hang := filepath.Join(bin, "bad"), filepath.Join(bin, "hang")
	if err := os.WriteFile(bad, []byte("#!/bin/sh\nexit 3\n"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(hang, []byte("#!/bin/sh\n"+fakeHangEnv+"=1 exec "+os.Args[0]+` "$@"`+"\n"), 0o700); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name, binary string
		timeout      time.Duration
		wantErr      string
	}{
		{"exits at once", bad, time.Minute, "exited before it was serving"},
		{"never comes up", hang, time.Second, "2 of 2 new workers were not live and serving after 1s"},
		{"missing", filepath.Join(t.TempDir(), "none"), time.Minute, "no such file"},
		{"works", os.Args[0], time.Minute, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := pids(m.live())
			got, err := m.upgrade(tt.binary, tt.timeout)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("upgrade = %v, want %q", err, tt.wantErr)
				}
				if now := pids(m.live()); fmt.Sprint(now) != fmt.Sprint(before) {
					t.Fatalf("workers %v, then %v", before, now)
				}
				waitUntil(t, "the new workers to be gone", func() bool {
					m.mu.Lock()
					defer m.mu.Unlock()
					return len(m.all) == 2
				})
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if fmt.Sprint(got) != fmt.Sprint(pids(m.live())) || got[0] == before[0] || got[1] == before[1] {
				t.Fatalf("upgrade: %v, live %v, before %v", got, pids(m.live()), before)
			}
			waitUntil(t, "the old workers to exit", func() bool {
				return syscall.Kill(before[0], 0) != nil && syscall.Kill(before[1], 0) != nil
			})
		})
	}
}
