package handlers

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"math"
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/ipcbus/caddy-ipcbus/events"
)

func init() {
	caddy.RegisterModule(new(Poll))
}

// Defaults of Poll.
const (
	DefaultPollTimeout = 30 * time.Second
	DefaultMaxTimeout  = 5 * time.Minute
	DefaultKeepAlive   = 15 * time.Second
	DefaultMaxStreams  = 10000
	DefaultPollLimit   = 100
	maxPollLimit       = 10000
)

// open counts this process's open long-polls and streams.
var open atomic.Int64

// Poll serves the events of the bus to HTTP clients, on GET.
//
// With `Accept: text/event-stream` it is a Server-Sent Events stream: each
// event is `id: <seq>`, `event: <name>`, and its payload exactly as posted
// as `data:` lines (one per line of the payload); a client that reconnects
// with Last-Event-ID resumes after that event; keep-alive comments flow
// while nothing happens; and when the client asks for events the ring no
// longer holds, an explicit `lost` event says how many
// (`{"from":SEQ,"count":N}`).
//
// Otherwise it is a long-poll answered in JSON,
// `{"events":[{"seq","source","event","data","pid","generation","time"}],"next":SEQ,"lost":N}`,
// at once when there are events after `since`, else when one arrives or
// after `timeout`. Without `since` it starts from now; `since=0` is
// everything the ring still holds. A JSON payload is embedded as JSON, any
// other as a string.
//
// Both end cleanly on Caddy's "stopping" event, so a reload or a stop
// never waits on them, and both count against max_streams (503 beyond).
type Poll struct {
	// Sources keeps only events of these sources; a trailing * matches a
	// prefix. Placeholders allowed. Default: the "source" query parameters
	// (several, or comma-separated); none means every source.
	Sources []string `json:"sources,omitempty"`
	// Events keeps only events of these names, like Sources. Default: the
	// "event" query parameters.
	Events []string `json:"events,omitempty"`
	// Timeout is how long a long-poll waits when no event comes, unless
	// the request's "timeout" parameter says otherwise. Default: 30s.
	Timeout caddy.Duration `json:"timeout,omitempty"`
	// MaxTimeout caps the "timeout" parameter. Default: 5m.
	MaxTimeout caddy.Duration `json:"max_timeout,omitempty"`
	// KeepAlive is how often a stream sends a comment while idle. Default: 15s.
	KeepAlive caddy.Duration `json:"keepalive,omitempty"`
	// MaxStreams bounds this process's open long-polls and streams (all
	// ipcbus_poll handlers together). Default: 10000.
	MaxStreams int `json:"max_streams,omitempty"`
	// Limit is the most events one long-poll answer carries (the "limit"
	// parameter may ask for fewer, or more up to 10000). Default: 100.
	Limit int `json:"limit,omitempty"`

	base
}

// CaddyModule returns the Caddy module information.
func (*Poll) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{ID: "http.handlers.ipcbus_poll", New: func() caddy.Module { return new(Poll) }}
}

// Provision sets defaults and finds the ipcbus app.
func (h *Poll) Provision(ctx caddy.Context) error {
	if h.Timeout == 0 {
		h.Timeout = caddy.Duration(DefaultPollTimeout)
	}
	if h.MaxTimeout == 0 {
		h.MaxTimeout = caddy.Duration(DefaultMaxTimeout)
	}
	if h.KeepAlive == 0 {
		h.KeepAlive = caddy.Duration(DefaultKeepAlive)
	}
	if h.MaxStreams == 0 {
		h.MaxStreams = DefaultMaxStreams
	}
	if h.Limit == 0 {
		h.Limit = DefaultPollLimit
	}
	return h.provision(ctx)
}

// Validate checks the configuration.
func (h *Poll) Validate() error {
	switch {
	case h.Timeout < 0 || h.MaxTimeout < 0 || h.KeepAlive < 0:
		return fmt.Errorf("ipcbus_poll: timeout, max_timeout and keepalive must be positive")
	case h.Timeout > h.MaxTimeout:
		return fmt.Errorf("ipcbus_poll: timeout %v is longer than max_timeout %v", time.Duration(h.Timeout), time.Duration(h.MaxTimeout))
	case h.MaxStreams < 0:
		return fmt.Errorf("ipcbus_poll: max_streams must be positive, was %d", h.MaxStreams)
	case h.Limit < 0 || h.Limit > maxPollLimit:
		return fmt.Errorf("ipcbus_poll: limit must be between 1 and %d, was %d", maxPollLimit, h.Limit)
	}
	return nil
}

