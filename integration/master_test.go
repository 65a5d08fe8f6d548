package integration

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	ipcbus "github.com/ipcbus/caddy-ipcbus"
	"github.com/ipcbus/caddy-ipcbus/master"
)

// group is a `caddy ipcbus run` master and its workers, on a zone and
// ports of its own.
type group struct {
	t        *testing.T
	dir      string
	zone     string
	admin    string
	sitePort int
	config   string
	cmd      *exec.Cmd
	log      *bytes.Buffer
	logMu    sync.Mutex
	exited   chan struct{}
	seen     map[int]bool // every worker pid seen
}

func (g *group) caddyfile(body string) string {
	return fmt.Sprintf(`{
	admin %s
	persist_config off
	ipcbus {
		zone %s
		dir %s
		size 4MiB
		heartbeat 200ms
		dead_after 2s
	}
}

http://127.0.0.1:%d {
	respond %q
}
`, g.admin, g.zone, g.dir, g.sitePort, body)
}

func (g *group) writeConfig(body string) {
	g.t.Helper()
	if err := os.WriteFile(g.config, []byte(g.caddyfile(body)), 0o600); err != nil {
		g.t.Fatal(err)
	}
}

// startGroup runs `caddy ipcbus run --workers n` and waits until the site
// answers body.
func startGroup(t *testing.T, n int, body string) *group {
	return startGroupIn(t, t.TempDir(), n, body)
}

// startGroupIn is startGroup with the zone in dir.
func startGroupIn(t *testing.T, dir string, n int, body string) *group {
	g := &group{t: t, dir: dir, zone: "mtest", admin: fmt.Sprintf("127.0.0.1:%d", freePort(t)), sitePort: freePort(t),
		config: filepath.Join(dir, "Caddyfile"), log: new(bytes.Buffer), exited: make(chan struct{}), seen: map[int]bool{}}
	g.writeConfig(body)
	g.cmd = exec.Command(caddyBin, "ipcbus", "run", "--workers", strconv.Itoa(n), "--config", g.config, "--upgrade-timeout", "30s")
	g.cmd.Env = append(os.Environ(), "HOME="+dir, "XDG_DATA_HOME="+dir, "XDG_CONFIG_HOME="+dir)
	g.cmd.Stdout, g.cmd.Stderr = syncWriter{g.log, &g.logMu}, syncWriter{g.log, &g.logMu}
	// The workers write to the master's output: a worker left running
	// after its master would hold Wait for ever without this.
	g.cmd.WaitDelay = 5 * time.Second
	if err := g.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { g.cmd.Wait(); close(g.exited) }()
	t.Cleanup(func() {
		g.cmd.Process.Kill()
		<-g.exited
		for pid := range g.seen {
			syscall.Kill(pid, syscall.SIGKILL)
		}
		if t.Failed() {
			g.logMu.Lock()
			t.Logf("log of the master %d and its workers:\n%s", g.cmd.Process.Pid, g.log.String())
			g.logMu.Unlock()
		}
	})
	g.waitFor("the group to serve", func() bool {
		in, err := g.info()
		return err == nil && len(in.Workers) == n && g.body() == body
	})
	return g
}

// info is GET /ipcbus/master.
func (g *group) info() (master.Info, error) {
	var in master.Info
	resp, err := http.Get("http://" + g.admin + "/ipcbus/master")
	if err != nil {
		return in, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return in, errors.New(resp.Status)
	}
	err = json.NewDecoder(resp.Body).Decode(&in)
	for _, w := range in.Workers {
		g.seen[w.PID] = true
	}
	return in, err
}

// mustInfo is info, failing the test on an error.
func (g *group) mustInfo() master.Info {
	g.t.Helper()
	in, err := g.info()
	if err != nil {
		g.t.Fatal(err)
	}
	return in
}

// current is the pids of the workers that serve and are not stopping, by slot.
func (g *group) current() []int {
	g.t.Helper()
	var out []int
	for _, w := range g.mustInfo().Workers {
		if !w.Stopping && !w.Starting {
			out = append(out, w.PID)
		}
	}
	return out
}

// workerBodies asks each worker's own admin socket what its site answers
// (the static response of its config).
func (g *group) workerBodies() []string {
	g.t.Helper()
	var out []string
	for i, raw := range g.workerGet(bodyPath) {
		var body string
		if err := json.Unmarshal([]byte(raw), &body); err != nil {
			g.t.Fatalf("worker %d: %v", i, err)
		}
		out = append(out, body)
	}
	return out
}

