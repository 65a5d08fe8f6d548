package ipcbus

import (
	"fmt"
	"strings"

	"github.com/ipcbus/caddy-ipcbus/handlers"
)

// Names of the events the ipcbus app emits into Caddy's events app.
const (
	// EmitAlertEvent is emitted for a received IPC alert that emit.alerts
	// matches.
	EmitAlertEvent = "ipcbus_alert"
	// EmitBusEvent is emitted for a bus event that emit.events matches.
	EmitBusEvent = "ipcbus_event"
)

// Defaults of Emit.
const (
	DefaultEmitQueue      = 1024
	DefaultEmitQueueBytes = 16 << 20
)

// Emit puts received IPC alerts and bus events into Caddy's own events
// app, so that any events handler module (events.handlers.*, such as
// exec) can act on them: `events { on ipcbus_alert exec … }`.
//
// A matching alert is emitted as "ipcbus_alert" with the data name, data
// (the alert's data as a string when it is UTF-8 text, else its base64
// with data_encoding "base64"), size, pid and generation (the sender's),
// broadcast and seq. A matching shared bus event is emitted as
// "ipcbus_event" with source, event, data (the same way), size, pid,
// generation (the poster's), seq, time and unique (if any). In an events
// handler they are placeholders like {event.data.name}.
//
// Caddy runs events handlers synchronously, in the goroutine that emits.
// So that a slow handler (exec waits for its command) never holds up the
// delivery of alerts and events, the app emits from a goroutine of its
// own, through a queue: events are emitted in the order they were
// received, one at a time; when the queue is full (queue_size events
// or queue_bytes of their data) an event is dropped and
// counted (emit_dropped in /ipcbus/stats). Queued events not yet emitted
// when the worker stops (a reload, an exit) are dropped too.
//
// The events this app emits are never forwarded back onto the bus by
// ipcbus_forward, whatever it is subscribed to.
type Emit struct {
	// Alerts lists the names of the alerts to emit: exact, or a prefix
	// ending in "*"; "*" is every alert.
	Alerts []string `json:"alerts,omitempty"`

	// Events lists the bus events to emit, each "<source>" (every event
	// of the source) or "<source>/<event>"; either part may be a prefix
	// ending in "*" ("*" is every source that is not reserved). The
	// reserved sources (ipcbus, ipcbus.* and those of ipcbus_forward,
	// "caddy" by default) match only a pattern that names them
	// ("ipcbus.workers", "ipcbus.*"), not "*". Events posted with
	// PostLocal are not emitted.
	Events []string `json:"events,omitempty"`

	// QueueSize bounds the alerts and events waiting to be emitted.
	// Default: 1024.
	QueueSize int `json:"queue_size,omitempty"`

	// QueueBytes bounds the data of the alerts and events waiting to be
	// emitted. Default: 16MiB.
	QueueBytes int64 `json:"queue_bytes,omitempty"`
}

// eventPattern is one entry of Emit.Events.
type eventPattern struct{ source, event string }

// parseEventPattern splits "<source>[/<event>]"; an absent event is "*".
func parseEventPattern(p string) (eventPattern, error) {
	src, ev, found := strings.Cut(p, "/")
	if !found {
		ev = "*"
	}
	for _, part := range []struct{ what, v string }{{"source", src}, {"event", ev}} {
		n := strings.TrimSuffix(part.v, "*")
		if part.v == "" || strings.Contains(n, "*") {
			return eventPattern{}, fmt.Errorf("emit events %q: give <source> or <source>/<event>, each a name or a prefix ending in * (the %s part is %q)", p, part.what, part.v)
		}
		if n != "" {
			if err := handlers.CheckName(part.what, n); err != nil {
				return eventPattern{}, fmt.Errorf("emit events %q: %w", p, err)
			}
		}
	}
	return eventPattern{source: src, event: ev}, nil
}

// matches reports whether a bus event matches the pattern, a reserved
// source only through a pattern that names it.
func (p eventPattern) matches(source, event string) bool {
	return handlers.SourceMatches(p.source, source) && matchName(p.event, event)
}

func (e *Emit) setDefaults() {
	if e.QueueSize == 0 {
		e.QueueSize = DefaultEmitQueue
	}
	if e.QueueBytes == 0 {
		e.QueueBytes = DefaultEmitQueueBytes
	}
}

// validate checks the patterns and returns the parsed event patterns.
func (e *Emit) validate() ([]eventPattern, error) {
	if len(e.Alerts) == 0 && len(e.Events) == 0 {
		return nil, fmt.Errorf("emit: give alerts, events or both; an empty emit emits nothing")
	}
	if e.QueueSize < 1 || e.QueueBytes < 1 {
		return nil, fmt.Errorf("emit queue_size %d, queue_bytes %d: both must be at least 1", e.QueueSize, e.QueueBytes)
	}
	for _, a := range e.Alerts {
		if err := checkAlertPattern("emit alerts", a); err != nil {
			return nil, err
		}
	}
	var out []eventPattern
	for _, s := range e.Events {
		p, err := parseEventPattern(s)
		if err != nil {
			return nil, err
		}
		out = append(out, p)
	}
	return out, nil
}
