package master

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync/atomic"
	"syscall"
	"time"
)

// proc is one worker process: `caddy run` of the binary on its own copy
// of the config, whose admin endpoint is a unix socket in the zone's
// private directory.
type proc struct {
	slot   int    // its place among the master's N workers
	serial int    // names its files; unique while the master runs
	gen    int    // the master's worker generation: 1, and one more per upgrade
	binary string // the executable it runs
	sock   string // admin socket path
	cfg    string // config file path
	cmd    *exec.Cmd
	start  time.Time
	exited chan struct{} // closed once it has exited and been waited for
	err    error         // why it exited (set before exited closes)
	// retired is set when the master stops it on purpose: its exit is
	// no crash, and nothing restarts it.
	retired atomic.Bool
	client  *http.Client
	// inherit is the listening sockets it inherited, by ListenKey.
	inherit map[string]*socket
}

// pid is the process id, 0 when it never started.
func (p *proc) pid() int {
	if p.cmd == nil || p.cmd.Process == nil {
		return 0
	}
	return p.cmd.Process.Pid
}

// alive reports whether it has not exited yet.
func (p *proc) alive() bool {
	select {
	case <-p.exited:
		return false
	default:
		return true
	}
}

// listen is its admin address in Caddy's form.
func (p *proc) listen() string { return "unix/" + p.sock + "|0600" }

// newProc prepares worker serial of slot in dir, running binary.
func newProc(dir, zoneName string, slot, serial, gen int, binary string) *proc {
	base := filepath.Join(dir, zoneName+".w"+strconv.Itoa(serial))
	p := &proc{slot: slot, serial: serial, gen: gen, binary: binary, sock: base + ".sock", cfg: base + ".json", exited: make(chan struct{})}
	p.client = &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", p.sock)
		},
		DisableKeepAlives: true,
	}}
	return p
}

// run writes the worker's config and starts it with env, the sockets
// files as its descriptors 3, 4, ... A failure to start is reported as
// an exit, so that every way out looks alike.
func (p *proc) run(cfg []byte, env []string, files []*os.File, stderr io.Writer) {
	p.start = time.Now()
	wc, err := workerConfig(cfg, p.listen(), p.inherit)
	if err == nil {
		err = os.WriteFile(p.cfg, wc, 0o600)
	}
	if err != nil {
		p.fail(fmt.Errorf("writing the config of worker %d: %w", p.serial, err))
		return
	}
	p.cmd = exec.Command(p.binary, "run", "--config", p.cfg)
	p.cmd.Env = env
	p.cmd.ExtraFiles = files
	p.cmd.Stdout, p.cmd.Stderr = stderr, stderr
	// Its own process group: a terminal's ^C reaches the master only,
	// which stops the workers its own way. Should the master die, the
	// workers get SIGTERM.
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
	if err := p.cmd.Start(); err != nil {
		p.cmd = nil
		p.fail(fmt.Errorf("starting worker %s: %w", p.binary, err))
		return
	}
	go func() {
		err := p.cmd.Wait()
		if err == nil {
			err = errors.New("exited with status 0")
		}
		p.err = err
		close(p.exited)
	}()
}

func (p *proc) fail(err error) {
	p.err = err
	close(p.exited)
}

// signal sends sig to the worker if it runs.
func (p *proc) signal(sig syscall.Signal) {
	if p.pid() != 0 && p.alive() {
		_ = p.cmd.Process.Signal(sig)
	}
}

// pause stops the worker accepting on the sockets it inherited while
// load runs (a config load through its admin endpoint), so that its old
// servers do not accept a connection they would close unanswered when
// they shut down (Go's http.Server drops a request it reads after its
// Shutdown began); the load's new servers, and the other workers, take
// the queue. Then the worker's newest listeners accept again.
func (p *proc) pause(load func() error) error {
	if len(p.inherit) == 0 {
		return load()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	paused := false
	if _, _, err := p.call(ctx, http.MethodPost, "/ipcbus/quiesce?for="+loadTimeout.String(), nil, nil); err == nil {
		paused = true
		time.Sleep(quiesceWait)
	}
	err := load()
	if paused && p.alive() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_, _, _ = p.call(ctx, http.MethodDelete, "/ipcbus/quiesce", nil, nil)
	}
	return err
}

// quiesceWait is how long a quieted worker gets to read the requests of
// the connections it accepted before it was asked to stop.
const quiesceWait = 50 * time.Millisecond

// stop asks the worker to stop: gracefully through its admin endpoint
// (Caddy's POST /stop: requests finish, within the config's grace
// period), else, or when not graceful, with SIGTERM.
func (p *proc) stop(graceful bool) {
	p.retired.Store(true)
	if !p.alive() {
		return
	}
	if graceful {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		// First it stops accepting: a connection it accepted once its
		// shutdown began would be closed unanswered (Go's http.Server),
		// and the others take the shared queue meanwhile. A request that
		// came on a connection it did accept is read before the stop.
		if len(p.inherit) > 0 {
			if _, _, err := p.call(ctx, http.MethodPost, "/ipcbus/quiesce", nil, nil); err == nil {
				time.Sleep(quiesceWait)
			}
		}
		if _, _, err := p.call(ctx, http.MethodPost, "/stop", nil, nil); err == nil {
			return
		}
	}
	p.signal(syscall.SIGTERM)
}

// removeFiles removes the worker's config and socket; call once it exited.
func (p *proc) removeFiles() {
	_ = os.Remove(p.cfg)
	_ = os.Remove(p.sock)
}

// adminError is a worker's admin endpoint refusing a request.
type adminError struct {
	status int
	body   []byte
}

func (e *adminError) Error() string {
	return fmt.Sprintf("HTTP %d: %s", e.status, bytes.TrimSpace(e.body))
}

// call makes an admin request to the worker; a status of 400 or more is
// an *adminError.
func (p *proc) call(ctx context.Context, method, path string, body []byte, hdr http.Header) (int, []byte, error) {
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://127.0.0.1"+path, rd)
	if err != nil {
		return 0, nil, err
	}
	for k, v := range hdr {
		req.Header[k] = v
	}
	if body != nil && req.Header.Get("Content-Type") == "" {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := p.client.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return resp.StatusCode, nil, err
	}
	if resp.StatusCode >= 400 {
		return resp.StatusCode, b, &adminError{status: resp.StatusCode, body: b}
	}
	return resp.StatusCode, b, nil
}

// loaded reports whether the worker has finished loading its config: its
// admin endpoint answers GET /config/ only once the load that started it
// is over (Caddy holds the config lock for the whole load), so an answer
// means every app of the config started, the site listeners included.
func (p *proc) loaded(ctx context.Context) bool {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	_, _, err := p.call(ctx, http.MethodGet, "/config/", nil, nil)
	return err == nil
}
