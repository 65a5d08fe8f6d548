package integration

import (
	"fmt"
	"net/http"
	"strings"
	"testing"
)

// TestAlertsAcrossProcesses: alerts sent through one process's admin API
// reach the other process (also across its reload), broadcasts reach both,
// and every error has its status and ngx_lua_ipc's words.
func TestAlertsAcrossProcesses(t *testing.T) {
	n := newNode(t)
	a, b := n.start(), n.start()
	recv := func(p *proc) uint64 { return p.stats().Alerts.Received }

	if code, body := a.post(fmt.Sprintf("/ipcbus/send?pid=%d&name=hello", b.pid()), "data"); code != http.StatusOK || !strings.Contains(body, `"ok": true`) {
		t.Fatalf("send: %d %s", code, body)
	}
	b.waitFor("b to receive the alert", func() bool { return recv(b) == 1 })
	if code, body := b.post("/ipcbus/broadcast?name=all", "x"); code != http.StatusOK {
		t.Fatalf("broadcast: %d %s", code, body)
	}
	a.waitFor("a to receive the broadcast", func() bool { return recv(a) == 1 })
	b.waitFor("b to receive its own broadcast", func() bool { return recv(b) == 2 })

	// Across a reload of b: its new worker handles what is sent to its pid.
	if out, err := cli(t, "reload", "--config", b.config, "--adapter", "caddyfile", "--address", b.admin, "--force"); err != nil {
		t.Fatalf("reload: %v\n%s", err, out)
	}
	b.waitFor("b's generation 2", func() bool { return b.stats().Generation == 2 })
	for i := 0; i < 100; i++ {
		if code, body := a.post(fmt.Sprintf("/ipcbus/send?pid=%d&name=after-reload", b.pid()), fmt.Sprint(i)); code != http.StatusOK {
			t.Fatalf("send after reload: %d %s", code, body)
		}
	}
	b.waitFor("b to receive 100 more", func() bool { return recv(b) == 102 })

	for _, c := range []struct {
		path, body string
		code       int
		want       string
	}{
		{"/ipcbus/send?pid=999999999&name=x", "", http.StatusNotFound, "No worker process with PID 999999999"},
		{"/ipcbus/send?pid=abc&name=x", "", http.StatusBadRequest, `pid \"abc\" is not a process id: give the pid of a Caddy process of the node`},
		{fmt.Sprintf("/ipcbus/send?pid=%d&name=%s", b.pid(), strings.Repeat("n", 255)), "", http.StatusBadRequest, "alert name length cannot exceed 254, was 255"},
		{"/ipcbus/broadcast", "", http.StatusBadRequest, "alert name cannot be empty"},
	} {
		code, body := a.post(c.path, c.body)
		if code != c.code || !strings.Contains(body, c.want) {
			t.Errorf("POST %.50s: %d %s, want %d %q", c.path, code, body, c.code, c.want)
		}
	}
	resp, err := http.Get("http://" + a.admin + "/ipcbus/send?pid=1&name=x")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusMethodNotAllowed {
		t.Fatalf("GET /ipcbus/send: %d", resp.StatusCode)
	}
}
