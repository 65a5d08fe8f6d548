// Package master runs a group of Caddy worker processes like nginx's
// master process runs its workers: N processes of one binary on one
// config and one ipcbus zone, each with an admin endpoint of its own (a
// unix socket in the zone's private directory) while the master serves
// the config's admin address for the whole group. It restarts a crashed
// worker with a backoff, applies a new config to the workers one at a
// time, upgrades the binary with no downtime (a new generation of
// workers, then the old one stopped), and stops the group on a signal or
// POST /stop.
//
// It knows nothing of Caddy's Go API: it drives `caddy run` processes
// through their admin endpoints and reads the zone's worker table. The
// caller adapts configs (Options.Adapt, Options.Reload) and registers
// the command.
package master

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"go.uber.org/zap"

	"github.com/ipcbus/caddy-ipcbus/zone"
)

// Defaults of the Options.
const (
	DefaultStopTimeout    = 5 * time.Second
	DefaultUpgradeTimeout = time.Minute
)

// Options configure a master.
type Options struct {
	// Workers is the number of worker processes, at least 1.
	Workers int
	// Binary is the executable the workers run; default: this process's.
	Binary string
	// Config is the JSON config (adapted) the workers run.
	Config []byte
	// Reload reads the config source again (its file, adapted), for
	// SIGHUP; nil makes SIGHUP reload the config the master holds.
	Reload func() ([]byte, error)
	// Adapt turns the body of a POST /load of a content type other than
	// JSON into JSON, as Caddy's admin endpoint does; nil refuses them.
	Adapt func(body []byte, contentType string) ([]byte, error)
	// AdminNetwork and AdminAddress are where the master serves the
	// group's admin endpoint ("tcp", "localhost:2019"; "unix", a path);
	// empty when the config turns it off.
	AdminNetwork, AdminAddress string
	// AdminSocketMode is the file mode of a unix admin socket; default 0600.
	AdminSocketMode os.FileMode
	// AdminHosts are the Host header values (and Origin hosts) the admin
	// endpoint accepts, against DNS rebinding; empty accepts any.
	AdminHosts []string
	// StopTimeout is how long a fast stop (SIGTERM, SIGINT) waits for a
	// worker before it kills it. Default: DefaultStopTimeout.
	StopTimeout time.Duration
	// UpgradeTimeout bounds how long an upgrade (and the first start)
	// waits for new workers to be live and serving. Default:
	// DefaultUpgradeTimeout.
	UpgradeTimeout time.Duration
	// KeepZone keeps the zone file when the master stops; by default the
	// master removes it (and its own files) once its workers are gone.
	KeepZone bool
	// Env is the workers' environment; default: this process's.
	Env []string
	// Output gets the workers' standard output and error; default: stderr.
	Output io.Writer
	// Logger gets the master's logs; nil discards them.
	Logger *zap.Logger
}

// Master is a running group of workers.
type Master struct {
	opts Options
	log  *zap.Logger
	zone zone.Options
	dir  string // the zone's private directory
	info *infoFile

	// ops serializes what changes the group: loads, upgrades, restarts.
	ops chan struct{}

	mu     sync.Mutex
	config []byte  // the group's config (admin as the user wrote it)
	cur    []*proc // the current generation, by slot
	all    map[*proc]struct{}
	serial int
	gen    int
	binary string // what restarted workers run
	// restarts counts each slot's restarts after a crash.
	restarts []int
	// sockets are the site addresses the master listens on for its
	// workers (see sockets.go).
	sockets []*socket

	quit     chan struct{} // closed when the group stops
	quitOnce sync.Once
	stopReq  chan bool // a stop asked for: graceful or not
	proxyH   http.Handler
	wg       sync.WaitGroup
	started  time.Time
}

// minimum of the restart backoff, its cap, and how long a worker must
// have run for its next crash to start again from the minimum.
const (
	minBackoff   = time.Second
	maxBackoff   = 30 * time.Second
	backoffReset = 30 * time.Second
)

// nextBackoff is the wait before restarting a worker that crashed after
// running for up, prev being the wait before its last restart (0: none).
func nextBackoff(prev, up time.Duration) time.Duration {
	if prev == 0 || up >= backoffReset {
		return minBackoff
	}
	return min(prev*2, maxBackoff)
}

// Run starts the group, serves its admin endpoint, and returns once the
// group has stopped: on SIGTERM or SIGINT (fast: workers killed after
// StopTimeout), SIGQUIT or POST /stop (graceful), or ctx's end (fast).
// SIGHUP reloads the config (Options.Reload), SIGUSR2 upgrades to the
// binary now at the path. It returns an error when the group cannot start.
func Run(ctx context.Context, opts Options) error {
	m, err := newMaster(opts)
	if err != nil {
		return err
	}
	return m.run(ctx)
}

