package workermgr

import (
	"fmt"
	"hash/fnv"

	"github.com/ipcbus/caddy-ipcbus/zone"
)

// AdminClashError is Join's refusal when another process's live worker
// of the zone has the same admin address: with SO_REUSEPORT both would
// listen on it, and admin requests (caddy stop and reload among them)
// would reach either process.
type AdminClashError struct {
	// Admin is the clashing address, as Config.Admin gave it.
	Admin string
	// PID and ID name the live worker that has it.
	PID int
	ID  string
	// Zone is the zone file's path.
	Zone string
}

// Error names the address, the worker that has it, and the fix.
func (e *AdminClashError) Error() string {
	return fmt.Sprintf("admin address %s is already used by worker %s (pid %d) of zone %s: give each Caddy process of the zone its own admin address (the global option admin, or CADDY_ADMIN), or run the processes with caddy ipcbus run", e.Admin, e.ID, e.PID, e.Zone)
}

// adminHash is the table's form of an admin address: FNV-1a 64, never 0
// for an address; 0 for none.
func adminHash(admin string) uint64 {
	if admin == "" {
		return 0
	}
	h := fnv.New64a()
	_, _ = h.Write([]byte(admin))
	return h.Sum64() | 1
}

// checkAdminLocked refuses the join when a live worker of another process
// has the admin hash h. Call under the node lock, after reaping.
func (w *Worker) checkAdminLocked(h uint64) error {
	if h == 0 {
		return nil
	}
	for i := 0; i < w.z.Workers(); i++ {
		s := w.z.Worker(i)
		if st := s.State.Load(); st != zone.WorkerLive && st != zone.WorkerHung {
			continue
		}
		pid := int(s.PID.Load())
		if pid == w.pid || s.AdminHash.Load() != h {
			continue
		}
		return &AdminClashError{Admin: w.cfg.Admin, PID: pid, ID: WorkerID(int(s.Generation.Load()), pid), Zone: w.z.Path()}
	}
	return nil
}
