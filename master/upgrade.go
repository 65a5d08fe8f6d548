package master

import (
	"fmt"
	"os"
	"sync"
	"time"

	"go.uber.org/zap"
)

// upgrade replaces every worker with a new one running binary (default:
// the binary the master was started with, as it is at that path now): it
// starts a new generation of N workers next to the old one (they share the
// site ports through SO_REUSEPORT), waits until all are live on the zone
// and serving, then stops the old ones gracefully. When the new ones do
// not come up within timeout (Options.UpgradeTimeout), they are stopped
// and the old ones go on. It returns the new workers' pids.
func (m *Master) upgrade(binary string, timeout time.Duration) ([]int, error) {
	if binary == "" {
		binary = m.opts.Binary
	}
	if _, err := os.Stat(binary); err != nil {
		return nil, fmt.Errorf("upgrading to %s: %w", binary, err)
	}
	if !m.acquire() {
		return nil, errStopping
	}
	defer m.release()
	m.mu.Lock()
	gen := m.gen + 1
	next := make([]*proc, m.opts.Workers)
	for i := range next {
		next[i] = m.spawnLocked(i, gen, binary)
	}
	m.mu.Unlock()
	m.log.Info("upgrade: new workers started", zap.String("binary", binary), zap.Int("generation", gen), zap.Ints("pids", pids(next)))
	if err := m.waitServing(next, timeout); err != nil {
		m.log.Error("upgrade failed: the new workers are stopped, the old ones go on", zap.String("binary", binary), zap.Error(err))
		m.stopGroup(next, false)
		return nil, fmt.Errorf("upgrading to %s: %w; the previous workers go on", binary, err)
	}
	m.mu.Lock()
	old := m.cur
	m.cur, m.gen, m.binary = next, gen, binary
	for i := range m.restarts {
		m.restarts[i] = 0
	}
	m.mu.Unlock()
	for _, p := range next {
		m.supervise(p)
	}
	m.writeInfo()
	m.log.Info("upgrade: new workers serving, stopping the old ones", zap.Int("generation", gen), zap.Ints("pids", pids(next)), zap.Ints("old_pids", pids(old)))
	go m.retire(old)
	return pids(next), nil
}

// retire stops the workers ps gracefully one at a time, each gone and
// its clients settled on the others before the next (see settle).
func (m *Master) retire(ps []*proc) {
	for i, p := range ps {
		if i > 0 {
			time.Sleep(settle)
		}
		p.stop(true)
		<-p.exited
	}
}

// stopGroup stops the workers ps and waits for them; a fast stop kills
// those still running after StopTimeout.
func (m *Master) stopGroup(ps []*proc, graceful bool) {
	var wg sync.WaitGroup
	for _, p := range ps {
		wg.Add(1)
		go func() {
			defer wg.Done()
			p.stop(graceful)
			if !graceful {
				m.killAfter(p)
			}
			<-p.exited
		}()
	}
	wg.Wait()
}
