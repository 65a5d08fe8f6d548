// Package ipcbus is a Caddy app that joins every Caddy process on a host to
// one shared-memory zone: a worker table kept by heartbeats and kernel
// liveness locks, and the broadcast ring the event bus and IPC alerts ride
// on. See docs/configuration.md for the vocabulary and the configuration.
package ipcbus

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyevents"
	"go.uber.org/zap"

	"github.com/ipcbus/caddy-ipcbus/events"
	"github.com/ipcbus/caddy-ipcbus/fleet"
	"github.com/ipcbus/caddy-ipcbus/handlers"
	"github.com/ipcbus/caddy-ipcbus/ipc"
	"github.com/ipcbus/caddy-ipcbus/workermgr"
	"github.com/ipcbus/caddy-ipcbus/zone"
)

func init() {
	caddy.RegisterModule(new(App))
}

// App is the ipcbus app: one worker of the node on the configured zone.
// Every Caddy process on the host whose ipcbus app names the same zone (in
// the same directory) takes part in the same node. A config reload starts a
// new worker (the process's next generation) before the old one leaves; both
// share one mapping of the zone.
type App struct {
	// Zone names the shared-memory zone; processes with the same zone name
	// and directory form one node. Default: "default". Letters, digits, '.',
	// '_' and '-', at most 64.
	Zone string `json:"zone,omitempty"`

	// Dir is an absolute path to the directory in which the zone gets a
	// private directory, "ipcbus-<uid>" (mode 0700) or, with a group mode,
	// "ipcbus-g<gid>" (0770, for this process's effective user or group),
	// holding the zone file "<zone>.zone" and its blob files. Default:
	// /dev/shm, else $XDG_RUNTIME_DIR, else the OS temp dir. A private
	// directory owned by another user (or group), or open to more than its
	// mode, is refused at start.
	Dir string `json:"dir,omitempty"`

	// Size of the zone in bytes, from 1MiB to 64GiB. Default: 64MiB. Every
	// process of a node must use the same size; a zone is resized only by
	// stopping every process and removing its file.
	Size int64 `json:"size,omitempty"`

	// Mode is the octal file mode of a new zone file and of its blob files.
	// Default: "0600" (this user only). "0660" lets processes of other users
	// join, when every process of the node runs with the same effective
	// group (systemd's Group=): the zone then lives in "ipcbus-g<gid>".
	// Nothing for other users is allowed.
	Mode string `json:"mode,omitempty"`

	// Heartbeat is how often the worker stamps its heartbeat. Default: 1s.
	Heartbeat caddy.Duration `json:"heartbeat,omitempty"`

	// DeadAfter is how long a worker that is alive but silent may go before
	// the others count it as hung. Default: 5s. Must exceed heartbeat.
	// (A worker whose process dies is seen at once, through its liveness
	// lock, whatever this is.)
	DeadAfter caddy.Duration `json:"dead_after,omitempty"`

	// UniqueTimeout is how long a run-once ("unique") event key stays taken
	// after its first post: later posts of it are refused as duplicates.
	// Default: 2s.
	UniqueTimeout caddy.Duration `json:"unique_timeout,omitempty"`

	// MaxPayload is the largest event payload accepted, in bytes, up to
	// 4294967040. Default: 64MiB. Payloads over 64KiB travel in blob files
	// next to the zone file rather than in the ring.
	MaxPayload int64 `json:"max_payload,omitempty"`

	// BlobQuota bounds the bytes that the zone's blob files (the payloads
	// over 64KiB, kept a minute) may hold at once, over every process of
	// the node; a post or send beyond it fails (HTTP 507) and is counted.
	// Default: 256MiB, or max_payload if that is larger; never less than
	// max_payload. Give every process of a node the same.
	BlobQuota int64 `json:"blob_quota,omitempty"`

	// UniqueKeys is how many run-once keys (events posted with a unique
	// key) the zone holds at once, within unique_timeout: 256 to 1048576,
	// and their table (64 bytes a key) at most a quarter of the zone. Beyond
	// it a unique post fails (HTTP 503, Retry-After) and is counted.
	// Default: 4096. It is fixed when the zone is created: give every
	// process of a node the same, and remove the zone (caddy ipcbus rm) to
	// change it.
	UniqueKeys int `json:"unique_keys,omitempty"`

	// MaxStreams caps the long-polls and streams of all ipcbus_poll handlers
	// of this process together (each handler also has its own max_streams);
	// a request beyond it gets 503. Default: 10000, or the largest
	// max_streams of a configured ipcbus_poll if that is larger. When set,
	// it is the cap exactly.
	MaxStreams int64 `json:"max_streams,omitempty"`

	// WaitMax is how long a worker waits for an event whose poster reserved
	// it but has not finished writing it (it died, or stalled) before it
	// skips it as lost. Default: 500ms.
	WaitMax caddy.Duration `json:"wait_max,omitempty"`

	// Spin is how long, at most, the delivery goroutine keeps looking for
	// the next event, yielding the CPU between looks, before it sleeps on
	// the zone's futex. Default: 50µs. A window longer than the usual gap
	// between events gives microsecond latency for CPU. The window adapts:
	// it shrinks to nothing while sleeps last longer than it, and grows
	// back once events come sooner.
	Spin caddy.Duration `json:"spin,omitempty"`

	// SendTimeout bounds how long an IPC alert sender waits for a receiver
	// that has fallen too far behind before it gets an error. Default: 5s.
	SendTimeout caddy.Duration `json:"send_timeout,omitempty"`

	// AlertOverflow is what an alert sender does when a receiver has fallen
	// too far behind: "block" (wait up to send_timeout, then fail; the
	// default) or "drop" (fail at once; the alert is dropped and counted).
	AlertOverflow string `json:"alert_overflow,omitempty"`

	// Fleet joins the host's bus to a fleet of hosts through NATS
	// JetStream (see FleetConfig). Default: none, the bus stays on the host.
	Fleet *FleetConfig `json:"fleet,omitempty"`

	// OnAlert lists what this process does when it receives an IPC alert
	// (sent to its pid, or broadcast) whose name matches: reload its
	// config, log it, post it on the bus, or POST it to a webhook. Every
	// matching action runs, in order. See OnAlert.
	OnAlert []*OnAlert `json:"on_alert,omitempty"`

	// Emit puts received IPC alerts and bus events into Caddy's events
	// app (as "ipcbus_alert" and "ipcbus_event"), for Caddy's events
	// handler modules. See Emit.
	Emit *Emit `json:"emit,omitempty"`

	mode       os.FileMode
	ctx        caddy.Context
	events     *caddyevents.App
	emitEvents []eventPattern
	react      *reactions
	logger     *zap.Logger
	gen        int
	zone       *zone.Zone
	poolK      string
	worker     *workermgr.Worker
	bus        *events.Bus
	alerts     *ipc.IPC
	fleet      *fleet.Fleet
	mu         sync.Mutex

	// admin is the config's admin address as written, adminK its
	// normalized form for the worker table ("" when off or unknown).
	admin, adminK string
}

