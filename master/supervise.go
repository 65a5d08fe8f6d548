package master

import (
	"context"
	"errors"
	"fmt"
	"time"

	"go.uber.org/zap"

	"github.com/ipcbus/caddy-ipcbus/workermgr"
	"github.com/ipcbus/caddy-ipcbus/zone"
)

// supervise restarts p's slot whenever its worker exits without having
// been asked to, after a backoff (nextBackoff), until the group stops or
// an upgrade replaces the slot's worker.
func (m *Master) supervise(p *proc) {
	m.wg.Add(1)
	go func() {
		defer m.wg.Done()
		var wait time.Duration
		for {
			select {
			case <-p.exited:
			case <-m.quit:
				return
			}
			if p.retired.Load() || m.stopping() {
				return
			}
			up := time.Since(p.start)
			wait = nextBackoff(wait, up)
			m.log.Error("worker crashed", zap.Int("pid", p.pid()), zap.Int("slot", p.slot), zap.Duration("uptime", up.Round(time.Millisecond)),
				zap.NamedError("exit", p.err), zap.Duration("restart_in", wait))
			select {
			case <-time.After(wait):
			case <-m.quit:
				return
			}
			np := m.restart(p)
			if np == nil {
				return
			}
			m.log.Info("worker restarted", zap.Int("pid", np.pid()), zap.Int("slot", np.slot), zap.Int("replaces", p.pid()))
			m.writeInfo()
			p = np
		}
	}()
}

// restart starts a new worker in dead p's slot, unless the group stops or
// the slot has moved on (an upgrade). It waits for a load or an upgrade
// in progress, so that the new worker starts on the group's config.
func (m *Master) restart(p *proc) *proc {
	if !m.acquire() {
		return nil
	}
	defer m.release()
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.stopping() || m.cur[p.slot] != p {
		return nil
	}
	np := m.spawnLocked(p.slot, p.gen, m.binary)
	m.cur[p.slot] = np
	m.restarts[p.slot]++
	return np
}

// stopping reports whether the group is stopping.
func (m *Master) stopping() bool {
	select {
	case <-m.quit:
		return true
	default:
		return false
	}
}

// waitServing waits until every worker of ps is live in the zone's worker
// table and has finished loading its config (so its sites listen), for
// up to timeout. A worker that exits meanwhile fails it at once.
func (m *Master) waitServing(ps []*proc, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	pending := append([]*proc(nil), ps...)
	var z *zone.Zone
	defer func() {
		if z != nil {
			z.Close()
		}
	}()
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		for _, p := range pending {
			if !p.alive() {
				return fmt.Errorf("worker %d (pid %d, %s) exited before it was serving: %w", p.slot, p.pid(), p.binary, p.err)
			}
		}
		if z == nil {
			o := m.zone
			o.ReadOnly = true
			z, _ = zone.Open(o)
		}
		if z != nil {
			live := livePIDs(z)
			rest := pending[:0]
			for _, p := range pending {
				if !live[p.pid()] || !p.loaded(ctx) {
					rest = append(rest, p)
				}
			}
			pending = rest
			if len(pending) == 0 {
				return nil
			}
		}
		select {
		case <-tick.C:
		case <-m.quit:
			return errors.New("the group is stopping")
		case <-ctx.Done():
			return fmt.Errorf("%d of %d new workers were not live and serving after %v (pids %v)", len(pending), len(ps), timeout, pids(pending))
		}
	}
}

// livePIDs are the pids of the zone's live workers.
func livePIDs(z *zone.Zone) map[int]bool {
	_, ws := workermgr.Snapshot(z)
	live := map[int]bool{}
	for _, w := range ws {
		if w.State == "live" {
			live[w.PID] = true
		}
	}
	return live
}
