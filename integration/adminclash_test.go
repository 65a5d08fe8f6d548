package integration

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestAdminClash: a second Caddy process on the zone with the admin
// address of a live one refuses to start, naming the first one's pid,
// and the first one goes on alone.
func TestAdminClash(t *testing.T) {
	n := newNode(t)
	p1 := n.start()
	cfg := filepath.Join(n.dir, "Caddyfile-clash")
	if err := os.WriteFile(cfg, []byte(n.caddyfile(p1.admin, freePort(t))), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(caddyBin, "run", "--config", cfg, "--adapter", "caddyfile")
	cmd.Env = append(os.Environ(), "HOME="+n.dir, "XDG_DATA_HOME="+n.dir, "XDG_CONFIG_HOME="+n.dir)
	done := make(chan struct{})
	var out []byte
	var err error
	go func() { out, err = cmd.CombinedOutput(); close(done) }()
	select {
	case <-done:
	case <-time.After(60 * time.Second):
		cmd.Process.Kill()
		t.Fatal("the clashing process did not exit")
	}
	want := "admin address " + p1.admin + " is already used by worker 1-" + strconv.Itoa(p1.pid()) + " (pid " + strconv.Itoa(p1.pid()) + ")"
	if err == nil || !strings.Contains(string(out), want) {
		t.Fatalf("second process: %v, want an error with %q:\n%s", err, want, out)
	}
	rep := p1.workers()
	if got := countState(rep, "live"); got != 1 {
		t.Fatalf("%d live workers after the refusal, want 1: %+v", got, rep.Workers)
	}
}