// workerGet is what each worker's own admin endpoint answers to GET path
// (JSON, trimmed).
func (g *group) workerGet(path string) []string {
	g.t.Helper()
	var out []string
	for _, w := range g.mustInfo().Workers {
		client := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", w.Admin)
		}}}
		resp, err := client.Get("http://127.0.0.1" + path)
		if err != nil {
			g.t.Fatal(err)
		}
		b, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil || resp.StatusCode != http.StatusOK {
			g.t.Fatalf("worker %d: GET %s: %v %s", w.PID, path, err, b)
		}
		out = append(out, strings.TrimSpace(string(b)))
	}
	return out
}

// bodyPath is where the adapted config holds the site's response.
const bodyPath = "/config/apps/http/servers/srv0/routes/0/handle/0/routes/0/handle/0/body"

// body is the site's answer, "" on an error.
func (g *group) body() string {
	resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/", g.sitePort))
	if err != nil {
		return ""
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

// waitFor polls cond for up to 60 s: a guard against hangs, not a timing assertion.
func (g *group) waitFor(what string, cond func() bool) {
	g.t.Helper()
	for deadline := time.Now().Add(60 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		select {
		case <-g.exited:
			g.t.Fatalf("the master exited while waiting for %s", what)
		default:
		}
		if cond() {
			return
		}
	}
	g.t.Fatalf("timed out waiting for %s", what)
}

// clients is a loop of requests to the site, counting the failed ones.
type clients struct {
	ok, failed atomic.Int64
	mu         sync.Mutex
	errs       []string
	stop       chan struct{}
	wg         sync.WaitGroup
}

// startClients runs k clients, one request at a time each: half of them
// on keep-alive connections (as browsers and proxies do), the other half
// on a new connection per request, which a worker's reload or stop would
// reset were the connection queued on a socket of that worker's own (the
// group's workers share the master's sockets).
func startClients(url string, k int) *clients {
	c := &clients{stop: make(chan struct{})}
	keepAlive := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: k}}
	perRequest := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	for i := range k {
		client := keepAlive
		if i%2 == 1 {
			client = perRequest
		}
		c.wg.Add(1)
		go func() {
			defer c.wg.Done()
			for {
				select {
				case <-c.stop:
					return
				case <-time.After(2 * time.Millisecond):
				}
				resp, err := client.Get(url)
				if err == nil {
					_, err = io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					if err == nil && resp.StatusCode != http.StatusOK {
						err = errors.New(resp.Status)
					}
				}
				if err != nil {
					c.failed.Add(1)
					c.mu.Lock()
					c.errs = append(c.errs, fmt.Sprintf("at %.6f: %v", float64(time.Now().UnixMicro())/1e6, err))
					c.mu.Unlock()
					continue
				}
				c.ok.Add(1)
			}
		}()
	}
	return c
}

// phase returns the failures since the last phase, with their errors, and
// how many requests succeeded meanwhile.
func (c *clients) phase() (failed, ok int64, errs []string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	errs, c.errs = c.errs, nil
	return c.failed.Swap(0), c.ok.Swap(0), errs
}

func (c *clients) close() {
	close(c.stop)
	c.wg.Wait()
}

func getJSON(url string, v any) error {
	resp, err := http.Get(url)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return errors.New(resp.Status)
	}
	return json.NewDecoder(resp.Body).Decode(v)
}

// processGone reports whether pid no longer runs (a zombie counts as gone).
func processGone(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return true
	}
	f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+1:]))
	return len(f) > 0 && f[0] == "Z"
}

// processStopped reports whether every thread of pid is stopped (a
// SIGSTOP took effect).
func processStopped(pid int) bool {
	tasks, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	if err != nil || len(tasks) == 0 {
		return false
	}
	for _, task := range tasks {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/stat", pid, task.Name()))
		if err != nil {
			return false
		}
		f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+1:]))
		if len(f) == 0 || f[0] != "T" {
			return false
		}
	}
	return true
}

