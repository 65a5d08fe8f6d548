package master

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"time"

	"go.uber.org/zap"
)

// loadTimeout bounds one worker's config load.
const loadTimeout = 2 * time.Minute

// settle is how long the master lets clients move before it touches the
// next worker. Caddy's reload (and a stopping worker) closes the old
// listening sockets, then the idle keep-alive connections, whose clients
// reconnect at once, to the other listeners of the port. A listener that
// closes while connections wait in its accept queue makes the kernel
// reset them (unless net.ipv4.tcp_migrate_req is 1), so the next worker
// must not swap its listeners while those reconnections are under way.
const settle = 500 * time.Millisecond

// acquire takes the right to change the group; false when it stops first.
func (m *Master) acquire() bool {
	select {
	case m.ops <- struct{}{}:
		return true
	case <-m.quit:
		return false
	}
}

func (m *Master) release() { <-m.ops }

// errStopping refuses a change asked for while the group stops.
var errStopping = errors.New("the worker group is stopping")

// live is the current generation's workers that run, by slot.
func (m *Master) live() []*proc {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []*proc
	for _, p := range m.cur {
		if p.alive() {
			out = append(out, p)
		}
	}
	return out
}

// load applies cfg to the workers one at a time, each confirmed before
// the next: when the first refuses it, the others keep the old config
// and its error is returned (an *adminError with the worker's answer);
// when a later one refuses, those already done get the old config back.
// force reloads even an unchanged config.
func (m *Master) load(cfg []byte, force bool) error {
	zo, err := ZoneOf(cfg)
	if err != nil {
		return &adminError{status: http.StatusBadRequest, body: []byte(err.Error())}
	}
	if !sameZone(zo, m.zone) {
		return &adminError{status: http.StatusBadRequest, body: []byte(fmt.Sprintf("the new config names another ipcbus zone (%s, not %s): restart caddy ipcbus run to move the group", zo.Name, m.zone.Name))}
	}
	if !m.acquire() {
		return errStopping
	}
	defer m.release()
	m.mu.Lock()
	old := m.config
	m.mu.Unlock()
	done, err := m.roll(m.live(), cfg, force)
	if err != nil {
		if len(done) == 0 {
			return err
		}
		m.log.Error("a worker refused the new config: giving the previous one back to those that took it", zap.Ints("pids", pids(done)), zap.Error(err))
		if _, rerr := m.roll(done, old, true); rerr != nil {
			m.log.Error("giving the previous config back", zap.Error(rerr))
		}
		// Not the worker's answer as it is: the client must learn that
		// the others went back.
		return fmt.Errorf("a worker refused the new config after %d others took it, and they were given the previous one back: %v", len(done), err)
	}
	m.mu.Lock()
	m.config = cfg
	m.mu.Unlock()
	m.dropSockets(cfg)
	if a, b := adminListen(old), adminListen(cfg); a != b {
		m.log.Warn("the new config has another admin address: the master goes on serving the one it started with until it is restarted", zap.String("serving", a), zap.String("config", b))
	}
	m.log.Info("config reloaded", zap.Ints("pids", pids(done)), zap.Bool("forced", force))
	return nil
}

// roll posts cfg to each of ps in turn, stopping at the first refusal;
// it returns the workers that took it.
func (m *Master) roll(ps []*proc, cfg []byte, force bool) ([]*proc, error) {
	var done []*proc
	hdr := http.Header{}
	if force {
		hdr.Set("Cache-Control", "must-revalidate")
	}
	for i, p := range ps {
		if i > 0 {
			time.Sleep(settle)
		}
		wc, err := workerConfig(cfg, p.listen(), p.inherit)
		if err != nil {
			return done, err
		}
		err = p.pause(func() error {
			ctx, cancel := context.WithTimeout(context.Background(), loadTimeout)
			defer cancel()
			_, _, err := p.call(ctx, http.MethodPost, "/load", wc, hdr)
			return err
		})
		if err != nil {
			var ae *adminError
			if errors.As(err, &ae) {
				return done, fmt.Errorf("worker pid %d: %w", p.pid(), ae)
			}
			if !p.alive() {
				continue // it died meanwhile: its restart takes the group's config
			}
			return done, fmt.Errorf("loading the config into worker pid %d: %w", p.pid(), err)
		}
		// Caddy reloads a worker from its file on SIGUSR1: keep it current.
		if err := os.WriteFile(p.cfg, wc, 0o600); err != nil {
			m.log.Warn("updating a worker's config file", zap.String("file", p.cfg), zap.Error(err))
		}
		done = append(done, p)
	}
	return done, nil
}

// reloadFromSource reloads the config from its source (SIGHUP).
func (m *Master) reloadFromSource() {
	m.mu.Lock()
	cfg := m.config
	m.mu.Unlock()
	if m.opts.Reload != nil {
		var err error
		if cfg, err = m.opts.Reload(); err != nil {
			m.log.Error("reloading the config file", zap.Error(err))
			return
		}
	}
	if err := m.load(cfg, true); err != nil {
		m.log.Error("reloading the config", zap.Error(err))
	}
}

// mutate applies an admin change of the config under /config/ or /id/
// (other than the whole config) through the first worker, Caddy's own
// config API, then gives the result to the others one at a time.
func (m *Master) mutate(method, path string, body []byte, hdr http.Header) (int, []byte, error) {
	if !m.acquire() {
		return 0, nil, errStopping
	}
	defer m.release()
	ps := m.live()
	if len(ps) == 0 {
		return 0, nil, &adminError{status: http.StatusServiceUnavailable, body: []byte("no worker is running")}
	}
	m.mu.Lock()
	old := m.config
	m.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), loadTimeout)
	defer cancel()
	var status int
	var answer []byte
	err := ps[0].pause(func() (err error) {
		status, answer, err = ps[0].call(ctx, method, path, inheritBody(old, path, body, ps[0].inherit), hdr)
		return err
	})
	if err != nil {
		return status, answer, err
	}
	_, now, err := ps[0].call(ctx, http.MethodGet, "/config/", nil, nil)
	if err != nil {
		return 0, nil, fmt.Errorf("reading back the config of worker pid %d: %w", ps[0].pid(), err)
	}
	cfg, err := withAdminOf(now, old)
	if err != nil {
		return 0, nil, err
	}
	rest := ps[1:]
	if wc, err := workerConfig(cfg, ps[0].listen(), ps[0].inherit); err == nil {
		_ = os.WriteFile(ps[0].cfg, wc, 0o600)
		if !sameJSON(wc, now) {
			// The change named a shared address in a way inheritBody
			// does not rewrite (an append past an index, "listen/0/...",
			// say): the first worker bound a socket of its own for it. It gets the address as
			// the others do, on the master's socket, rather than keeping
			// its own until the next full load; the connections waiting
			// in its own socket's queue are reset.
			rest = ps
			m.log.Info("the change named a shared address: the first worker takes it on the master's socket too", zap.Int("pid", ps[0].pid()))
		}
	}
	if len(rest) > 0 {
		time.Sleep(settle)
	}
	if _, err := m.roll(rest, cfg, false); err != nil {
		if _, rerr := m.roll(ps, old, true); rerr != nil {
			m.log.Error("giving the previous config back", zap.Error(rerr))
		}
		return 0, nil, fmt.Errorf("a worker refused the changed config, and every worker was given the previous one back: %v", err)
	}
	m.mu.Lock()
	m.config = cfg
	m.mu.Unlock()
	m.dropSockets(cfg)
	m.log.Info("config changed", zap.String("method", method), zap.String("path", path), zap.Ints("pids", pids(ps)))
	return status, answer, nil
}
