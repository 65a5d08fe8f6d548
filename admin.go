package ipcbus

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2"

	"github.com/ipcbus/caddy-ipcbus/events"
	"github.com/ipcbus/caddy-ipcbus/handlers"
	"github.com/ipcbus/caddy-ipcbus/ipc"
	"github.com/ipcbus/caddy-ipcbus/master"
	"github.com/ipcbus/caddy-ipcbus/workermgr"
)

func init() {
	caddy.RegisterModule(adminAPI{})
}

// adminAPI is the admin.api.ipcbus module: endpoints under /ipcbus/ on
// Caddy's admin listener. It finds the running app on every request, since
// admin modules outlive config loads.
type adminAPI struct{}

// CaddyModule returns the Caddy module information.
func (adminAPI) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "admin.api.ipcbus",
		New: func() caddy.Module { return adminAPI{} },
	}
}

// Routes returns the admin routes.
func (adminAPI) Routes() []caddy.AdminRoute {
	return []caddy.AdminRoute{
		{Pattern: "/ipcbus/workers", Handler: caddy.AdminHandlerFunc(handleWorkers)},
		{Pattern: "/ipcbus/stats", Handler: caddy.AdminHandlerFunc(handleStats)},
		{Pattern: "/ipcbus/events", Handler: caddy.AdminHandlerFunc(handleEvents)},
		{Pattern: "/ipcbus/send", Handler: caddy.AdminHandlerFunc(handleSend)},
		{Pattern: "/ipcbus/broadcast", Handler: caddy.AdminHandlerFunc(handleSend)},
		{Pattern: "/ipcbus/fleet", Handler: caddy.AdminHandlerFunc(handleFleet)},
		{Pattern: "/ipcbus/quiesce", Handler: caddy.AdminHandlerFunc(handleQuiesce)},
	}
}

// ZoneInfo names a zone in API answers.
type ZoneInfo struct {
	// Name is the zone's name, Path its file, Size its size in bytes.
	Name string `json:"name"`
	Path string `json:"path"`
	Size int64  `json:"size"`
}

// WorkersReport is the answer of GET /ipcbus/workers and of the CLI's --json.
type WorkersReport struct {
	// Zone names the zone.
	Zone ZoneInfo `json:"zone"`
	// Node has the node's state and counters.
	Node workermgr.NodeInfo `json:"node"`
	// Workers is the worker table: live workers first, then the exited ones.
	Workers []workermgr.WorkerInfo `json:"workers"`
	// Master is the master process (caddy ipcbus run) that runs workers
	// of the zone and what it runs, when one has published its state.
	Master *master.Info `json:"master,omitempty"`
}

// withMaster adds the zone's master, if any, to rep.
func withMaster(rep WorkersReport) WorkersReport {
	if in, err := master.ReadInfo(filepath.Dir(rep.Zone.Path), rep.Zone.Name); err == nil {
		rep.Master = &in
	}
	return rep
}

var errNotRunning = errors.New("ipcbus is not running in this process")

// running is what the GET endpoints read of the running app, taken under
// its lock: nothing of the app is touched after the lock is released.
type running struct {
	workers WorkersReport
	stats   StatsReport
}