// CaddyModule returns the Caddy module information.
func (*App) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "ipcbus",
		New: func() caddy.Module { return new(App) },
	}
}

// Provision sets defaults. It joins nothing: `caddy validate` provisions too.
func (a *App) Provision(ctx caddy.Context) error {
	a.ctx = ctx
	a.logger = ctx.Logger()
	a.setDefaults()
	if addr, off, ok := configAdmin(ctx); ok && !off {
		a.admin, a.adminK = addr, adminKey(addr)
	} else if !ok {
		a.logger.Warn("the admin address of this config cannot be read: a clash with another process's admin address goes unchecked")
	}
	if a.Emit != nil {
		ev, err := ctx.App("events")
		if err != nil {
			return fmt.Errorf("loading the events app for emit: %w", err)
		}
		e, ok := ev.(*caddyevents.App)
		if !ok {
			return fmt.Errorf("emit: the events app is a %T, not Caddy's", ev)
		}
		a.events = e
	}
	if err := registerMetrics(ctx.GetMetricsRegistry()); err != nil {
		return fmt.Errorf("registering ipcbus metrics: %w", err)
	}
	a.mode = 0o600
	if a.Mode != "" {
		m, err := parseMode(a.Mode)
		if err != nil {
			return err
		}
		a.mode = m
	}
	return nil
}