// Cleanup ends the handler's streams.
func (h *Poll) Cleanup() error { h.cleanup(); return nil }

// filter keeps events whose source and name match the lists; none keeps
// nothing (configured filters whose placeholders came out empty).
type filter struct {
	sources, events []string
	none            bool
}

func match(patterns []string, s string) bool {
	if len(patterns) == 0 {
		return true
	}
	for _, p := range patterns {
		if p == s || (strings.HasSuffix(p, "*") && strings.HasPrefix(s, p[:len(p)-1])) {
			return true
		}
	}
	return false
}

func (f filter) keep(e *events.Event) bool { return f.match(e.Source, e.Name) }

func (f filter) match(source, name string) bool {
	return !f.none && match(f.sources, source) && match(f.events, name)
}

// ServeHTTP serves a stream or a long-poll.
func (h *Poll) ServeHTTP(w http.ResponseWriter, r *http.Request, _ caddyhttp.Handler) error {
	if !onlyMethod(w, r, http.MethodGet) {
		return nil
	}
	bus := h.app.Bus()
	if bus == nil {
		return writeError(w, http.StatusServiceUnavailable, errNotRunning)
	}
	if n := open.Add(1); n > int64(h.MaxStreams) {
		open.Add(-1)
		return writeError(w, http.StatusServiceUnavailable, fmt.Errorf("too many open polls and streams in this process (limit %d)", h.MaxStreams))
	}
	defer open.Add(-1)
	var f filter
	var noSources, noEvents bool
	f.sources, noSources = values(r, h.Sources, "source")
	f.events, noEvents = values(r, h.Events, "event")
	f.none = noSources || noEvents
	q := r.URL.Query()
	since := bus.Tail()
	if v := r.Header.Get("Last-Event-ID"); v != "" {
		id, err := strconv.ParseUint(v, 10, 64)
		if err != nil || id == math.MaxUint64 {
			return writeError(w, http.StatusBadRequest, fmt.Errorf("Last-Event-ID %q is not an event id", v))
		}
		since = id + 1
	} else if v := q.Get("since"); v != "" {
		s, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			return writeError(w, http.StatusBadRequest, fmt.Errorf("since=%q is not a sequence number", v))
		}
		since = s
	}
	if strings.Contains(r.Header.Get("Accept"), "text/event-stream") {
		return h.stream(w, r, bus, f, since)
	}
	timeout := time.Duration(h.Timeout)
	if v := q.Get("timeout"); v != "" {
		d, err := parseTimeout(v)
		if err != nil || d < 0 || d > time.Duration(h.MaxTimeout) || math.IsNaN(float64(d)) {
			return writeError(w, http.StatusBadRequest, fmt.Errorf("timeout=%q: give a duration (30s) or seconds (30), at most %v", v, time.Duration(h.MaxTimeout)))
		}
		timeout = d
	}
	limit := h.Limit
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > maxPollLimit {
			return writeError(w, http.StatusBadRequest, fmt.Errorf("limit=%q: must be a number from 1 to %d", v, maxPollLimit))
		}
		limit = n
	}
	return h.longPoll(w, r, bus, f, since, timeout, limit)
}

func parseTimeout(v string) (time.Duration, error) {
	if n, err := strconv.ParseFloat(v, 64); err == nil {
		if math.IsNaN(n) || math.IsInf(n, 0) {
			return 0, fmt.Errorf("not a number of seconds")
		}
		return time.Duration(n * float64(time.Second)), nil
	}
	return caddy.ParseDuration(v)
}