// TestMasterGroup runs `caddy ipcbus run --workers 2` under a loop of
// client requests: a rolling reload (caddy reload, then SIGHUP), an
// upgrade to a second binary and a failed upgrade that rolls back, each
// without one failed request; a worker killed with SIGKILL is replaced,
// failing at most the requests in flight; caddy ipcbus workers shows the
// master; and caddy stop leaves no process, socket or zone file.
func TestMasterGroup(t *testing.T) {
	bin2 := filepath.Join(t.TempDir(), "caddy2")
	build := exec.Command("go", "build", "-ldflags", "-X github.com/caddyserver/caddy/v2.CustomVersion=v0.0.0-itest2", "-o", bin2, "github.com/ipcbus/caddy-ipcbus/cmd/caddy")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("building the second binary: %v\n%s", err, out)
	}
	bad := filepath.Join(t.TempDir(), "caddy-bad")
	if err := os.WriteFile(bad, []byte("#!/bin/sh\nexit 3\n"), 0o700); err != nil {
		t.Fatal(err)
	}
	g := startGroup(t, 2, "v1")
	first := g.current()
	const k = 4
	c := startClients(fmt.Sprintf("http://127.0.0.1:%d/", g.sitePort), k)
	defer c.close()
	time.Sleep(200 * time.Millisecond)

	expectNoFailures := func(what string) {
		t.Helper()
		time.Sleep(200 * time.Millisecond) // requests after the change, too
		failed, ok, errs := c.phase()
		t.Logf("%s: %d requests, %d failed", what, ok+failed, failed)
		if failed != 0 || ok == 0 {
			t.Fatalf("%s: %d failed requests (%d ok): %v", what, failed, ok, errs)
		}
	}
	c.phase()

	// (a) A config the first worker refuses: the client gets its error,
	// and every worker keeps the old one.
	if err := os.WriteFile(g.config, []byte(strings.Replace(g.caddyfile("bad"), "size 4MiB", "size 8MiB", 1)), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, err := cli(t, "reload", "--config", g.config); err == nil || !strings.Contains(out, "a reload cannot change the size") {
		t.Fatalf("caddy reload of a refused config: %v\n%s", err, out)
	}
	if got := g.workerBodies(); fmt.Sprint(got) != "[v1 v1]" {
		t.Fatalf("after a refused reload the workers answer %v", got)
	}
	expectNoFailures("refused reload")

	// A rolling reload through the master's admin address.
	g.writeConfig("v2")
	if out, err := cli(t, "reload", "--config", g.config); err != nil {
		t.Fatalf("caddy reload: %v\n%s", err, out)
	}
	if got := g.body(); got != "v2" {
		t.Fatalf("after the reload the site says %q", got)
	}
	if now := g.current(); fmt.Sprint(now) != fmt.Sprint(first) {
		t.Fatalf("a reload changed the workers: %v, then %v", first, now)
	}
	expectNoFailures("rolling reload")

	// A change through /config/: every worker takes it; the master's copy
	// keeps the group's admin address.
	req, _ := http.NewRequest(http.MethodPatch, "http://"+g.admin+bodyPath, strings.NewReader(`"v2b"`))
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("PATCH %s: %s", bodyPath, resp.Status)
	}
	if got := g.workerBodies(); fmt.Sprint(got) != "[v2b v2b]" {
		t.Fatalf("after a PATCH the workers answer %v", got)
	}
	var listen string
	if err := getJSON("http://"+g.admin+"/config/admin/listen", &listen); err != nil || listen != g.admin {
		t.Fatalf("the master's config has admin %q (%v), want %s", listen, err, g.admin)
	}
	expectNoFailures("change through /config/")
	rolledFirst := func() int {
		g.logMu.Lock()
		defer g.logMu.Unlock()
		return strings.Count(g.log.String(), "the first worker takes it on the master's socket too")
	}
	if n := rolledFirst(); n != 0 {
		t.Fatalf("a change of a response loaded the first worker again (%d times)", n)
	}
	// A change that names the site's address as the user writes it: every
	// worker, the first one too, serves it from the master's socket.
	req, _ = http.NewRequest(http.MethodPatch, "http://"+g.admin+"/config/apps/http/servers/srv0/listen", strings.NewReader(`[":`+strconv.Itoa(g.sitePort)+`"]`))
	req.Header.Set("Content-Type", "application/json")
	if resp, err = http.DefaultClient.Do(req); err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("PATCH the listen addresses: %s", resp.Status)
	}
	for i, got := range g.workerGet("/config/apps/http/servers/srv0/listen") {
		if want := `["ipcbus-tcp/:` + strconv.Itoa(g.sitePort) + `"]`; got != want {
			t.Fatalf("after a PATCH of the listen addresses worker %d listens on %s, want %s", i, got, want)
		}
	}
	var listens []string
	if err := getJSON("http://"+g.admin+"/config/apps/http/servers/srv0/listen", &listens); err != nil || fmt.Sprint(listens) != "[:"+strconv.Itoa(g.sitePort)+"]" {
		t.Fatalf("the master's config listens on %q (%v), want the address as written", listens, err)
	}
	if n := rolledFirst(); n != 0 {
		t.Fatalf("a change of the listen addresses loaded the first worker again (%d times): it should get the inherited address at once", n)
	}
	expectNoFailures("change of the listen addresses")
	// The same through an /id/ path: the master finds the @id in its copy.
	change := func(method, path, body string) {
		t.Helper()
		req, _ := http.NewRequest(method, "http://"+g.admin+path, strings.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("%s %s: %s %s", method, path, resp.Status, b)
		}
	}
	onInherited := func(what string) {
		t.Helper()
		for i, got := range g.workerGet("/config/apps/http/servers/srv0/listen") {
			if want := `["ipcbus-tcp/:` + strconv.Itoa(g.sitePort) + `"]`; got != want {
				t.Fatalf("after %s worker %d listens on %s, want %s", what, i, got, want)
			}
		}
	}
	change(http.MethodPut, "/config/apps/http/servers/srv0/@id", `"site"`)
	change(http.MethodPatch, "/id/site/listen", `[":`+strconv.Itoa(g.sitePort)+`"]`)
	if n := rolledFirst(); n != 0 {
		t.Fatalf("a change of the listen addresses through /id/ loaded the first worker again (%d times)", n)
	}
	onInherited("a change through /id/")
	expectNoFailures("change through /id/")
	// An escaped path, as Caddy decodes it.
	change(http.MethodPatch, "/config/apps/http/servers/srv0/list%65n", `[":`+strconv.Itoa(g.sitePort)+`"]`)
	if n := rolledFirst(); n != 0 {
		t.Fatalf("a change through an escaped path loaded the first worker again (%d times)", n)
	}
	onInherited("a change through an escaped path")
	expectNoFailures("change through an escaped path")
	// A worker's quiesce is not for the group's admin address.
	if resp, err := http.Post("http://"+g.admin+"/ipcbus/quiesce", "", nil); err != nil || resp.StatusCode != http.StatusForbidden {
		t.Fatalf("POST /ipcbus/quiesce through the master: %v %v", err, resp)
	} else {
		resp.Body.Close()
	}
	g.writeConfig("v3")
	g.cmd.Process.Signal(syscall.SIGHUP)
	g.waitFor("the SIGHUP reload", func() bool { return g.body() == "v3" })
	expectNoFailures("SIGHUP reload")

	// (b) An upgrade to another binary.
	out, err := cli(t, "ipcbus", "upgrade", "--address", g.admin, "--binary", bin2)
	if err != nil {
		t.Fatalf("caddy ipcbus upgrade: %v\n%s", err, out)
	}
	second := g.current()
	for _, pid := range second {
		exe, _ := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid))
		if exe != bin2 {
			t.Fatalf("new worker %d runs %q, want %s", pid, exe, bin2)
		}
	}
	g.waitFor("the old workers to exit", func() bool { return processGone(first[0]) && processGone(first[1]) })
	if got := g.body(); got != "v3" {
		t.Fatalf("after the upgrade the site says %q", got)
	}
	expectNoFailures("upgrade")

	// (c) An upgrade to a binary that exits at once: rolled back.
	out, err = cli(t, "ipcbus", "upgrade", "--address", g.admin, "--binary", bad)
	if err == nil || !strings.Contains(out, "exited before it was serving") || !strings.Contains(out, "the previous workers go on") {
		t.Fatalf("failed upgrade: %v\n%s", err, out)
	}
	if now := g.current(); fmt.Sprint(now) != fmt.Sprint(second) {
		t.Fatalf("a failed upgrade changed the workers: %v, then %v", second, now)
	}
	expectNoFailures("failed upgrade")

	// (d) A worker killed: replaced; at most the requests in flight fail.
	victim := second[0]
	killed := time.Now()
	syscall.Kill(victim, syscall.SIGKILL)
	var replacement int
	g.waitFor("the killed worker's replacement", func() bool {
		now := g.current()
		if len(now) != 2 || now[0] == victim || g.body() != "v3" {
			return false
		}
		replacement = now[0]
		return true
	})
	elapsed := time.Since(killed)
	t.Logf("worker %d killed, replaced by %d after %v", victim, replacement, elapsed.Round(time.Millisecond))
	if elapsed > 15*time.Second {
		t.Errorf("replacing a killed worker took %v (the backoff is 1 s)", elapsed)
	}
	time.Sleep(200 * time.Millisecond)
	failed, ok, errs := c.phase()
	t.Logf("kill -9: %d requests, %d failed: %v", ok+failed, failed, errs)
	if failed > k {
		t.Fatalf("%d requests failed for a killed worker, more than the %d clients had in flight: %v", failed, k, errs)
	}
	g.logMu.Lock()
	crashLogged := strings.Contains(g.log.String(), `"level":"error","ts":`) && strings.Contains(g.log.String(), `"msg":"worker crashed","pid":`+strconv.Itoa(victim))
	g.logMu.Unlock()
	if !crashLogged {
		t.Errorf("no error log of the crash of %d", victim)
	}

	// caddy ipcbus workers shows the master and its workers.
	out, err = cli(t, "ipcbus", "workers", "--zone", g.zone, "--dir", g.dir)
	if err != nil || !strings.Contains(out, fmt.Sprintf("master pid %d", g.cmd.Process.Pid)) ||
		!strings.Contains(out, fmt.Sprintf("pid %d, generation 2", replacement)) || !strings.Contains(out, "restarts 1") {
		t.Fatalf("caddy ipcbus workers: %v\n%s", err, out)
	}
	// The node's answers come through the master: the crash was counted
	// in the zone, and the report names the master.
	var rep ipcbus.WorkersReport
	if err := getJSON("http://"+g.admin+"/ipcbus/workers", &rep); err != nil || rep.Node.Crashes != 1 || rep.Master == nil || rep.Master.PID != g.cmd.Process.Pid {
		t.Fatalf("GET /ipcbus/workers through the master: %v, crashes %d, master %+v", err, rep.Node.Crashes, rep.Master)
	}
	resp, err = http.Get("http://" + g.admin + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	metrics, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(metrics), "caddy_ipcbus_") {
		t.Fatalf("GET /metrics through the master: %s", resp.Status)
	}
	// Each worker has its share of the 2+ CPUs, unless the user set it.
	environ, _ := os.ReadFile(fmt.Sprintf("/proc/%d/environ", replacement))
	if want := fmt.Sprintf("GOMAXPROCS=%d", max(1, runtime.GOMAXPROCS(0)/2)); !bytes.Contains(environ, []byte(want+"\x00")) && os.Getenv("GOMAXPROCS") == "" {
		t.Errorf("worker %d's environment has no %s", replacement, want)
	}
	c.close()
	c.stop = make(chan struct{}) // the deferred close
	g.info()

	// caddy stop: every process gone, nothing left in the zone's directory.
	if out, err := cli(t, "stop", "--address", g.admin); err != nil {
		t.Fatalf("caddy stop: %v\n%s", err, out)
	}
	g.stopped()
}