// setDefaults fills in the settings left out.
func (a *App) setDefaults() {
	if a.Zone == "" {
		a.Zone = zone.DefaultName
	}
	if a.Size == 0 {
		a.Size = zone.DefaultSize
	}
	if a.Heartbeat == 0 {
		a.Heartbeat = caddy.Duration(workermgr.DefaultHeartbeat)
	}
	if a.DeadAfter == 0 {
		a.DeadAfter = caddy.Duration(workermgr.DefaultDeadAfter)
	}
	if a.MaxPayload == 0 {
		a.MaxPayload = events.DefaultMaxPayload
	}
	if a.BlobQuota == 0 {
		a.BlobQuota = max(zone.DefaultBlobQuota, a.MaxPayload)
	}
	for _, o := range a.OnAlert {
		if o != nil {
			o.setDefaults()
		}
	}
	if a.Emit != nil {
		a.Emit.setDefaults()
	}
}

// parseMode reads an octal zone file mode: owner read-write, the group at
// most read-write, nothing for others (the zone carries every message of the node).
func parseMode(s string) (os.FileMode, error) {
	m, err := strconv.ParseUint(s, 8, 32)
	if err != nil || m > 0o777 || m&0o600 != 0o600 || m&0o111 != 0 || m&0o007 != 0 {
		return 0, fmt.Errorf("invalid zone mode %q: give an octal file mode such as 0600 or 0660: readable and writable by its owner, no execute bits, nothing for other users", s)
	}
	return os.FileMode(m), nil
}

// Validate checks the configuration.
func (a *App) Validate() error {
	if err := zone.ValidateName(a.Zone); err != nil {
		return err
	}
	if err := zone.ValidateSize(a.Size); err != nil {
		return err
	}
	if a.Dir != "" && !filepath.IsAbs(a.Dir) {
		return fmt.Errorf("invalid dir %q: give an absolute path", a.Dir)
	}
	if a.Heartbeat <= 0 {
		return fmt.Errorf("invalid heartbeat %v: must be positive", time.Duration(a.Heartbeat))
	}
	if a.DeadAfter <= a.Heartbeat {
		return fmt.Errorf("invalid dead_after %v: must be longer than heartbeat (%v)", time.Duration(a.DeadAfter), time.Duration(a.Heartbeat))
	}
	if a.UniqueTimeout < 0 {
		return fmt.Errorf("invalid unique_timeout %v: must be positive", time.Duration(a.UniqueTimeout))
	}
	if a.MaxPayload < 0 || a.MaxPayload > events.MaxPayloadLimit {
		return fmt.Errorf("invalid max_payload %d: must be between 1 and %d bytes", a.MaxPayload, int64(events.MaxPayloadLimit))
	}
	if a.UniqueKeys != 0 {
		if err := zone.ValidateUniqueKeys(a.UniqueKeys, a.Size); err != nil {
			return err
		}
	}
	if a.MaxStreams < 0 {
		return fmt.Errorf("invalid max_streams %d: give a number of streams from 1 up, or leave it out for the default", a.MaxStreams)
	}
	if a.BlobQuota < a.MaxPayload {
		return fmt.Errorf("invalid blob_quota %d: it is smaller than max_payload (%d), so the largest payloads could never be posted; give at least %d bytes, or a smaller max_payload", a.BlobQuota, a.MaxPayload, a.MaxPayload)
	}
	if a.SendTimeout < 0 {
		return fmt.Errorf("invalid send_timeout %v: must be positive", time.Duration(a.SendTimeout))
	}
	if a.AlertOverflow != "" && a.AlertOverflow != "block" && a.AlertOverflow != "drop" {
		return fmt.Errorf("invalid alert_overflow %q: use block or drop", a.AlertOverflow)
	}
	if a.WaitMax < 0 || a.Spin < 0 {
		return fmt.Errorf("invalid wait_max %v or spin %v: must be positive", time.Duration(a.WaitMax), time.Duration(a.Spin))
	}
	if a.Fleet != nil {
		if _, err := a.Fleet.config(a); err != nil {
			return err
		}
	}
	for i, o := range a.OnAlert {
		if o == nil {
			return fmt.Errorf("on_alert %d is null: give an object with name and action", i)
		}
		if err := o.validate(i); err != nil {
			return err
		}
	}
	if a.Emit != nil {
		evs, err := a.Emit.validate()
		if err != nil {
			return err
		}
		a.emitEvents = evs
	}
	return nil
}

// generation numbers this process's workers: 1 for the first Start, then
// one more for each config load that starts the app. It is per process by
// nature (every config load is a new app instance), hence package-level.
var generation atomic.Int64

