package master

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"time"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"
)

// Info is what a running master publishes next to its zone, in
// "<zone>.master.json" of the zone's private directory, for
// `caddy ipcbus workers`.
type Info struct {
	// PID is the master's process id.
	PID int `json:"pid"`
	// Admin is the group's admin address the master serves ("" when off).
	Admin string `json:"admin,omitempty"`
	// Binary is what the current workers run.
	Binary string `json:"binary"`
	// Generation is the current workers' generation: 1, and one more per upgrade.
	Generation int `json:"generation"`
	// StartedAt is when the master started.
	StartedAt time.Time `json:"started_at"`
	// Workers are the master's worker processes, current and stopping.
	Workers []WorkerInfo `json:"workers"`
	// Running reports whether the master still runs (it holds its lock);
	// set by ReadInfo, not stored.
	Running bool `json:"running"`
}

// WorkerInfo is one worker process of a master.
type WorkerInfo struct {
	// Slot is the worker's place among the master's N (0 to N-1).
	Slot int `json:"slot"`
	// PID is its process id.
	PID int `json:"pid"`
	// Generation is the master's generation it belongs to.
	Generation int `json:"generation"`
	// Admin is its admin endpoint, a unix socket.
	Admin string `json:"admin"`
	// StartedAt is when it was started.
	StartedAt time.Time `json:"started_at"`
	// Restarts counts the restarts of its slot after crashes.
	Restarts int `json:"restarts"`
	// Stopping is set for a worker that is being stopped (an upgrade's
	// previous generation, or the whole group stopping).
	Stopping bool `json:"stopping,omitempty"`
	// Starting is set for a worker of an upgrade's new generation that
	// does not serve yet.
	Starting bool `json:"starting,omitempty"`
}

// infoFile is the master's lock on its zone and its published Info.
type infoFile struct {
	mu   sync.Mutex
	lock *os.File
	path string // the JSON file
}

func infoPaths(dir, zoneName string) (lock, info string) {
	base := filepath.Join(dir, zoneName+".master")
	return base + ".lock", base + ".json"
}

// lockInfo takes the zone's master lock: one master per zone.
func lockInfo(dir, zoneName string) (*infoFile, error) {
	lp, ip := infoPaths(dir, zoneName)
	f, err := os.OpenFile(lp, os.O_RDWR|os.O_CREATE|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return nil, fmt.Errorf("taking the master lock of zone %s: %w", zoneName, err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			who := "another process"
			if in, err := readInfoFile(ip); err == nil {
				who = fmt.Sprintf("pid %d", in.PID)
			}
			return nil, fmt.Errorf("a master (%s) already runs the workers of zone %s; stop it first, or give this config another zone", who, zoneName)
		}
		return nil, fmt.Errorf("taking the master lock of zone %s: %w", zoneName, err)
	}
	return &infoFile{lock: f, path: ip}, nil
}

// write publishes in atomically (a new file renamed over the old one).
func (f *infoFile) write(in Info) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.lock == nil {
		return nil
	}
	b, err := json.MarshalIndent(in, "", "  ")
	if err != nil {
		return err
	}
	tmp := f.path + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, f.path)
}

// remove deletes the files and drops the lock; it may be called twice.
func (f *infoFile) remove() {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.lock == nil {
		return
	}
	_ = os.Remove(f.path)
	_ = os.Remove(f.path + ".tmp")
	_ = os.Remove(f.lock.Name())
	f.lock.Close()
	f.lock = nil
}

func readInfoFile(path string) (Info, error) {
	var in Info
	b, err := os.ReadFile(path)
	if err != nil {
		return in, err
	}
	return in, json.Unmarshal(b, &in)
}

// ReadInfo reads the Info of the master of the zone whose private
// directory is dir; os.ErrNotExist when no master has published one.
func ReadInfo(dir, zoneName string) (Info, error) {
	lp, ip := infoPaths(dir, zoneName)
	in, err := readInfoFile(ip)
	if err != nil {
		return in, err
	}
	if f, err := os.Open(lp); err == nil {
		in.Running = unix.Flock(int(f.Fd()), unix.LOCK_SH|unix.LOCK_NB) != nil
		f.Close()
	}
	return in, nil
}

// writeInfo publishes the master's state.
func (m *Master) writeInfo() {
	m.mu.Lock()
	in := Info{PID: os.Getpid(), Admin: m.opts.AdminAddress, Binary: m.binary, Generation: m.gen, StartedAt: m.started}
	for p := range m.all {
		if !p.alive() {
			continue
		}
		in.Workers = append(in.Workers, WorkerInfo{
			Slot: p.slot, PID: p.pid(), Generation: p.gen, Admin: p.sock, StartedAt: p.start,
			Restarts: m.restarts[p.slot], Stopping: p.retired.Load() || p.gen < m.gen, Starting: p.gen > m.gen,
		})
	}
	m.mu.Unlock()
	sort.Slice(in.Workers, func(i, j int) bool {
		a, b := in.Workers[i], in.Workers[j]
		if a.Generation != b.Generation {
			return a.Generation > b.Generation
		}
		return a.Slot < b.Slot
	})
	if m.info == nil {
		return
	}
	if err := m.info.write(in); err != nil {
		m.log.Warn("publishing the master's state", zap.Error(err))
	}
}
