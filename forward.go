package ipcbus

import (
	"context"
	"encoding/json"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyevents"
	"go.uber.org/zap"

	"github.com/ipcbus/caddy-ipcbus/handlers"
)

func init() {
	caddy.RegisterModule(new(Forward))
}

// Forward is an event handler for Caddy's events app that puts Caddy's own
// events (cert_obtained, reverse_proxy's healthy/unhealthy, …) on the ipcbus
// events bus, so that every worker of the node, in every process, sees
// them. It never blocks the goroutine that emitted the event: events wait
// in a bounded queue, and when the queue is full they are dropped and
// counted.
//
// The bus event has the Caddy event's name, the configured source, and a
// JSON payload {"id","origin","time","data"}.
type Forward struct {
	// Source of the bus events. Default: "caddy". It is reserved: the HTTP
	// handlers refuse to post it, and stream it only where a route names it.
	Source string `json:"source,omitempty"`

	// QueueSize bounds the events waiting to be posted. Default: 1024.
	QueueSize int `json:"queue_size,omitempty"`

	q       chan forwarded
	stop    chan struct{}
	done    chan struct{}
	dropped atomic.Uint64
	logger  *zap.Logger
	release func()
	// app is the ipcbus app of the same config (ctx.App at Provision): the
	// one this forwarder's events go to, started or not yet.
	app *App
}

type forwarded struct {
	name string
	body []byte
}

// forwardedBody is the payload of a forwarded event.
type forwardedBody struct {
	ID     string         `json:"id"`
	Origin string         `json:"origin,omitempty"`
	Time   time.Time      `json:"time"`
	Data   map[string]any `json:"data,omitempty"`
}

// setDefaults fills in the documented defaults: source "caddy", a queue
// of 1024 events.
func (f *Forward) setDefaults() {
	if f.Source == "" {
		f.Source = handlers.DefaultForwardSource
	}
	if f.QueueSize <= 0 {
		f.QueueSize = 1024
	}
}

// CaddyModule returns the Caddy module information.
func (*Forward) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "events.handlers.ipcbus_forward",
		New: func() caddy.Module { return new(Forward) },
	}
}

// Provision loads the ipcbus app of the same config (with its defaults
// when the config has none) and starts the goroutine that posts queued
// events to it.
func (f *Forward) Provision(ctx caddy.Context) error {
	f.logger = ctx.Logger()
	f.setDefaults()
	a, err := ctx.App("ipcbus")
	if err != nil {
		return fmt.Errorf("loading the ipcbus app: %w", err)
	}
	app, ok := a.(*App)
	if !ok {
		return fmt.Errorf("the ipcbus app is a %T", a)
	}
	f.app = app
	f.release = handlers.ReserveSource(f.Source)
	f.q = make(chan forwarded, f.QueueSize)
	f.stop, f.done = make(chan struct{}), make(chan struct{})
	go f.run()
	return nil
}

func (f *Forward) run() {
	defer close(f.done)
	for {
		select {
		case <-f.stop:
			return
		case ev := <-f.q:
			bus := f.app.Bus()
			if bus == nil {
				f.drop(ev.name, "ipcbus is not running")
				continue
			}
			if _, err := bus.Post(f.Source, ev.name, json.RawMessage(ev.body)); err != nil {
				f.drop(ev.name, err.Error())
			}
		}
	}
}

func (f *Forward) drop(name, why string) {
	n := f.dropped.Add(1)
	if n&(n-1) == 0 { // log the 1st, 2nd, 4th, 8th… drop
		f.logger.Warn("dropped a Caddy event instead of forwarding it", zap.String("event", name), zap.String("why", why), zap.Uint64("dropped", n))
	}
}

// Handle queues the event; it never blocks. The events the ipcbus app
// emits (ipcbus_alert, ipcbus_event: see Emit) came from the bus or the
// alerts, and are not put back on the bus, which would loop.
func (f *Forward) Handle(_ context.Context, e caddy.Event) error {
	if _, ours := e.Origin().(*App); ours {
		return nil
	}
	body := forwardedBody{ID: e.ID().String(), Time: e.Timestamp(), Data: e.Data}
	if o := e.Origin(); o != nil {
		body.Origin = string(o.CaddyModule().ID)
	}
	b, err := json.Marshal(body)
	if err != nil {
		body.Data = map[string]any{"error": "data cannot be encoded as JSON: " + err.Error()}
		b, _ = json.Marshal(body)
	}
	select {
	case f.q <- forwarded{name: e.Name(), body: b}:
	default:
		f.drop(e.Name(), "queue full")
	}
	return nil
}

// Cleanup stops the posting goroutine.
func (f *Forward) Cleanup() error {
	if f.release != nil {
		f.release()
	}
	if f.stop != nil {
		close(f.stop)
		<-f.done
	}
	return nil
}

// Dropped is the number of events dropped so far.
func (f *Forward) Dropped() uint64 { return f.dropped.Load() }

// UnmarshalCaddyfile sets up the handler. Syntax (inside the events
// global option):
//
//	events {
//		on <event> ipcbus_forward [<source>]
//	}
func (f *Forward) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // the handler's name
	if d.NextArg() {
		f.Source = d.Val()
	}
	if d.NextArg() {
		return d.ArgErr()
	}
	return nil
}

// Interface guards
var (
	_ caddyevents.Handler   = (*Forward)(nil)
	_ caddy.Provisioner     = (*Forward)(nil)
	_ caddy.CleanerUpper    = (*Forward)(nil)
	_ caddyfile.Unmarshaler = (*Forward)(nil)
)