// stopped waits for the master to exit and checks that it left nothing:
// no worker process, no socket, config or zone file.
func (g *group) stopped() {
	g.t.Helper()
	select {
	case <-g.exited:
	case <-time.After(60 * time.Second):
		g.t.Fatal("the master did not exit")
	}
	if code := g.cmd.ProcessState.ExitCode(); code != 0 {
		g.t.Errorf("the master exited with %d", code)
	}
	for pid := range g.seen {
		if !processGone(pid) {
			g.t.Errorf("worker %d still runs", pid)
		}
	}
	ents, err := os.ReadDir(filepath.Join(g.dir, fmt.Sprintf("ipcbus-%d", os.Geteuid())))
	if !os.IsNotExist(err) {
		g.t.Errorf("the zone's directory is left with %v (%v)", ents, err)
	}
}

// TestMasterStopSignals: SIGTERM and SIGINT (fast) and SIGQUIT (graceful)
// stop the group and leave nothing behind.
func TestMasterStopSignals(t *testing.T) {
	for _, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGINT, syscall.SIGQUIT} {
		t.Run(sig.String(), func(t *testing.T) {
			g := startGroup(t, 1, "up")
			g.info()
			g.cmd.Process.Signal(sig)
			g.stopped()
		})
	}
}

// TestMasterKilled: the workers of a master killed with SIGKILL stop too
// (they get SIGTERM when their parent dies), and the next master on the
// zone starts, cleans up what the first one left, and leaves nothing.
func TestMasterKilled(t *testing.T) {
	g := startGroup(t, 2, "one")
	workers := g.current()
	g.cmd.Process.Kill()
	<-g.exited
	for _, pid := range workers {
		for deadline := time.Now().Add(30 * time.Second); !processGone(pid); time.Sleep(20 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("worker %d of the killed master still runs", pid)
			}
		}
	}
	h := startGroupIn(t, g.dir, 1, "two")
	h.cmd.Process.Signal(syscall.SIGTERM)
	h.stopped()
}

