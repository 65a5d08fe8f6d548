package workermgr

import (
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/ipcbus/caddy-ipcbus/zone"
)

// Defaults, as documented for the ipcbus app.
const (
	DefaultHeartbeat = time.Second
	DefaultDeadAfter = 5 * time.Second
	// maxProbeInterval bounds how long a crash goes unseen: a dead worker's
	// liveness lock is checked at least this often.
	maxProbeInterval = 250 * time.Millisecond
)

// Config configures a joining worker.
type Config struct {
	// Generation is this process's number for the worker (1 for its first
	// config load, 2 after a reload, …). Required.
	Generation int
	// Heartbeat is how often the worker stamps its slot. Default 1s.
	Heartbeat time.Duration
	// DeadAfter is how long a live worker may go without a heartbeat before
	// the others count it as hung. Default 5s; must exceed Heartbeat.
	DeadAfter time.Duration
	// ProbeInterval is how often the other workers' liveness locks are
	// checked; default min(Heartbeat, 250ms).
	ProbeInterval time.Duration
	// OnEvent is called for every lifecycle event this worker causes or
	// sees, under the node lock, so it must not join or leave. A panic in
	// it is recovered and logged, and the lock is released.
	OnEvent func(Event)
	// Logger gets lifecycle logs; nil discards them.
	Logger *zap.Logger
	// Admin is the admin address of the worker's process, normalized so
	// that two spellings of one address are equal (AdminKey), or "" when
	// the process has none (or it is unknown). Join refuses with an
	// AdminClashError while a live worker of another process of the zone
	// has the same.
	Admin string
}

func (c *Config) setDefaults() error {
	if c.Generation < 1 {
		return fmt.Errorf("worker generation must be at least 1, was %d", c.Generation)
	}
	if c.Heartbeat == 0 {
		c.Heartbeat = DefaultHeartbeat
	}
	if c.DeadAfter == 0 {
		c.DeadAfter = DefaultDeadAfter
	}
	if c.Heartbeat < 0 || c.DeadAfter <= c.Heartbeat {
		return fmt.Errorf("dead_after (%v) must be longer than heartbeat (%v), and both positive", c.DeadAfter, c.Heartbeat)
	}
	if c.ProbeInterval <= 0 {
		c.ProbeInterval = min(c.Heartbeat, maxProbeInterval)
	}
	if c.Logger == nil {
		c.Logger = zap.NewNop()
	}
	return nil
}

// Stats are one worker's own counters.
type Stats struct {
	Heartbeats      uint64 `json:"heartbeats"`
	Probes          uint64 `json:"probes"`
	CrashesSeen     uint64 `json:"crashes_seen"`
	HungSeen        uint64 `json:"hung_seen"`
	Recovered       uint64 `json:"recovered"`
	CallbackPanics  uint64 `json:"callback_panics"`
	NodeLockWaitsNs uint64 `json:"node_lock_wait_ns"`
}

// Add adds o's counters to s.
func (s *Stats) Add(o Stats) {
	s.Heartbeats += o.Heartbeats
	s.Probes += o.Probes
	s.CrashesSeen += o.CrashesSeen
	s.HungSeen += o.HungSeen
	s.Recovered += o.Recovered
	s.CallbackPanics += o.CallbackPanics
	s.NodeLockWaitsNs += o.NodeLockWaitsNs
}

// Worker is this process's entry in a zone's worker table.
type Worker struct {
	z      *zone.Zone
	h      *zone.Handle
	cfg    Config
	log    *zap.Logger
	slot   int
	pid    int
	nonce  uint64
	id     string
	epoch  uint32
	stop   chan struct{}
	done   chan struct{}
	left   atomic.Bool
	stats  struct{ heartbeats, probes, crashes, hung, recovered, panics, lockWait atomic.Uint64 }
	leaveM sync.Mutex
}

// history remembers, per zone file, the oldest and newest generations this
// process has joined, so that the counts can tell "never had one" (absent)
// from "none left" (0), as worker-manager does.
var history = struct {
	sync.Mutex
	gens map[string][2]int
}{gens: map[string][2]int{}}

// recordJoin notes that generation gen of this process joined the zone at path.
func recordJoin(path string, gen int) {
	history.Lock()
	defer history.Unlock()
	h, ok := history.gens[path]
	if !ok {
		h = [2]int{gen, gen}
	}
	h[0], h[1] = min(h[0], gen), max(h[1], gen)
	history.gens[path] = h
}

