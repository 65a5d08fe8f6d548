package integration

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestAlertsDiscardedEndToEnd: alerts sent to a process that stopped
// reading and is then killed are counted in the node's alerts_discarded,
// shown by the admin API and in /metrics, and logged once by the worker
// that found the crash. Catches "the node's alerts_discarded never
// incremented" (module.go), which survived every test that called
// ipc.Discarded directly.
func TestAlertsDiscardedEndToEnd(t *testing.T) {
	n := newNode(t)
	a, b := n.start(), n.start()
	b.signal(syscall.SIGSTOP)
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(time.Millisecond) {
		st, _ := os.ReadFile(fmt.Sprintf("/proc/%d/stat", b.pid()))
		if f := strings.Fields(string(st[strings.LastIndexByte(string(st), ')')+1:])); len(f) > 0 && f[0] == "T" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("b not stopped")
		}
	}
	const sent = 7
	for i := 0; i < sent; i++ {
		if code, body := a.post(fmt.Sprintf("/ipcbus/send?pid=%d&name=never-read", b.pid()), fmt.Sprint(i)); code != http.StatusOK {
			t.Fatalf("send %d: %d %s", i, code, body)
		}
	}
	b.signal(syscall.SIGKILL)
	b.waitExit()
	a.waitFor("a to count the discarded alerts", func() bool { return a.workers().Node.AlertsDiscarded == sent })
	if rep := a.workers(); rep.Node.Crashes != 1 {
		t.Fatalf("node %+v: want one crash", rep.Node)
	}
	log := a.logText()
	if !strings.Contains(log, "alerts to a crashed worker discarded") || !strings.Contains(log, fmt.Sprintf(`"alerts":%d`, sent)) {
		t.Fatalf("no log line with the %d discarded alerts in a's log:\n%s", sent, log)
	}
	resp, err := http.Get("http://" + a.admin + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		t.Fatal(err)
	}
	if want := fmt.Sprintf("caddy_ipcbus_alerts_discarded_total %d", sent); !strings.Contains(string(body), want) {
		t.Fatalf("/metrics lacks %q", want)
	}
}