// TestMasterSharedSockets: the workers serve from the master's listening
// socket, so connections waiting in its queue survive a worker killed
// with SIGKILL: with both workers stopped, 24 requests are sent on new
// connections; one worker is killed, the other continued, and every
// request is answered. (With a socket per worker, those the kernel put in
// the killed worker's queue are reset.)
func TestMasterSharedSockets(t *testing.T) {
	g := startGroup(t, 2, "queued")
	workers := g.current()
	for _, pid := range workers {
		syscall.Kill(pid, syscall.SIGSTOP)
	}
	// kill returns before the process stops: a worker still running
	// would accept some of the connections, and lose them to the SIGKILL.
	for _, pid := range workers {
		g.waitFor(fmt.Sprintf("worker %d to stop", pid), func() bool { return processStopped(pid) })
	}
	const n = 24
	conns := make([]net.Conn, n)
	for i := range conns {
		c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", g.sitePort), 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if _, err := fmt.Fprintf(c, "GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"); err != nil {
			t.Fatal(err)
		}
		conns[i] = c
	}
	syscall.Kill(workers[0], syscall.SIGKILL)
	for deadline := time.Now().Add(30 * time.Second); !processGone(workers[0]); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("worker %d still runs after SIGKILL", workers[0])
		}
	}
	syscall.Kill(workers[1], syscall.SIGCONT)
	for i, c := range conns {
		c.SetReadDeadline(time.Now().Add(30 * time.Second))
		b, err := io.ReadAll(c)
		if err != nil || !bytes.HasPrefix(b, []byte("HTTP/1.1 200")) || !bytes.HasSuffix(b, []byte("queued")) {
			t.Errorf("request %d of %d, queued while worker %d was killed: %v, %q", i+1, n, workers[0], err, b)
		}
	}
	g.waitFor("the killed worker's replacement", func() bool {
		now := g.current()
		return len(now) == 2 && now[0] != workers[0]
	})
}