// hadGenerations reports whether this process ever joined the zone at path
// with a generation older, and newer, than gen.
func hadGenerations(path string, gen int) (older, newer bool) {
	history.Lock()
	defer history.Unlock()
	h, ok := history.gens[path]
	return ok && h[0] < gen, ok && h[1] > gen
}

// ErrTableFull is returned when every worker slot is live.
var ErrTableFull = errors.New("worker table full")

// Join enters this worker into the zone's worker table, starts its heartbeat
// and the probing of the others, and runs the start callbacks.
func Join(z *zone.Zone, cfg Config) (*Worker, error) {
	if err := cfg.setDefaults(); err != nil {
		return nil, err
	}
	h, err := z.NewHandle()
	if err != nil {
		return nil, err
	}
	w := &Worker{z: z, h: h, cfg: cfg, pid: os.Getpid(), slot: -1, stop: make(chan struct{}), done: make(chan struct{})}
	var nb [8]byte
	_, _ = rand.Read(nb[:])
	w.nonce = binary.LittleEndian.Uint64(nb[:]) | 1
	w.id = WorkerID(cfg.Generation, w.pid)
	w.log = cfg.Logger.With(zap.String("worker", w.id))
	if err := w.join(); err != nil {
		h.Close()
		return nil, err
	}
	go w.monitor()
	return w, nil
}

func (w *Worker) lock() error {
	t := time.Now()
	err := w.h.LockNode()
	w.stats.lockWait.Add(uint64(time.Since(t)))
	return err
}

func (w *Worker) join() error {
	if err := w.lock(); err != nil {
		return err
	}
	defer w.h.UnlockNode()
	z, node := w.z, w.z.Node()
	now := time.Now()
	w.reapLocked(now)
	live := 0
	for i := 0; i < z.Workers(); i++ {
		if s := z.Worker(i).State.Load(); s == zone.WorkerLive || s == zone.WorkerHung {
			live++
		}
	}
	hash := adminHash(w.cfg.Admin)
	if err := w.checkAdminLocked(hash); err != nil {
		return err
	}
	nodeStart := live == 0
	if nodeStart {
		// A new run of the node: the entries of the last run are history
		// (the counters keep it); free their slots.
		for i := 0; i < z.Workers(); i++ {
			z.Worker(i).State.Store(zone.WorkerFree)
		}
		node.Epoch.Add(1)
		node.Starts.Add(1)
		node.StartedAt.Store(now.UnixNano())
		node.StoppedAt.Store(0)
		node.State.Store(zone.NodeRunning)
	}
	slot := w.pickSlot()
	if slot < 0 {
		return fmt.Errorf("joining zone %s: %w (%d live workers)", z.Path(), ErrTableFull, live)
	}
	if err := w.h.HoldWorker(slot); err != nil {
		return err
	}
	s := z.Worker(slot)
	s.PID.Store(uint32(w.pid))
	s.Generation.Store(uint32(w.cfg.Generation))
	s.Nonce.Store(w.nonce)
	s.StartedAt.Store(now.UnixNano())
	s.Heartbeat.Store(now.UnixNano())
	s.ExitedAt.Store(0)
	s.Reason.Store(0)
	s.Missed.Store(0)
	s.Cursor.Store(z.Ring().Tail())
	s.AlertCursor.Store(0) // no alerts receiver until one starts
	s.SendWaiting.Store(0) // a predecessor killed while waiting left it set
	s.AdminHash.Store(hash)
	w.epoch = node.Epoch.Load()
	s.Epoch.Store(w.epoch)
	s.State.Store(zone.WorkerLive)
	w.slot = slot

	recordJoin(z.Path(), w.cfg.Generation)
	hadOlder, hadNewer := hadGenerations(z.Path(), w.cfg.Generation)
	prev, mine, next := w.counts(w.pid, w.cfg.Generation, hadOlder, hadNewer)
	node.WorkerStarts.Add(1)
	reload := prev.N > 0
	if reload {
		node.Reloads.Add(1)
	}
	if nodeStart {
		w.emit(Event{Kind: NodeStarted, ID: w.id, PID: w.pid, Generation: w.cfg.Generation, Slot: slot, Prev: prev, Mine: mine, Next: next, NodeEpoch: w.epoch, Time: now})
	}
	w.emit(Event{Kind: WorkerStarted, ID: w.id, PID: w.pid, Generation: w.cfg.Generation, Slot: slot, Prev: prev, Mine: mine, Next: next, Reload: reload, NodeEpoch: w.epoch, Time: now})
	return nil
}

