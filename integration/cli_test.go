package integration

import (
	"bufio"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestCLITailAndRm: `caddy ipcbus tail` follows the bus of running
// processes from the zone file (no admin endpoint), `caddy ipcbus rm` is
// refused while a process uses the zone and removes it once they are gone,
// and an unknown subcommand exits non-zero.
func TestCLITailAndRm(t *testing.T) {
	n := newNode(t)
	p := n.start()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	tail := exec.CommandContext(ctx, caddyBin, "ipcbus", "tail", "--zone", n.zone, "--dir", n.dir, "--source", "cli", "--count", "2", "--json")
	tail.Stderr = os.Stderr
	out, err := tail.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := tail.Start(); err != nil {
		t.Fatal(err)
	}
	lines := make(chan string)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	// tail starts from now: post until it has seen two (the first posts may
	// come before it attached).
	var got []map[string]any
	for i := 0; len(got) < 2; i++ {
		if code, body := p.post("/ipcbus/events", `{"source":"cli","event":"e","data":{"n":1}}`); code != 200 {
			t.Fatalf("post: %d %s", code, body)
		}
		select {
		case l, ok := <-lines:
			if !ok {
				t.Fatalf("tail ended after %v", got)
			}
			var m map[string]any
			if err := json.Unmarshal([]byte(l), &m); err != nil {
				t.Fatalf("tail printed %q: %v", l, err)
			}
			got = append(got, m)
		case <-time.After(100 * time.Millisecond):
		case <-ctx.Done():
			t.Fatal("tail printed nothing")
		}
	}
	if err := tail.Wait(); err != nil {
		t.Fatalf("tail --count 2: %v", err)
	}
	if got[0]["source"] != "cli" || got[0]["event"] != "e" || int(got[0]["pid"].(float64)) != p.pid() {
		t.Fatalf("tail line %v", got[0])
	}
	if out, err := cli(t, "ipcbus", "rm", "--zone", n.zone, "--dir", n.dir); err == nil || !strings.Contains(out, "zone in use") {
		t.Fatalf("rm while a process runs: %v %s", err, out)
	}
	p.signal(syscall.SIGTERM)
	p.waitExit()
	if out, err := cli(t, "ipcbus", "rm", "--zone", n.zone, "--dir", n.dir); err != nil || !strings.Contains(out, "removed "+n.zonePath()) {
		t.Fatalf("rm after the last process: %v %s", err, out)
	}
	if _, err := os.Stat(n.zonePath()); !os.IsNotExist(err) {
		t.Fatalf("zone file after rm: %v", err)
	}
	if out, err := cli(t, "ipcbus", "bogus"); err == nil || !strings.Contains(out, `unknown command "bogus"`) {
		t.Fatalf("unknown subcommand: %v %s", err, out)
	}
}

// TestExampleCaddyfile: the README's first command's config is valid, and
// every route its comments show is there.
func TestExampleCaddyfile(t *testing.T) {
	out, err := cli(t, "adapt", "--config", "../examples/Caddyfile", "--adapter", "caddyfile")
	if err != nil {
		t.Fatalf("adapt examples/Caddyfile: %v\n%s", err, out)
	}
	for _, h := range []string{`"handler":"ipcbus_poll"`, `"handler":"ipcbus_broadcast"`, `"handler":"ipcbus_send"`, `"alert":true`} {
		if !strings.Contains(out, h) {
			t.Errorf("examples/Caddyfile adapts without %s", h)
		}
	}
}