// runningGET checks that r is a GET and returns a snapshot of the running app.
func runningGET(r *http.Request) (running, error) {
	if r.Method != http.MethodGet {
		return running{}, caddy.APIError{HTTPStatus: http.StatusMethodNotAllowed, Err: errors.New("method not allowed: use GET")}
	}
	a := current()
	if a == nil {
		return running{}, caddy.APIError{HTTPStatus: http.StatusServiceUnavailable, Err: errNotRunning}
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.worker == nil {
		return running{}, caddy.APIError{HTTPStatus: http.StatusServiceUnavailable, Err: errNotRunning}
	}
	node, workers := workermgr.Snapshot(a.zone)
	return running{
		workers: withMaster(WorkersReport{Zone: ZoneInfo{Name: a.Zone, Path: a.zone.Path(), Size: a.zone.Size()}, Node: node, Workers: workers}),
		stats:   a.statsLocked(),
	}, nil
}

func writeJSON(w http.ResponseWriter, v any) error {
	w.Header().Set("Content-Type", "application/json")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func handleWorkers(w http.ResponseWriter, r *http.Request) error {
	snap, err := runningGET(r)
	if err != nil {
		return err
	}
	return writeJSON(w, snap.workers)
}

// processStats accumulates the counters of this process's past workers
// (each config load's app is another instance, gone after its reload), so
// it is per process, hence package-level.
var processStats struct {
	sync.Mutex
	workermgr.Stats
	events  events.Stats
	alerts  ipc.Stats
	workers int
}

func addEventStats(s events.Stats, a ipc.Stats) {
	processStats.Lock()
	defer processStats.Unlock()
	processStats.events.Add(s)
	processStats.alerts.Add(a)
}

func addStats(s workermgr.Stats) {
	processStats.Lock()
	defer processStats.Unlock()
	processStats.Add(s)
	processStats.workers++
}

// StatsReport is the answer of GET /ipcbus/stats: this process's counters.
type StatsReport struct {
	// PID is this process's; Worker and Generation name its running worker.
	PID        int    `json:"pid"`
	Worker     string `json:"worker"`
	Generation int    `json:"generation"`
	// Workers is the number of workers this process has run (one per config load).
	Workers int `json:"workers"`
	// Lifecycle sums the counters of every worker this process has run.
	Lifecycle workermgr.Stats `json:"lifecycle"`
	// Events sums the events bus counters of every worker this process has run.
	Events events.Stats `json:"events"`
	// Alerts sums the IPC alert counters of every worker this process has run.
	Alerts ipc.Stats `json:"alerts"`
	// HTTP has the counters of the HTTP handlers of this process (open
	// streams, streams refused and slow clients dropped, bodies refused).
	HTTP handlers.Stats `json:"http"`
	// Reactions has this process's counters of on_alert and emit (actions
	// run, webhook deliveries, retries and drops, events emitted and dropped).
	Reactions ReactionStats `json:"reactions"`
	// Ring is the zone ring's tail and geometry.
	Ring RingStats `json:"ring"`
}

// RingStats describes the zone's ring.
type RingStats struct {
	// Tail is the next sequence number; Slots the records the index
	// holds; DataBytes the data area, leased in Segments of SegmentSize
	// bytes; MaxRecord the largest record it carries.
	Tail        uint64 `json:"tail"`
	Slots       uint64 `json:"slots"`
	DataBytes   uint64 `json:"data_bytes"`
	Segments    int    `json:"segments"`
	SegmentSize int    `json:"segment_size"`
	MaxRecord   int    `json:"max_record"`
}

func handleStats(w http.ResponseWriter, r *http.Request) error {
	snap, err := runningGET(r)
	if err != nil {
		return err
	}
	return writeJSON(w, snap.stats)
}

// statsLocked builds this process's stats report; call with a.mu held and
// the app started.
func (a *App) statsLocked() StatsReport {
	processStats.Lock()
	rep := StatsReport{PID: os.Getpid(), Worker: a.worker.ID(), Generation: a.gen, Workers: processStats.workers + 1, Lifecycle: processStats.Stats, Events: processStats.events, Alerts: processStats.alerts}
	processStats.Unlock()
	rep.Lifecycle.Add(a.worker.Stats())
	rep.Events.Add(a.bus.Stats())
	rep.Alerts.Add(a.alerts.Stats())
	rep.HTTP = handlers.ReadStats()
	rep.Reactions = readReactionStats()
	ring := a.zone.Ring()
	rep.Ring = RingStats{Tail: ring.Tail(), Slots: ring.Slots(), DataBytes: ring.DataSize(), Segments: ring.Segments(),
		SegmentSize: ring.SegmentSize(), MaxRecord: ring.MaxRecord()}
	return rep
}

// maxPause bounds POST /ipcbus/quiesce?for=.
const maxPause = 5 * time.Minute

// handleQuiesce serves /ipcbus/quiesce for `caddy ipcbus run`, whose
// workers share the master's listening sockets:
//
//	POST   /ipcbus/quiesce           stop accepting on them for good (the
//	                                 worker is about to stop)
//	POST   /ipcbus/quiesce?for=30s   stop accepting for up to that long
//	                                 (at most 5m), before a config load
//	DELETE /ipcbus/quiesce           accept again after a pause
//
// Meanwhile the other workers, or the listeners of the config being
// loaded, take the connections. It answers {"listeners":N}: how many
// listeners it quieted, or how many accept again.
func handleQuiesce(w http.ResponseWriter, r *http.Request) error {
	switch r.Method {
	case http.MethodPost:
		f := r.URL.Query().Get("for")
		if f == "" {
			return writeJSON(w, map[string]int{"listeners": quiesceInherited()})
		}
		d, err := caddy.ParseDuration(f)
		if err != nil || d <= 0 || d > maxPause {
			return caddy.APIError{HTTPStatus: http.StatusBadRequest, Err: fmt.Errorf("invalid for=%q: give a duration from 1ms to %s", f, maxPause)}
		}
		return writeJSON(w, map[string]int{"listeners": pauseInherited(d)})
	case http.MethodDelete:
		return writeJSON(w, map[string]int{"listeners": resumeInherited()})
	default:
		return caddy.APIError{HTTPStatus: http.StatusMethodNotAllowed, Err: fmt.Errorf("method %s not allowed: use POST or DELETE", r.Method)}
	}
}

// Interface guards
var (
	_ caddy.AdminRouter = adminAPI{}
	_ handlers.Bus      = (*App)(nil)
)