func newMaster(opts Options) (*Master, error) {
	if opts.Workers < 1 {
		return nil, fmt.Errorf("invalid number of workers %d: give at least 1", opts.Workers)
	}
	if opts.Binary == "" {
		exe, err := os.Executable()
		if err != nil {
			return nil, fmt.Errorf("finding this executable: %w", err)
		}
		opts.Binary = exe
	}
	if opts.StopTimeout <= 0 {
		opts.StopTimeout = DefaultStopTimeout
	}
	if opts.UpgradeTimeout <= 0 {
		opts.UpgradeTimeout = DefaultUpgradeTimeout
	}
	if opts.Env == nil {
		opts.Env = os.Environ()
	}
	if opts.Output == nil {
		opts.Output = os.Stderr
	}
	if opts.Logger == nil {
		opts.Logger = zap.NewNop()
	}
	if opts.AdminSocketMode == 0 {
		opts.AdminSocketMode = 0o600
	}
	zo, err := ZoneOf(opts.Config)
	if err != nil {
		return nil, err
	}
	dir, err := zone.PrivateDir(zo)
	if err != nil {
		return nil, err
	}
	return &Master{
		opts: opts, log: opts.Logger, zone: zo, dir: dir,
		ops: make(chan struct{}, 1), config: opts.Config, binary: opts.Binary,
		all: map[*proc]struct{}{}, restarts: make([]int, opts.Workers),
		quit: make(chan struct{}), stopReq: make(chan bool, 4),
	}, nil
}

// workerEnv is the workers' environment: GOMAXPROCS set to their share of
// the CPUs unless the user set it.
func (m *Master) workerEnv() []string {
	env := make([]string, 0, len(m.opts.Env)+2)
	maxprocs := false
	for _, kv := range m.opts.Env {
		if strings.HasPrefix(kv, ListenFDsEnv+"=") {
			continue // only the master says what a worker inherits
		}
		maxprocs = maxprocs || strings.HasPrefix(kv, "GOMAXPROCS=")
		env = append(env, kv)
	}
	if maxprocs {
		return env
	}
	share := max(1, runtime.GOMAXPROCS(0)/m.opts.Workers)
	return append(env, "GOMAXPROCS="+strconv.Itoa(share))
}

// spawn starts a worker for slot of generation gen running binary, on the
// group's config. Call with m.mu held.
func (m *Master) spawnLocked(slot, gen int, binary string) *proc {
	m.serial++
	p := newProc(m.dir, m.zone.Name, slot, m.serial, gen, binary)
	if m.stopping() {
		p.fail(errStopping)
		return p
	}
	in, files, fdEnv := m.inheritLocked()
	p.inherit = in
	env := m.workerEnv()
	if fdEnv != "" {
		env = append(env, fdEnv)
	}
	p.run(m.config, env, files, m.opts.Output)
	m.all[p] = struct{}{}
	m.wg.Add(1)
	go func() {
		defer m.wg.Done()
		<-p.exited
		p.removeFiles()
		m.mu.Lock()
		delete(m.all, p)
		m.mu.Unlock()
		m.writeInfo()
	}()
	return p
}

func (m *Master) run(ctx context.Context) error {
	info, err := lockInfo(m.dir, m.zone.Name)
	if err != nil {
		return err
	}
	m.info = info
	defer m.info.remove()
	// Caught from the start: a signal during the start waits in the
	// channel until the workers serve (or failed to).
	sigs := make(chan os.Signal, 8)
	signal.Notify(sigs, syscall.SIGHUP, syscall.SIGUSR2, syscall.SIGTERM, syscall.SIGINT, syscall.SIGQUIT)
	defer signal.Stop(sigs)
	m.removeStale()
	m.started = time.Now()
	var ln net.Listener
	if m.opts.AdminAddress != "" {
		if ln, err = m.listenAdmin(); err != nil {
			return err
		}
		defer ln.Close()
		if m.opts.AdminNetwork == "unix" {
			defer os.Remove(m.opts.AdminAddress)
		}
	}

	m.openSockets()
	defer m.closeSockets()

	// The first worker starts alone: what a config sets up on disk at
	// its first start (the internal CA of "tls internal", certificates)
	// is not safe for several processes to create at once. Then the
	// others start together.
	m.mu.Lock()
	m.gen = 1
	first := make([]*proc, m.opts.Workers)
	first[0] = m.spawnLocked(0, 1, m.binary)
	m.mu.Unlock()
	err = m.waitServing(first[:1], m.opts.UpgradeTimeout)
	if err == nil && len(first) > 1 {
		m.mu.Lock()
		for i := 1; i < len(first); i++ {
			first[i] = m.spawnLocked(i, 1, m.binary)
		}
		m.mu.Unlock()
		err = m.waitServing(first[1:], m.opts.UpgradeTimeout)
	}
	m.mu.Lock()
	m.cur = first
	m.mu.Unlock()
	if err != nil {
		m.stopAll(false)
		m.finish()
		return fmt.Errorf("starting the workers: %w", err)
	}
	m.writeInfo()
	for _, p := range first {
		m.supervise(p)
	}

	srv := m.serveAdmin(ln)
	m.log.Info("master started", zap.Int("pid", os.Getpid()), zap.Int("workers", m.opts.Workers), zap.Ints("pids", pids(first)),
		zap.String("admin", m.opts.AdminAddress), zap.String("zone", zone.PathFor(m.zone)))

	graceful, stopping := false, false
	escalate := func(g bool) {
		if !stopping {
			stopping, graceful = true, g
			m.log.Info("master stopping", zap.Bool("graceful", g))
			go m.stopAll(g)
			return
		}
		if graceful && !g {
			graceful = false
			go m.stopAll(false)
		}
	}
	done := make(chan struct{})
	go func() { m.waitAll(); close(done) }()
	for {
		select {
		case <-done:
			if srv != nil {
				srv.close()
			}
			m.finish()
			m.log.Info("master stopped", zap.Int("pid", os.Getpid()))
			return nil
		case <-ctx.Done():
			escalate(false)
		case g := <-m.stopReq:
			escalate(g)
		case sig := <-sigs:
			switch sig {
			case syscall.SIGHUP:
				go m.reloadFromSource()
			case syscall.SIGUSR2:
				go func() { _, _ = m.upgrade("", m.opts.UpgradeTimeout) }()
			case syscall.SIGQUIT:
				escalate(true)
			default:
				escalate(false)
			}
		}
	}
}

