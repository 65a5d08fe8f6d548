package integration

import (
	"bufio"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/net/websocket"
)

// chromiumPath finds Debian's Chromium (.ci/run installs it).
func chromiumPath(t *testing.T) string {
	for _, p := range []string{"chromium", "chromium-browser", "google-chrome"} {
		if path, err := exec.LookPath(p); err == nil {
			return path
		}
	}
	if os.Getenv("CI") != "" {
		t.Fatal("chromium is not installed; .ci/run installs it with apt-get install chromium")
	}
	t.Skip("chromium is not installed (apt-get install chromium); CI installs it and runs this test")
	return ""
}

// startLive runs a Caddy process on the example live page, on zone name.
func startLive(t *testing.T, zone, dir string) (port, pid int) {
	t.Helper()
	admin, port := freePort(t), freePort(t)
	cmd := exec.Command(caddyBin, "run", "--config", "../examples/live/Caddyfile", "--adapter", "caddyfile")
	cmd.Env = append(os.Environ(), "HOME="+dir, "XDG_DATA_HOME="+dir, "XDG_CONFIG_HOME="+dir,
		fmt.Sprintf("IPCBUS_ADMIN=127.0.0.1:%d", admin), fmt.Sprintf("IPCBUS_PORT=%d", port),
		"IPCBUS_ZONE="+zone, "IPCBUS_ROOT=../examples/live")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		if resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/", port)); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return port, cmd.Process.Pid
			}
		}
	}
	t.Fatal("the live example did not start")
	return 0, 0
}

// TestLivePageInChromium drives examples/live in headless Chromium against
// two Caddy processes: the page is served by, and subscribed to, process B,
// and says so (B's pid); a message posted before the page opened is shown
// as backlog; its form broadcasts through process A; the message appears
// in the page with its source, its time and A's pid.
func TestLivePageInChromium(t *testing.T) {
	chrome := chromiumPath(t)
	dir := t.TempDir()
	zone := fmt.Sprintf("e2e-%d", os.Getpid())
	// The example runs on the default directory: remove the zone (its
	// files, and the private directory when it is left empty) once both
	// processes are gone (cleanups run last first).
	t.Cleanup(func() {
		if out, err := cli(t, "ipcbus", "rm", "--zone", zone); err != nil {
			t.Errorf("removing the test's zone: %v\n%s", err, out)
		}
	})
	a, aPID := startLive(t, zone, dir)
	b, bPID := startLive(t, zone, dir)
	// Posted before the page opens: the page shows it as backlog.
	resp, err := http.Post(fmt.Sprintf("http://127.0.0.1:%d/publish", a), "text/plain", strings.NewReader("from before"))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	page := fmt.Sprintf("http://127.0.0.1:%d/?publish=http://127.0.0.1:%d", b, a)
	eval := openChromium(t, chrome, dir, page)

	// Wait for the EventSource to connect, then submit the form.
	waitJS(t, eval, `document.body.dataset.connected === "1"`)
	eval(`document.getElementById("msg").value = "hello from chromium"; document.getElementById("send").requestSubmit(); true`)
	waitJS(t, eval, `[...document.querySelectorAll("#log li")].some(li => li.textContent.includes("hello from chromium"))`)
	got := fmt.Sprint(eval(`document.querySelector("#log li").textContent`))
	if !strings.Contains(got, "hello from chromium") || !strings.Contains(got, " chat ") || !strings.Contains(got, fmt.Sprintf("pid %d", aPID)) ||
		!regexp.MustCompile(`\d{1,2}:\d{2}:\d{2}`).MatchString(got) {
		t.Fatalf("the newest entry shows %q: want the message, source chat, a time and pid %d", got, aPID)
	}
	if who := fmt.Sprint(eval(`document.getElementById("who").textContent`)); !strings.Contains(who, fmt.Sprintf("connected to Caddy process %d", bPID)) {
		t.Fatalf("the page says %q, want process %d", who, bPID)
	}
	if old := fmt.Sprint(eval(`[...document.querySelectorAll("#log li.backlog")].map(li => li.textContent).join("|")`)); !strings.Contains(old, "from before") {
		t.Fatalf("backlog %q", old)
	}
	t.Logf("page on process B (pid %d) shows %q, broadcast through process A (pid %d)", bPID, got, aPID)
}