// TestMasterTLS: an HTTPS site (tls internal) under the master is served
// from the inherited socket over HTTP/2, and HTTP/3 is still offered (its
// UDP socket is each worker's own).
func TestMasterTLS(t *testing.T) {
	dir := t.TempDir()
	admin, port := fmt.Sprintf("127.0.0.1:%d", freePort(t)), freePort(t)
	config := filepath.Join(dir, "Caddyfile")
	caddyfile := fmt.Sprintf(`{
	admin %s
	persist_config off
	skip_install_trust
	ipcbus {
		zone mtls
		dir %s
		size 4MiB
	}
}

https://127.0.0.1:%d {
	tls internal
	respond "{http.request.proto}"
}
`, admin, dir, port)
	if err := os.WriteFile(config, []byte(caddyfile), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(caddyBin, "ipcbus", "run", "--workers", "2", "--config", config)
	cmd.Env = append(os.Environ(), "HOME="+dir, "XDG_DATA_HOME="+dir, "XDG_CONFIG_HOME="+dir)
	var log bytes.Buffer
	var logMu sync.Mutex
	cmd.Stdout, cmd.Stderr = syncWriter{&log, &logMu}, syncWriter{&log, &logMu}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	defer func() {
		cmd.Process.Signal(syscall.SIGTERM)
		<-exited
		if t.Failed() {
			logMu.Lock()
			t.Logf("log of the master and its workers:\n%s", log.String())
			logMu.Unlock()
		}
	}()
	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{InsecureSkipVerify: true}, ForceAttemptHTTP2: true}}
	var body, altSvc string
	for deadline := time.Now().Add(60 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		resp, err := client.Get(fmt.Sprintf("https://127.0.0.1:%d/", port))
		if err != nil {
			continue
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		body, altSvc = string(b), resp.Header.Get("Alt-Svc")
		break
	}
	if body != "HTTP/2.0" || !strings.Contains(altSvc, "h3=") {
		t.Fatalf("the HTTPS site answered %q (Alt-Svc %q), want HTTP/2.0 with h3 offered", body, altSvc)
	}
	logMu.Lock()
	shared := strings.Contains(log.String(), `"listening for the workers","addresses":["tcp/:`+strconv.Itoa(port)+`"]`)
	logMu.Unlock()
	if !shared {
		t.Errorf("the master did not bind the site's address for its workers")
	}
}