// waitAll returns once the group is stopping and every worker has exited.
func (m *Master) waitAll() {
	<-m.quit
	m.wg.Wait()
}

// requestStop asks Run to stop the group.
func (m *Master) requestStop(graceful bool) {
	select {
	case m.stopReq <- graceful:
	default:
	}
}

// stopAll stops every worker and waits for them: gracefully (POST /stop,
// no deadline: the config's grace period bounds it), or fast (SIGTERM,
// then SIGKILL after StopTimeout).
func (m *Master) stopAll(graceful bool) {
	m.quitOnce.Do(func() { close(m.quit) })
	m.mu.Lock()
	procs := make([]*proc, 0, len(m.all))
	for p := range m.all {
		procs = append(procs, p)
	}
	m.mu.Unlock()
	m.stopGroup(procs, graceful)
}

// killAfter kills p when it still runs after StopTimeout.
func (m *Master) killAfter(p *proc) {
	select {
	case <-p.exited:
	case <-time.After(m.opts.StopTimeout):
		m.log.Warn("worker did not stop in time: killed", zap.Int("pid", p.pid()), zap.Duration("stop_timeout", m.opts.StopTimeout))
		p.signal(syscall.SIGKILL)
	}
}

// finish removes what the master leaves: the zone (unless KeepZone) and
// its private directory when empty. Call once every worker has exited.
func (m *Master) finish() {
	m.wg.Wait()
	m.removeStale()
	m.info.remove()
	if m.opts.KeepZone {
		return
	}
	if _, err := zone.Remove(m.zone); err != nil && !errors.Is(err, os.ErrNotExist) {
		m.log.Warn("the zone was left in place", zap.Error(err))
	}
}

// removeStale removes worker files that a master killed before it could
// clean up left in the private directory; the master's lock says no other
// master of the zone runs.
func (m *Master) removeStale() {
	ents, err := os.ReadDir(m.dir)
	if err != nil {
		return
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	inUse := map[string]bool{}
	for p := range m.all {
		inUse[p.sock], inUse[p.cfg] = true, true
	}
	for _, e := range ents {
		name := e.Name()
		rest, ok := strings.CutPrefix(name, m.zone.Name+".w")
		if !ok {
			continue
		}
		num, ext, ok := strings.Cut(rest, ".")
		if _, err := strconv.Atoi(num); err != nil || !ok || (ext != "sock" && ext != "json") {
			continue
		}
		if p := filepath.Join(m.dir, name); !inUse[p] {
			_ = os.Remove(p)
		}
	}
}

func pids(ps []*proc) []int {
	out := make([]int, 0, len(ps))
	for _, p := range ps {
		out = append(out, p.pid())
	}
	return out
}

// listenAdmin opens the master's admin listener.
func (m *Master) listenAdmin() (net.Listener, error) {
	if m.opts.AdminNetwork == "unix" {
		_ = os.Remove(m.opts.AdminAddress)
		ln, err := net.Listen("unix", m.opts.AdminAddress)
		if err != nil {
			return nil, fmt.Errorf("serving the admin endpoint: %w", err)
		}
		if err := os.Chmod(m.opts.AdminAddress, m.opts.AdminSocketMode); err != nil {
			ln.Close()
			return nil, fmt.Errorf("serving the admin endpoint: %w", err)
		}
		return ln, nil
	}
	ln, err := net.Listen(m.opts.AdminNetwork, m.opts.AdminAddress)
	if err != nil {
		return nil, fmt.Errorf("serving the admin endpoint: %w", err)
	}
	return ln, nil
}