// openChromium opens page in headless Chromium (its profile in dir) and
// returns a function that evaluates JavaScript in it.
func openChromium(t *testing.T, chrome, dir, page string) func(string) any {
	t.Helper()
	cmd := exec.Command(chrome, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
		"--disable-background-networking", "--disable-component-update", "--disable-sync",
		"--user-data-dir="+filepath.Join(dir, "chrome"), "--remote-debugging-port=0", "--remote-allow-origins=*", page)
	// Its own process group: Chromium's helper processes write to the
	// profile until they end too, and the profile's removal fails if they
	// still do.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	stderr, _ := cmd.StderrPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		pgid := cmd.Process.Pid
		syscall.Kill(-pgid, syscall.SIGKILL)
		cmd.Wait()
		for deadline := time.Now().Add(10 * time.Second); syscall.Kill(-pgid, 0) == nil && time.Now().Before(deadline); {
			syscall.Kill(-pgid, syscall.SIGKILL)
			time.Sleep(20 * time.Millisecond)
		}
	})
	devtools := make(chan string, 1)
	go func() {
		re := regexp.MustCompile(`ws://127\.0\.0\.1:(\d+)/`)
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			if m := re.FindStringSubmatch(sc.Text()); m != nil {
				devtools <- m[1]
			}
		}
	}()
	var port string
	select {
	case port = <-devtools:
	case <-time.After(60 * time.Second):
		t.Fatal("chromium did not open its DevTools port")
	}
	ws := pageSocket(t, port)
	t.Cleanup(func() { ws.Close() })
	return cdp(t, ws)
}

// pageSocket connects to the DevTools socket of the first page target.
func pageSocket(t *testing.T, port string) *websocket.Conn {
	t.Helper()
	var targets []struct {
		Type, URL, WebSocketDebuggerURL string
	}
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		resp, err := http.Get("http://127.0.0.1:" + port + "/json/list")
		if err != nil {
			continue
		}
		json.NewDecoder(resp.Body).Decode(&targets)
		resp.Body.Close()
		for _, tg := range targets {
			if tg.Type == "page" && tg.WebSocketDebuggerURL != "" {
				ws, err := websocket.Dial(tg.WebSocketDebuggerURL, "", "http://127.0.0.1/")
				if err != nil {
					t.Fatal(err)
				}
				return ws
			}
		}
	}
	t.Fatal("no page target in chromium")
	return nil
}

// cdp returns a function that evaluates JavaScript in the page.
func cdp(t *testing.T, ws *websocket.Conn) func(string) any {
	id := 0
	return func(expr string) any {
		t.Helper()
		id++
		msg := map[string]any{"id": id, "method": "Runtime.evaluate", "params": map[string]any{"expression": expr, "returnByValue": true}}
		if err := websocket.JSON.Send(ws, msg); err != nil {
			t.Fatal(err)
		}
		for {
			var resp struct {
				ID     int `json:"id"`
				Result struct {
					Result struct {
						Value any `json:"value"`
					} `json:"result"`
				} `json:"result"`
			}
			ws.SetReadDeadline(time.Now().Add(30 * time.Second))
			if err := websocket.JSON.Receive(ws, &resp); err != nil {
				t.Fatal(err)
			}
			if resp.ID == id {
				return resp.Result.Result.Value
			}
		}
	}
}

func waitJS(t *testing.T, eval func(string) any, cond string) {
	t.Helper()
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		if v, _ := eval(cond).(bool); v {
			return
		}
	}
	t.Fatalf("timed out waiting for %s", cond)
}