// zones shares one mapping of each zone file among the workers of this
// process, so that a reload's new worker attaches to the mapping the old
// one still uses.
var zones = caddy.NewUsagePool()

type pooledZone struct{ *zone.Zone }

func (p pooledZone) Destruct() error { return p.Close() }

// started lists this process's started apps, oldest first; the admin API
// uses the newest. (During a reload two are started; after a failed one the
// older stays.)
var started struct {
	sync.Mutex
	apps []*App
}

func setStarted(a *App, on bool) {
	started.Lock()
	defer started.Unlock()
	apps := started.apps[:0]
	for _, x := range started.apps {
		if x != a {
			apps = append(apps, x)
		}
	}
	if on {
		apps = append(apps, a)
	}
	started.apps = apps
}

// current is the newest started app of this process, or nil.
func current() *App {
	started.Lock()
	defer started.Unlock()
	if len(started.apps) == 0 {
		return nil
	}
	return started.apps[len(started.apps)-1]
}

// Start joins the zone as a new worker.
func (a *App) Start() (err error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	opts := zone.Options{Name: a.Zone, Dir: a.Dir, Size: a.Size, Mode: a.mode, BlobQuota: a.BlobQuota, UniqueKeys: a.UniqueKeys}
	a.poolK = zone.PathFor(opts)
	v, _, err := zones.LoadOrNew(a.poolK, func() (caddy.Destructor, error) {
		z, err := zone.Open(opts)
		if err != nil {
			return nil, err
		}
		if sq := zone.SquattedDirs(opts); len(sq) > 0 {
			a.logger.Warn("zone directory names held by another user or group were skipped: remove them, or set the ipcbus dir option to a directory only this user can write",
				zap.Strings("skipped", sq), zap.String("used", filepath.Dir(z.Path())))
		}
		return pooledZone{z}, nil
	})
	if err != nil {
		return err
	}
	// A failed step undoes the ones before it, in reverse order: one
	// deferred cleanup for every way out.
	var (
		bus    *events.Bus
		w      *workermgr.Worker
		alerts *ipc.IPC
	)
	defer func() {
		if err == nil {
			return
		}
		if alerts != nil {
			alerts.Close()
		}
		if w != nil {
			_ = w.Leave(workermgr.ReasonUnload)
		}
		if bus != nil {
			bus.Close(0)
		}
		_, _ = zones.Delete(a.poolK)
	}()
	z := v.(pooledZone).Zone
	if z.Size() != a.Size {
		return fmt.Errorf("zone %s is in use by this process with size %d; a reload cannot change the size to %d: restart the process (and every other process of the node) to resize", z.Path(), z.Size(), a.Size)
	}
	z.SetBlobQuota(a.BlobQuota) // a reload may change it
	handlers.SetProcessMaxStreams(a.MaxStreams)
	a.gen = int(generation.Add(1))
	if bus, err = events.New(events.Options{
		Zone: z, PID: os.Getpid(), Generation: a.gen,
		UniqueTimeout: time.Duration(a.UniqueTimeout), MaxPayload: a.MaxPayload,
		WaitMax: time.Duration(a.WaitMax), Spin: time.Duration(a.Spin),
		Logger: a.logger.Named("events"),
	}); err != nil {
		return err
	}
	onEvent := func(ev workermgr.Event) {
		postLifecycle(bus, ev, a.logger)
		if ev.Kind == workermgr.WorkerCrashed && ev.Reason == workermgr.ReasonCrash {
			countDiscarded(z, ev, a.logger)
		}
	}
	if w, err = workermgr.Join(z, workermgr.Config{
		Generation: a.gen,
		Heartbeat:  time.Duration(a.Heartbeat),
		DeadAfter:  time.Duration(a.DeadAfter),
		Logger:     a.logger,
		OnEvent:    onEvent,
		Admin:      a.adminK,
	}); err != nil {
		var clash *workermgr.AdminClashError
		if errors.As(err, &clash) {
			clash.Admin = a.admin
		}
		return err
	}
	bus.SetOnCursor(w.SetCursor)
	overflow := ipc.Block
	if a.AlertOverflow == "drop" {
		overflow = ipc.Drop
	}
	if alerts, err = ipc.New(ipc.Options{
		Zone: z, PID: os.Getpid(), Generation: a.gen,
		SendTimeout: time.Duration(a.SendTimeout), Overflow: overflow,
		WaitMax: time.Duration(a.WaitMax), Spin: time.Duration(a.Spin),
		Logger: a.logger.Named("ipc"),
	}); err != nil {
		return err
	}
	alerts.SetWorkerSlot(w.Slot())
	// The reactions observe before delivery starts, so that none of this
	// worker's alerts or events passes them by.
	react := a.newReactions(bus)
	alerts.SetObserver(react)
	defer func() {
		if err != nil {
			alerts.Close() // before the goroutines the observer feeds stop
			react.stop()
		}
	}()
	if err = alerts.Start(); err != nil {
		return err
	}
	if err = bus.Start(); err != nil {
		return err
	}
	if a.Fleet != nil {
		if a.fleet, err = a.startFleet(z, bus); err != nil {
			return err
		}
	}
	a.bus, a.alerts, a.react = bus, alerts, react
	a.zone, a.worker = z, w
	setStarted(a, true)
	a.logger.Info("joined zone", zap.String("zone", a.Zone), zap.String("path", z.Path()), zap.String("worker", w.ID()), zap.Int64("size", z.Size()))
	return nil
}

