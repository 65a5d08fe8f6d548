package ipcbus

import (
	"encoding/json"
	"errors"
	"net/http"
	"os"
	"sync"

	"github.com/caddyserver/caddy/v2"

	"github.com/ipcbus/caddy-ipcbus/events"
	"github.com/ipcbus/caddy-ipcbus/ipc"
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
	}
}

// ZoneInfo names a zone in API answers.
type ZoneInfo struct {
	Name string `json:"name"`
	Path string `json:"path"`
	Size int64  `json:"size"`
}

// WorkersReport is the answer of GET /ipcbus/workers and of the CLI's --json.
type WorkersReport struct {
	Zone    ZoneInfo               `json:"zone"`
	Node    workermgr.NodeInfo     `json:"node"`
	Workers []workermgr.WorkerInfo `json:"workers"`
}

var errNotRunning = errors.New("ipcbus is not running in this process")

// runningGET checks that r is a GET and returns the running app, locked;
// the caller unlocks it.
func runningGET(r *http.Request) (*App, error) {
	if r.Method != http.MethodGet {
		return nil, caddy.APIError{HTTPStatus: http.StatusMethodNotAllowed, Err: errors.New("method not allowed: use GET")}
	}
	if a := current(); a != nil {
		a.mu.Lock()
		if a.worker != nil {
			return a, nil
		}
		a.mu.Unlock()
	}
	return nil, caddy.APIError{HTTPStatus: http.StatusServiceUnavailable, Err: errNotRunning}
}

func writeJSON(w http.ResponseWriter, v any) error {
	w.Header().Set("Content-Type", "application/json")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func handleWorkers(w http.ResponseWriter, r *http.Request) error {
	a, err := runningGET(r)
	if err != nil {
		return err
	}
	z, name := a.zone, a.Zone
	a.mu.Unlock()
	node, workers := workermgr.Snapshot(z)
	return writeJSON(w, WorkersReport{Zone: ZoneInfo{Name: name, Path: z.Path(), Size: z.Size()}, Node: node, Workers: workers})
}

// processStats accumulates the counters of this process's past workers.
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
	Ring   RingStats `json:"ring"`
}

// RingStats describes the zone's ring.
type RingStats struct {
	Tail        uint64 `json:"tail"`
	Slots       uint64 `json:"slots"`
	DataBytes   uint64 `json:"data_bytes"`
	Segments    int    `json:"segments"`
	SegmentSize int    `json:"segment_size"`
	MaxRecord   int    `json:"max_record"`
}

func handleStats(w http.ResponseWriter, r *http.Request) error {
	a, err := runningGET(r)
	if err != nil {
		return err
	}
	defer a.mu.Unlock()
	return writeJSON(w, a.statsLocked())
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
	ring := a.zone.Ring()
	rep.Ring = RingStats{Tail: ring.Tail(), Slots: ring.Slots(), DataBytes: ring.DataSize(), Segments: ring.Segments(),
		SegmentSize: ring.SegmentSize(), MaxRecord: ring.MaxRecord()}
	return rep
}

// Interface guards
var _ caddy.AdminRouter = adminAPI{}