func (h *Poll) longPoll(w http.ResponseWriter, r *http.Request, bus *events.Bus, f filter, since uint64, timeout time.Duration, limit int) error {
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	page := EventsPage{Events: []EventJSON{}, Next: since}
	for {
		select { // checked on every round, not only when waiting
		case <-timer.C:
			return writeJSON(w, http.StatusOK, page)
		case <-r.Context().Done():
			return nil
		case <-h.stopping.Done():
			return writeJSON(w, http.StatusOK, page)
		default:
		}
		changed := bus.Changed()
		want := limit - len(page.Events)
		evs, next, lost := bus.RangeFunc(page.Next, want, f.match)
		progressed := next != page.Next
		page.Next, page.Lost = next, page.Lost+lost
		for i := range evs {
			page.Events = append(page.Events, NewEventJSON(&evs[i]))
		}
		if len(page.Events) > 0 || page.Lost > 0 {
			return writeJSON(w, http.StatusOK, page)
		}
		if progressed {
			continue // filtered records were skipped: there may be more to read
		}
		select {
		case <-changed:
		case <-timer.C:
			return writeJSON(w, http.StatusOK, page)
		case <-r.Context().Done():
			return nil
		case <-h.stopping.Done():
			return writeJSON(w, http.StatusOK, page)
		}
		if bus.Closed() {
			return writeJSON(w, http.StatusOK, page)
		}
	}
}

func (h *Poll) stream(w http.ResponseWriter, r *http.Request, bus *events.Bus, f filter, since uint64) error {
	rc := http.NewResponseController(w)
	hd := w.Header()
	hd.Set("Content-Type", "text/event-stream")
	hd.Set("Cache-Control", "no-cache")
	hd.Set("X-Accel-Buffering", "no")
	// A stream outlives any server write timeout; but a write to a client
	// that stopped reading must not hold up a stop or a reload.
	_ = rc.SetWriteDeadline(time.Time{})
	stop := context.AfterFunc(h.stopping, func() { _ = rc.SetWriteDeadline(time.Now()) })
	defer stop()
	w.WriteHeader(http.StatusOK)
	if err := rc.Flush(); err != nil {
		return nil // the headers are out: nothing else can be said
	}
	keep := time.NewTicker(time.Duration(h.KeepAlive))
	defer keep.Stop()
	var buf bytes.Buffer
	for {
		select { // checked on every round, not only when waiting
		case <-r.Context().Done():
			return nil
		case <-h.stopping.Done():
			return nil
		default:
		}
		changed := bus.Changed()
		evs, next, lost := bus.RangeFunc(since, 256, f.match)
		buf.Reset()
		if lost > 0 {
			l, _ := json.Marshal(events.Loss{From: since, Count: lost, Reason: "overrun"})
			fmt.Fprintf(&buf, "event: lost\ndata: %s\n\n", l)
		}
		for i := range evs {
			writeSSE(&buf, &evs[i])
		}
		progressed := next != since
		since = next
		if buf.Len() > 0 {
			if _, err := w.Write(buf.Bytes()); err != nil {
				return nil
			}
			if err := rc.Flush(); err != nil {
				return nil
			}
		}
		if progressed {
			continue
		}
		select {
		case <-changed:
		case <-keep.C:
			if _, err := w.Write([]byte(": keep-alive\n\n")); err != nil {
				return nil
			}
			if rc.Flush() != nil {
				return nil
			}
		case <-r.Context().Done():
			return nil
		case <-h.stopping.Done():
			return nil
		}
		if bus.Closed() {
			return nil
		}
	}
}

// writeSSE writes one event: its id, its name, and its payload as data
// lines, split only where it holds line breaks.
func writeSSE(buf *bytes.Buffer, e *events.Event) {
	fmt.Fprintf(buf, "id: %d\nevent: %s\n", e.Seq, strings.NewReplacer("\r", " ", "\n", " ").Replace(e.Name))
	data := e.Data
	for {
		i := bytes.IndexAny(data, "\r\n")
		if i < 0 {
			break
		}
		buf.WriteString("data: ")
		buf.Write(data[:i])
		buf.WriteByte('\n')
		if data[i] == '\r' && i+1 < len(data) && data[i+1] == '\n' {
			i++
		}
		data = data[i+1:]
	}
	buf.WriteString("data: ")
	buf.Write(data)
	buf.WriteString("\n\n")
}

// Interface guards
var (
	_ caddyhttp.MiddlewareHandler = (*Poll)(nil)
	_ caddy.Provisioner           = (*Poll)(nil)
	_ caddy.Validator             = (*Poll)(nil)
	_ caddy.CleanerUpper          = (*Poll)(nil)
)