// Stop leaves the zone: reason shutdown when the process is exiting, else
// reload (a newer worker of this process runs), rollback or unload.
func (a *App) Stop() error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.worker == nil {
		return nil
	}
	reason := workermgr.ReasonAuto
	if caddy.Exiting() {
		reason = workermgr.ReasonShutdown
	}
	setStarted(a, false)
	a.stopFleet()
	// The bus posts "stopping" and handles what was posted before it; then
	// the worker leaves (its exit is posted for the others).
	_ = a.bus.Close(time.Second)
	_ = a.alerts.Close()
	// Nothing feeds the reactions any more: end their goroutines (a
	// webhook attempt under way is cancelled).
	a.react.stop()
	a.react = nil
	addEventStats(a.bus.Stats(), a.alerts.Stats())
	err := a.worker.Leave(reason)
	addStats(a.worker.Stats())
	// Nothing may touch the zone once the last reference to it goes (a
	// handler or the forwarder may still hold the bus or the endpoint).
	a.bus.Detach()
	a.alerts.Detach()
	a.bus, a.alerts = nil, nil
	a.worker = nil
	if _, derr := zones.Delete(a.poolK); err == nil {
		err = derr
	}
	a.zone = nil
	return err
}

// Bus is the events bus of the running worker, or nil when the app is not
// started. Go plugins use it to post and handle events on every worker of
// the node.
func (a *App) Bus() *events.Bus {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.bus
}

// MaxPayloadBytes is the configured largest event payload.
func (a *App) MaxPayloadBytes() int64 { return a.MaxPayload }

// IPC is the alerts endpoint of the running worker, or nil when the app
// is not started: send, broadcast and receive alerts between processes.
func (a *App) IPC() *ipc.IPC {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.alerts
}

// countDiscarded counts the alerts a crashed worker never read.
func countDiscarded(z *zone.Zone, ev workermgr.Event, log *zap.Logger) {
	n := ipc.Discarded(z, ev.PID, z.Worker(ev.Slot).AlertCursor.Load())
	z.Worker(ev.Slot).AlertCursor.Store(0)
	z.Worker(ev.Slot).SendWaiting.Store(0)
	if n > 0 {
		z.Node().AlertsDiscarded.Add(n)
		log.Warn("alerts to a crashed worker discarded", zap.String("worker", ev.ID), zap.Uint64("alerts", n))
	}
}

// postLifecycle posts a worker lifecycle event on the bus (source
// ipcbus.workers), so that every worker and poller sees it.
func postLifecycle(bus *events.Bus, ev workermgr.Event, log *zap.Logger) {
	if _, err := bus.Post(LifecycleSource, ev.Kind.String(), ev); err != nil {
		log.Error("posting a lifecycle event", zap.String("event", ev.Kind.String()), zap.Error(err))
	}
}

// LifecycleSource is the event source of worker lifecycle events.
const LifecycleSource = "ipcbus.workers"

// Cleanup leaves the zone if Stop never ran (a start that was rolled back
// half way).
func (a *App) Cleanup() error { return a.Stop() }

// Interface guards
var (
	_ caddy.App          = (*App)(nil)
	_ caddy.Provisioner  = (*App)(nil)
	_ caddy.Validator    = (*App)(nil)
	_ caddy.CleanerUpper = (*App)(nil)
)
