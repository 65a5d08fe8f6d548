package workermgr

import (
	"time"

	"go.uber.org/zap"

	"github.com/ipcbus/caddy-ipcbus/zone"
)

// monitor stamps the heartbeat and probes the other workers until Leave.
func (w *Worker) monitor() {
	defer close(w.done)
	t := time.NewTicker(w.cfg.ProbeInterval)
	defer t.Stop()
	lastBeat := time.Now()
	for {
		select {
		case <-w.stop:
			return
		case now := <-t.C:
			if now.Sub(lastBeat) >= w.cfg.Heartbeat-w.cfg.ProbeInterval/2 {
				w.Beat(now)
				lastBeat = now
			}
			w.Probe(now)
		}
	}
}

// Beat stamps the worker's heartbeat. A worker the others marked hung is
// made live again.
func (w *Worker) Beat(now time.Time) {
	s := w.z.Worker(w.slot)
	s.Heartbeat.Store(now.UnixNano())
	w.stats.heartbeats.Add(1)
	if s.State.Load() != zone.WorkerHung || s.Nonce.Load() != w.nonce {
		return
	}
	if w.lock() != nil {
		return
	}
	defer w.h.UnlockNode()
	if s.State.CompareAndSwap(zone.WorkerHung, zone.WorkerLive) {
		w.stats.recovered.Add(1)
		w.log.Warn("worker recovered from missed heartbeats", zap.Uint32("missed", s.Missed.Load()))
		prev, mine, next := w.counts(w.pid, w.cfg.Generation, false, false)
		w.emit(Event{Kind: WorkerRecovered, ID: w.id, PID: w.pid, Generation: w.cfg.Generation, Slot: w.slot, Prev: prev, Mine: mine, Next: next, NodeEpoch: w.epoch, Time: now})
	}
}

// Probe checks every other live worker: a released liveness lock is a
// crash, a heartbeat older than DeadAfter a hang. Both are recorded under the
// node lock by whichever worker sees them first.
func (w *Worker) Probe(now time.Time) {
	w.stats.probes.Add(1)
	// A process killed while one of its readers slept leaves its bit on a
	// doorbell: take it back, or every commit pays a wake-up call.
	w.z.ReapMembers()
	var suspects []int
	for i := 0; i < w.z.Workers(); i++ {
		if i == w.slot {
			continue
		}
		s := w.z.Worker(i)
		st := s.State.Load()
		if st != zone.WorkerLive && st != zone.WorkerHung {
			continue
		}
		alive, err := w.z.WorkerAlive(i)
		if err != nil {
			continue
		}
		if !alive || (st == zone.WorkerLive && now.UnixNano()-s.Heartbeat.Load() > int64(w.cfg.DeadAfter)) {
			suspects = append(suspects, i)
		}
	}
	if len(suspects) == 0 {
		return
	}
	if w.lock() != nil {
		return
	}
	defer w.h.UnlockNode()
	for _, i := range suspects {
		w.judgeLocked(i, now)
	}
}

// reapLocked records every live entry whose process is gone. Call under the node lock.
func (w *Worker) reapLocked(now time.Time) {
	for i := 0; i < w.z.Workers(); i++ {
		if st := w.z.Worker(i).State.Load(); st == zone.WorkerLive || st == zone.WorkerHung {
			w.judgeLocked(i, now)
		}
	}
}

// judgeLocked re-checks slot i under the node lock and records a crash or a
// hang.
func (w *Worker) judgeLocked(i int, now time.Time) {
	if i == w.slot {
		return
	}
	s := w.z.Worker(i)
	st := s.State.Load()
	if st != zone.WorkerLive && st != zone.WorkerHung {
		return
	}
	alive, err := w.z.WorkerAlive(i)
	if err != nil {
		return
	}
	pid, gen := int(s.PID.Load()), int(s.Generation.Load())
	node := w.z.Node()
	switch {
	case !alive:
		s.ExitedAt.Store(now.UnixNano())
		s.Reason.Store(uint32(ReasonCrash))
		s.State.Store(zone.WorkerCrashed)
		node.Crashes.Add(1)
		w.stats.crashes.Add(1)
		prev, mine, next := w.counts(pid, gen, false, false)
		w.emit(Event{Kind: WorkerCrashed, ID: WorkerID(gen, pid), PID: pid, Generation: gen, Slot: i, Prev: prev, Mine: mine, Next: next, Reason: ReasonCrash, NodeEpoch: w.epoch, Time: now})
	case st == zone.WorkerLive && now.UnixNano()-s.Heartbeat.Load() > int64(w.cfg.DeadAfter):
		s.Missed.Add(1)
		s.Reason.Store(uint32(ReasonHung))
		s.State.Store(zone.WorkerHung)
		node.MissedHeartbeats.Add(1)
		w.stats.hung.Add(1)
		prev, mine, next := w.counts(pid, gen, false, false)
		w.emit(Event{Kind: WorkerCrashed, ID: WorkerID(gen, pid), PID: pid, Generation: gen, Slot: i, Prev: prev, Mine: mine, Next: next, Reason: ReasonHung, NodeEpoch: w.epoch, Time: now})
	}
}

// Leave takes the worker out of the table with the given reason
// (ReasonAuto: reload when a newer worker of this process lives, rollback
// when only an older one does, else unload), runs the exit callbacks, and
// stops its goroutine. When it was the last live worker, the node stops.
// Leave is idempotent.
func (w *Worker) Leave(reason Reason) error {
	w.leaveM.Lock()
	defer w.leaveM.Unlock()
	if w.left.Load() {
		return nil
	}
	close(w.stop)
	<-w.done
	w.left.Store(true)
	defer w.h.Close() // drops the liveness lock, whatever happens below
	if err := w.lock(); err != nil {
		return err
	}
	defer w.h.UnlockNode()
	now := time.Now()
	hadOlder, hadNewer := hadGenerations(w.z.Path(), w.cfg.Generation)
	prev, mine, next := w.counts(w.pid, w.cfg.Generation, hadOlder, hadNewer)
	if reason == ReasonAuto {
		switch {
		case next.N > 0:
			reason = ReasonReload
		case prev.N > 0:
			reason = ReasonRollback
		default:
			reason = ReasonUnload
		}
	}
	node := w.z.Node()
	s := w.z.Worker(w.slot)
	ev := Event{Kind: WorkerExited, ID: w.id, PID: w.pid, Generation: w.cfg.Generation, Slot: w.slot, Prev: prev, Mine: mine, Next: next, Reason: reason, Reload: reason == ReasonReload, NodeEpoch: w.epoch, Time: now}
	w.emit(ev)
	if s.Nonce.Load() == w.nonce {
		s.ExitedAt.Store(now.UnixNano())
		s.Reason.Store(uint32(reason))
		s.State.Store(zone.WorkerExited)
	}
	node.Exits.Add(1)
	if mine.N <= 1 {
		node.StoppedAt.Store(now.UnixNano())
		node.State.Store(zone.NodeStopped)
		ev.Kind = NodeStopped
		w.emit(ev)
	}
	return w.h.ReleaseWorker(w.slot)
}
