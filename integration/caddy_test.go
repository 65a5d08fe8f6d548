// Package integration runs real Caddy processes built from cmd/caddy on one
// zone and drives them through their admin APIs, signals and the CLI.
package integration

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	ipcbus "github.com/ipcbus/caddy-ipcbus"
)

// caddyBin is the cmd/caddy binary, built once for the package.
var caddyBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "ipcbus-integration-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	caddyBin = filepath.Join(dir, "caddy")
	build := exec.Command("go", "build", "-o", caddyBin, "github.com/ipcbus/caddy-ipcbus/cmd/caddy")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "building cmd/caddy:", err)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// freePort returns a TCP port on loopback that is free now.
func freePort(t *testing.T) int {
	t.Helper()
	for {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		port := l.Addr().(*net.TCPAddr).Port
		l.Close()
		// The kernel may give a port again once it is closed: a site port
		// chosen before its Caddy starts once came back as that Caddy's
		// admin port (the site then answered 404 from the admin API).
		givenPorts.Lock()
		dup := givenPorts.m[port]
		givenPorts.m[port] = true
		givenPorts.Unlock()
		if !dup {
			return port
		}
	}
}

// givenPorts are the ports freePort handed out in this test binary.
var givenPorts = struct {
	sync.Mutex
	m map[int]bool
}{m: map[int]bool{}}

// node is a set of Caddy processes on one zone, sharing one site port.
type node struct {
	t        *testing.T
	dir      string // zone directory and config files
	zone     string
	sitePort int
	extra    string // more global options
	settings string // more ipcbus settings
	routes   string // more routes of the site
	sites    string // more site blocks
	size     string // zone size, default 8MiB
}

func newNode(t *testing.T) *node {
	return &node{t: t, dir: t.TempDir(), zone: "itest", sitePort: freePort(t)}
}

// zoneDir is the zone's private directory, for a zone mode without group
// bits (ipcbus-<uid> in the node's dir).
func (n *node) zoneDir() string { return filepath.Join(n.dir, fmt.Sprintf("ipcbus-%d", os.Geteuid())) }

// zonePath is the zone file's path.
func (n *node) zonePath() string { return filepath.Join(n.zoneDir(), n.zone+".zone") }

// proc is one Caddy process.
type proc struct {
	n      *node
	cmd    *exec.Cmd
	admin  string
	config string
	port   int // this process's own site port (the shared one is n.sitePort)
	log    *bytes.Buffer
	logMu  sync.Mutex
	exited chan struct{}
}

// syncWriter serializes writes to a buffer shared by stdout and stderr.
type syncWriter struct {
	b  *bytes.Buffer
	mu *sync.Mutex
}

func (w syncWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.Write(p)
}

func (n *node) caddyfile(admin string, ownPort int) string {
	size := n.size
	if size == "" {
		size = "8MiB"
	}
	return fmt.Sprintf(`{
	admin %s
	persist_config off
	ipcbus {
		zone %s
		dir %s
		size %s
		heartbeat 200ms
		dead_after 2s
		%s
	}
	%s
}

http://127.0.0.1:%d, http://127.0.0.1:%d {
	handle /events {
		ipcbus_poll
	}
	handle /limited {
		ipcbus_poll {
			max_streams 2
		}
	}
	handle /publish {
		ipcbus_broadcast
	}
	%s
	handle /send {
		ipcbus_send
	}
	handle /alert {
		ipcbus_broadcast {
			alert
		}
	}
	respond "site"
}
%s
`, admin, n.zone, n.dir, size, n.settings, n.extra, n.sitePort, ownPort, n.routes, n.sites)
}

// start runs a Caddy process with its own admin address and waits until
// its ipcbus app answers.
func (n *node) start() *proc {
	n.t.Helper()
	return n.startWith(nil)
}

// startWith is start with a change to the command before it runs (another
// user, a umask...).
func (n *node) startWith(prepare func(*exec.Cmd)) *proc {
	t := n.t
	t.Helper()
	p := &proc{n: n, admin: fmt.Sprintf("127.0.0.1:%d", freePort(t)), port: freePort(t), log: new(bytes.Buffer), exited: make(chan struct{})}
	p.config = filepath.Join(n.dir, fmt.Sprintf("Caddyfile-%s", strings.ReplaceAll(p.admin, ":", "-")))
	if err := os.WriteFile(p.config, []byte(n.caddyfile(p.admin, p.port)), 0o600); err != nil {
		t.Fatal(err)
	}
	p.cmd = exec.Command(caddyBin, "run", "--config", p.config, "--adapter", "caddyfile")
	p.cmd.Env = append(os.Environ(), "HOME="+n.dir, "XDG_DATA_HOME="+n.dir, "XDG_CONFIG_HOME="+n.dir)
	p.cmd.Stdout, p.cmd.Stderr = syncWriter{p.log, &p.logMu}, syncWriter{p.log, &p.logMu}
	if prepare != nil {
		prepare(p.cmd)
	}
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.cmd.Wait(); close(p.exited) }()
	t.Cleanup(func() {
		p.cmd.Process.Kill()
		<-p.exited
		if t.Failed() {
			t.Logf("log of caddy %d:\n%s", p.cmd.Process.Pid, p.logText())
		}
	})
	p.waitFor("ipcbus to answer", func() bool {
		var rep ipcbus.StatsReport
		return p.get("/ipcbus/stats", &rep) == nil && rep.PID == p.pid()
	})
	return p
}

func (p *proc) pid() int { return p.cmd.Process.Pid }

func (p *proc) logText() string {
	p.logMu.Lock()
	defer p.logMu.Unlock()
	return p.log.String()
}

// get fetches an admin endpoint as JSON.
func (p *proc) get(path string, v any) error {
	resp, err := http.Get("http://" + p.admin + path)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %s: %s", path, resp.Status, b)
	}
	return json.Unmarshal(b, v)
}

func (p *proc) workers() ipcbus.WorkersReport {
	p.n.t.Helper()
	var rep ipcbus.WorkersReport
	if err := p.get("/ipcbus/workers", &rep); err != nil {
		p.n.t.Fatal(err)
	}
	return rep
}

// waitFor polls cond for up to 30 s: a guard against hangs, not a timing assertion.
func (p *proc) waitFor(what string, cond func() bool) {
	p.n.t.Helper()
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		select {
		case <-p.exited:
			p.n.t.Fatalf("caddy %d exited while waiting for %s:\n%s", p.pid(), what, p.logText())
		default:
		}
		if cond() {
			return
		}
	}
	p.n.t.Fatalf("timed out waiting for %s", what)
}

func (p *proc) signal(sig syscall.Signal) {
	if err := p.cmd.Process.Signal(sig); err != nil {
		p.n.t.Fatal(err)
	}
}

func (p *proc) waitExit() {
	select {
	case <-p.exited:
	case <-time.After(30 * time.Second):
		p.n.t.Fatalf("caddy %d did not exit", p.pid())
	}
}

// cli runs a caddy subcommand and returns its combined output.
func cli(t *testing.T, args ...string) (string, error) {
	t.Helper()
	out, err := exec.Command(caddyBin, args...).CombinedOutput()
	return string(out), err
}

func findWorker(rep ipcbus.WorkersReport, id string) (state, reason string, found bool) {
	for _, w := range rep.Workers {
		if w.ID == id {
			return w.State, w.Reason, true
		}
	}
	return "", "", false
}

func countState(rep ipcbus.WorkersReport, state string) int {
	n := 0
	for _, w := range rep.Workers {
		if w.State == state {
			n++
		}
	}
	return n
}