// pickSlot chooses a free slot, else the one that ended longest ago.
func (w *Worker) pickSlot() int {
	best, bestAt := -1, int64(0)
	for i := 0; i < w.z.Workers(); i++ {
		s := w.z.Worker(i)
		switch s.State.Load() {
		case zone.WorkerFree:
			return i
		case zone.WorkerExited, zone.WorkerCrashed:
			if at := s.ExitedAt.Load(); best < 0 || at < bestAt {
				best, bestAt = i, at
			}
		}
	}
	return best
}

// counts computes (n_prev, n_mine, n_next) for the worker (pid, gen). Call
// under the node lock. hadOlder/hadNewer say whether the process ever had
// such a generation, which makes the count present even at 0.
func (w *Worker) counts(pid, gen int, hadOlder, hadNewer bool) (prev, mine, next Count) {
	for i := 0; i < w.z.Workers(); i++ {
		s := w.z.Worker(i)
		if st := s.State.Load(); st != zone.WorkerLive && st != zone.WorkerHung {
			continue
		}
		mine.N++
		if int(s.PID.Load()) != pid {
			continue
		}
		switch g := int(s.Generation.Load()); {
		case g < gen:
			prev.N++
		case g > gen:
			next.N++
		}
	}
	mine.Present = true
	prev.Present = hadOlder || prev.N > 0
	next.Present = hadNewer || next.N > 0
	return prev, mine, next
}

// logLevel is the level an event is logged at: a crash at error, a hang
// at warn, the rest (node start and stop, starts, reloads, exits,
// recoveries) at info.
func logLevel(ev Event) zapcore.Level {
	switch {
	case ev.Kind == WorkerCrashed && ev.Reason == ReasonHung:
		return zap.WarnLevel
	case ev.Kind == WorkerCrashed:
		return zap.ErrorLevel
	}
	return zap.InfoLevel
}

// emit runs the callback, surviving its panics.
func (w *Worker) emit(ev Event) {
	if ce := w.log.Check(logLevel(ev), "ipcbus "+ev.Kind.String()); ce != nil {
		fields := []zap.Field{zap.String("id", ev.ID), zap.Stringer("n_prev", ev.Prev), zap.Stringer("n_mine", ev.Mine), zap.Stringer("n_next", ev.Next)}
		if ev.Reason != ReasonNone {
			fields = append(fields, zap.Stringer("reason", ev.Reason))
		}
		ce.Write(fields...)
	}
	if w.cfg.OnEvent == nil {
		return
	}
	defer func() {
		if r := recover(); r != nil {
			w.stats.panics.Add(1)
			w.log.Error("lifecycle callback panicked", zap.String("event", ev.Kind.String()), zap.Any("panic", r), zap.ByteString("stack", debug.Stack()))
		}
	}()
	w.cfg.OnEvent(ev)
}

// ID is the worker's id, "<generation>-<pid>".
func (w *Worker) ID() string { return w.id }

// Slot is the worker's index in the table.
func (w *Worker) Slot() int { return w.slot }

// Nonce is the worker's incarnation nonce.
func (w *Worker) Nonce() uint64 { return w.nonce }

// Epoch is the node start the worker joined in.
func (w *Worker) Epoch() uint32 { return w.epoch }

// Stats returns the worker's own counters.
func (w *Worker) Stats() Stats {
	return Stats{
		Heartbeats: w.stats.heartbeats.Load(), Probes: w.stats.probes.Load(),
		CrashesSeen: w.stats.crashes.Load(), HungSeen: w.stats.hung.Load(),
		Recovered: w.stats.recovered.Load(), CallbackPanics: w.stats.panics.Load(),
		NodeLockWaitsNs: w.stats.lockWait.Load(),
	}
}

// SetCursor publishes the ring sequence this worker reads next, so that
// others can see its lag.
func (w *Worker) SetCursor(seq uint64) { w.z.Worker(w.slot).Cursor.Store(seq) }
