package handlers

import (
	"bufio"
	"fmt"
	"math"
	"net/http"
	"os"
	"path"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"

	"github.com/ipcbus/caddy-ipcbus/events"
)

func init() {
	caddy.RegisterModule(new(Poll))
}

// HeaderPID is the response header in which ipcbus_poll names the pid of
// the process that serves the request.
const HeaderPID = "X-Ipcbus-Pid"

// processPID is this process's pid, for HeaderPID.
var processPID = strconv.Itoa(os.Getpid())

// Defaults of Poll.
const (
	DefaultPollTimeout  = 30 * time.Second
	DefaultMaxTimeout   = 5 * time.Minute
	DefaultKeepAlive    = 15 * time.Second
	DefaultMaxStreams   = 10000
	DefaultPollLimit    = 100
	DefaultMaxBytes     = 1 << 20
	DefaultWriteTimeout = 10 * time.Second
	// MaxPollLimit is the largest limit a config may set.
	MaxPollLimit = 10000
	// MaxStreamWriters is the largest stream_writers a config may set.
	MaxStreamWriters = 64
	// sseBatch is the most events a stream writes between two flushes.
	sseBatch = 256
)

// Poll serves the events of the bus to HTTP clients, on GET (HEAD answers
// the same headers without waiting or a body).
//
// With `Accept: text/event-stream` it is a Server-Sent Events stream: each
// event is `id: <seq>`, `event: <name>`, and its payload exactly as posted
// as `data:` lines (one per line of the payload), or with envelope the
// event's JSON object as in the long-poll (its source included); a client
// that reconnects with Last-Event-ID resumes after that event; keep-alive
// comments flow while nothing happens; and when the client asks for events
// the ring no longer holds, the notice `event: ipcbus.lost` says how many
// (`{"from":SEQ,"count":N,"reason":"overrun"}`); publishers cannot post
// that name. A client that takes no write for write_timeout is dropped.
//
// With `Upgrade: websocket` (a GET of HTTP/1.1) it is a WebSocket
// carrying the same events, one message per event: the payload as posted
// in a text message, or in a binary message when it is neither JSON nor
// UTF-8 text; with envelope, the event's JSON object (as in the
// long-poll: seq, source, event, data, pid, generation, time, node…) in a
// text message, binary payloads in base64. Events the ring no longer
// holds are announced by the text message
// {"event":"ipcbus.lost","data":{"from":SEQ,"count":N,"reason":"overrun"}}.
// It starts at `since` (or after a Last-Event-ID header, for clients
// that can send one), else now; the client is pinged every
// ping_interval, and dropped when it does not answer or take a message
// within write_timeout. With publish, the client may post events on the
// socket (see Publish). A stop or a reload ends it with close status 1001
// (going away), and cuts a connection that has not closed a second later.
// Only pages of the route's own host may open one, unless origins says
// otherwise.
//
// Otherwise it is a long-poll answered in JSON,
// `{"events":[{"seq","source","event","data","pid","generation","time"}],"next":SEQ,"lost":N}`,
// at once when there are events after `since`, else when one arrives or
// after `timeout` (0: at once). Without `since` it starts from now;
// `since=0` is everything the ring still holds. A JSON payload is embedded
// as JSON, valid UTF-8 text as a string, anything else as the string of its
// base64 with "data_encoding":"base64". An answer holds at most `limit`
// events and about `max_bytes` of payload (the first event whatever its
// size), read and written one at a time. In both, a payload in a blob file
// (over 64 KiB) is written from the file 64 KiB at a time, never held
// whole, and max_bytes counts its size.
//
// The reserved sources (ipcbus, ipcbus.*, and those of ipcbus_forward,
// "caddy" by default) are served only where the configured sources name
// them explicitly ("ipcbus.workers", "ipcbus.*", "caddy"; not "*", and
// not through a placeholder or the query).
//
// Every answer carries the header X-Ipcbus-Pid: the pid of the Caddy
// process that serves it, so that a client (the live page) can show which
// process of the node it is connected to.
//
// All three end cleanly on Caddy's "stopping" event, so a reload or a
// stop never waits on them, and all count against max_streams and the
// process-wide cap (503 beyond, before a WebSocket is upgraded).
type Poll struct {
	// Sources keeps only events of these sources; a trailing * matches a
	// prefix. Placeholders allowed. Default: the "source" query parameters
	// (several, or comma-separated); none means every source that is not
	// reserved.
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
	// MaxStreams bounds the open long-polls and streams of this handler
	// (503 beyond). Default: 10000. A process-wide cap holds for all
	// handlers together: 10000, or the largest max_streams of a handler
	// if larger (see DefaultProcessMaxStreams).
	MaxStreams int `json:"max_streams,omitempty"`
	// Limit is the most events one long-poll answer carries; the "limit"
	// parameter may only ask for fewer. Default: 100, at most 10000.
	Limit int `json:"limit,omitempty"`
	// MaxBytes bounds the payload bytes of one long-poll answer and of
	// one stream write between flushes; an answer always carries at least
	// one event, whatever its size. Default: 1MiB.
	MaxBytes int64 `json:"max_bytes,omitempty"`
	// WriteTimeout is how long a write to a client may take: a client that
	// does not read for that long is dropped (and counted in the stats).
	// It replaces the server's write timeout for streams and long-polls.
	// Default: 10s.
	WriteTimeout caddy.Duration `json:"write_timeout,omitempty"`
	// Envelope makes each stream event's data the event's JSON object, as
	// in the long-poll (seq, source, event, data, pid, generation, time),
	// so that a client can tell sources apart and binary payloads arrive
	// whole (in base64). The `event:` field stays the event's name.
	Envelope bool `json:"envelope,omitempty"`
	// Alerts makes the handler serve the IPC alerts addressed to this
	// process (sent to its pid, or broadcast to every process) whose name
	// matches one of these (exact, or a prefix ending in *; "*" for
	// every alert), instead of bus events: sources and events must then
	// be empty. The request's "name" parameters (several, or
	// comma-separated, patterns the same way) narrow them further.
	// Streams and long-polls work as for events (since, Last-Event-ID,
	// ipcbus.lost, the same limits), each alert written as the JSON
	// object {"seq","name","data","data_encoding"?,"pid","generation",
	// "time","broadcast"}: pid and generation are the sender's, data its
	// text as a string, or base64 with "data_encoding":"base64" when it
	// is not UTF-8. A stream frame is `id: <seq>`, `event: <name>`,
	// `data: <that object>`; a long-poll answers
	// {"alerts":[…],"next":SEQ,"lost":N}. Serving an alert does not
	// handle it in Go (its handler still runs), but an alert a configured
	// handler streams counts as received, not unhandled.
	Alerts []string `json:"alerts,omitempty"`
	// PingInterval is how often a WebSocket is pinged; a client that
	// does not answer within write_timeout is dropped. Default: 15s.
	PingInterval caddy.Duration `json:"ping_interval,omitempty"`
	// Publish lets WebSocket clients post events on the socket, as
	// ipcbus_broadcast does: a text message
	// {"source","event","data","data_encoding"?,"unique"?,"id"?} is
	// answered {"seq":N} or {"error":"…","status":CODE}, with the id of
	// the message if it had one. Not with alerts.
	Publish bool `json:"publish,omitempty"`
	// MaxSize is, with publish, the largest message a WebSocket client
	// may send (its JSON whole); a larger one ends the socket with close
	// status 1009. Default: 1MiB; at most the app's max_payload.
	MaxSize int64 `json:"max_size,omitempty"`
	// Origins are the host patterns (path.Match, like
	// "*.example.com") of the other origins whose pages may open a
	// WebSocket; by default only pages of the route's own host may.
	Origins []string `json:"origins,omitempty"`
	// StreamWriters is how many goroutines write the Server-Sent Events
	// of the handler's HTTP/1.1 streams without TLS (cleartext, as behind
	// a proxy or on a local network) once they have caught up: each event
	// is then written to every stream with one write(2) on its socket,
	// and a stream whose socket is full, or that falls behind, goes back
	// to its own goroutine (and the usual write_timeout) until it has
	// caught up again. The connection of such a stream is taken over
	// from the HTTP server (hijacked), so it is not reused after the
	// stream (the answer says Connection: close), and the access log
	// shows a size of 0 for it. Default:
	// one per two cores, at least 1, at most 4; -1 (Caddyfile: off) leaves every stream to
	// its own goroutine. HTTP/2, HTTP/3, TLS, WebSocket, alerts, and a
	// response another handler compresses are always written by their
	// own goroutine.
	StreamWriters int `json:"stream_writers,omitempty"`

	base
	hub     hub
	cache   readCache
	limit   int64 // max_size, capped by the app's max_payload
	open    atomic.Int64
	logger  *zap.Logger
	uncount func()
	unwatch func()
}

// CaddyModule returns the Caddy module information.
func (*Poll) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{ID: "http.handlers.ipcbus_poll", New: func() caddy.Module { return new(Poll) }}
}

// Provision sets defaults and finds the ipcbus app.
func (h *Poll) Provision(ctx caddy.Context) error {
	h.logger = ctx.Logger()
	h.setDefaults()
	h.uncount = countHandler(int64(h.MaxStreams))
	if len(h.Alerts) > 0 {
		h.unwatch = watchAlerts(h.Alerts)
	}
	if err := h.provision(ctx); err != nil {
		return err
	}
	h.limit = bodyLimit(h.MaxSize, h.app.MaxPayloadBytes())
	return nil
}

func (h *Poll) setDefaults() {
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
	if h.MaxBytes == 0 {
		h.MaxBytes = DefaultMaxBytes
	}
	if h.WriteTimeout == 0 {
		h.WriteTimeout = caddy.Duration(DefaultWriteTimeout)
	}
	if h.PingInterval == 0 {
		h.PingInterval = caddy.Duration(DefaultPingInterval)
	}
}

// Validate checks the configuration.
func (h *Poll) Validate() error {
	switch {
	case h.Timeout < 0 || h.MaxTimeout < 0 || h.KeepAlive < 0 || h.WriteTimeout < 0 || h.PingInterval < 0:
		return fmt.Errorf("ipcbus_poll: timeout, max_timeout, keepalive, write_timeout and ping_interval must be positive")
	case h.Publish && len(h.Alerts) > 0:
		return fmt.Errorf("ipcbus_poll: publish posts events, and alerts serves IPC alerts: serve them on two routes")
	case h.MaxSize != 0 && !h.Publish:
		return fmt.Errorf("ipcbus_poll: max_size bounds what WebSocket clients publish: it needs publish")
	case h.Timeout > h.MaxTimeout:
		return fmt.Errorf("ipcbus_poll: timeout %v is longer than max_timeout %v", time.Duration(h.Timeout), time.Duration(h.MaxTimeout))
	case h.MaxStreams < 0:
		return fmt.Errorf("ipcbus_poll: max_streams must be positive, was %d", h.MaxStreams)
	case h.Limit < 0 || h.Limit > MaxPollLimit:
		return fmt.Errorf("ipcbus_poll: limit must be between 1 and %d, was %d", MaxPollLimit, h.Limit)
	case h.MaxBytes < 0:
		return fmt.Errorf("ipcbus_poll: max_bytes must be positive, was %d", h.MaxBytes)
	case h.StreamWriters < -1 || h.StreamWriters > MaxStreamWriters:
		return fmt.Errorf("ipcbus_poll: stream_writers must be -1 (off) or from 1 to %d, was %d", MaxStreamWriters, h.StreamWriters)
	case len(h.Alerts) > 0 && (len(h.Sources) > 0 || len(h.Events) > 0 || h.Envelope):
		return fmt.Errorf("ipcbus_poll: alerts serves IPC alerts, which have a name but no source or event (and always come as JSON objects): leave sources, events and envelope out, or serve events on another route")
	}
	for _, o := range h.Origins {
		if _, err := path.Match(o, ""); err != nil {
			return fmt.Errorf("ipcbus_poll origins: %q is not a host pattern: %w", o, err)
		}
	}
	for _, p := range h.Alerts {
		if err := checkAlertPattern(p); err != nil {
			return fmt.Errorf("ipcbus_poll alerts: %w", err)
		}
	}
	return checkMaxSize("ipcbus_poll", h.MaxSize, h.app)
}

// Cleanup ends the handler's streams.
func (h *Poll) Cleanup() error {
	if h.uncount != nil {
		h.uncount()
	}
	if h.unwatch != nil {
		h.unwatch()
	}
	h.cleanup()
	return nil
}

// filter keeps events whose source and name match the lists; none keeps
// nothing (configured filters whose placeholders came out empty). A
// reserved source passes only through one of the configured patterns
// that names it explicitly.
type filter struct {
	sources, events []string
	none            bool
	configured      []string
}

func match(patterns []string, s string) bool {
	if len(patterns) == 0 {
		return true
	}
	for _, p := range patterns {
		if events.Matches(p, s) {
			return true
		}
	}
	return false
}

func (f filter) keep(e *events.Event) bool { return f.match(e.Source, e.Name) }

func (f filter) match(source, name string) bool {
	if f.none || !match(f.sources, source) || !match(f.events, name) {
		return false
	}
	if root := reservedRoot(source); root != "" {
		for _, p := range f.configured {
			if explicitFor(p, source, root) {
				return true
			}
		}
		return false
	}
	return true
}

func (h *Poll) filter(r *http.Request) filter {
	f := filter{configured: h.Sources}
	var noSources, noEvents bool
	f.sources, noSources = values(r, h.Sources, "source")
	f.events, noEvents = values(r, h.Events, "event")
	f.none = noSources || noEvents
	return f
}

// ServeHTTP serves a stream or a long-poll.
func (h *Poll) ServeHTTP(w http.ResponseWriter, r *http.Request, _ caddyhttp.Handler) error {
	w.Header().Add("Vary", "Accept")
	w.Header().Set(HeaderPID, processPID)
	if !allow(w, r, http.MethodGet, http.MethodHead) {
		return nil
	}
	if err := h.checkPatterns(r); err != nil {
		writeError(w, r, err)
		return nil
	}
	p, key, tail := h.feed(r)
	if p == nil {
		writeError(w, r, httpErr(http.StatusServiceUnavailable, errNotRunning))
		return nil
	}
	since, err := h.since(r, tail)
	if err != nil {
		writeError(w, r, err)
		return nil
	}
	ws := isWebSocket(r)
	stream := ws || strings.Contains(r.Header.Get("Accept"), "text/event-stream")
	timeout, limit := time.Duration(h.Timeout), h.Limit
	if !stream {
		if v := queryGet(r.URL.RawQuery, "timeout"); v != "" {
			d, err := parseTimeout(v)
			if err != nil || d < 0 || d > time.Duration(h.MaxTimeout) {
				writeError(w, r, httpErr(http.StatusBadRequest, fmt.Errorf("timeout=%q: give a duration (30s) or seconds (30), from 0 to %v", v, time.Duration(h.MaxTimeout))))
				return nil
			}
			timeout = d
		}
		if v := queryGet(r.URL.RawQuery, "limit"); v != "" {
			n, err := strconv.Atoi(v)
			if err != nil || n < 1 {
				writeError(w, r, httpErr(http.StatusBadRequest, fmt.Errorf("limit=%q: give a number of events from 1 (answers carry at most %d)", v, h.Limit)))
				return nil
			}
			limit = min(n, h.Limit)
		}
	}
	if r.Method == http.MethodHead {
		h.headers(w, stream)
		w.WriteHeader(http.StatusOK)
		return nil
	}
	if !acquire(&h.open, int64(h.MaxStreams)) {
		writeError(w, r, httpErr(http.StatusServiceUnavailable, fmt.Errorf("too many open polls and streams (limit %d for this route, %d for the process)", h.MaxStreams, ProcessMaxStreams())))
		return nil
	}
	defer release(&h.open)
	if ws && r.Method == http.MethodGet {
		h.websocket(w, r, p, h.Envelope || len(h.Alerts) > 0, since)
		return nil
	}
	if stream {
		h.stream(w, r, p, h.Envelope || len(h.Alerts) > 0, since)
		return nil
	}
	h.longPoll(w, r, p, key, since, timeout, limit)
	return nil
}

// since is where the answer starts: after Last-Event-ID, at the since
// parameter, else at the ring's tail (now).
func (h *Poll) since(r *http.Request, tail func() uint64) (uint64, *Error) {
	if v := r.Header.Get("Last-Event-ID"); v != "" {
		id, err := strconv.ParseUint(v, 10, 64)
		if err != nil || id == math.MaxUint64 {
			return 0, httpErr(http.StatusBadRequest, fmt.Errorf("Last-Event-ID %q is not an event id", v))
		}
		return id + 1, nil
	}
	if v := queryGet(r.URL.RawQuery, "since"); v != "" {
		s, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			return 0, httpErr(http.StatusBadRequest, fmt.Errorf("since=%q is not a sequence number", v))
		}
		return s, nil
	}
	return tail(), nil
}

func (h *Poll) headers(w http.ResponseWriter, stream bool) {
	hd := w.Header()
	hd.Set("Cache-Control", "no-store")
	if stream {
		hd.Set("Content-Type", "text/event-stream")
		hd.Set("X-Accel-Buffering", "no")
	} else {
		hd.Set("Content-Type", "application/json")
	}
}

func parseTimeout(v string) (time.Duration, error) {
	if n, err := strconv.ParseFloat(v, 64); err == nil {
		if math.IsNaN(n) || math.IsInf(n, 0) || n*float64(time.Second) > math.MaxInt64 {
			return 0, fmt.Errorf("not a number of seconds")
		}
		return time.Duration(n * float64(time.Second)), nil
	}
	return caddy.ParseDuration(v)
}

// feed is what a page or a stream reads: the bus's events (reader) or
// the alerts to this process (alertReader).
type feed interface {
	// read returns the next item after since (nil if none yet; the
	// caller closes it), the sequence to read next, and how many were lost.
	read(since uint64) (*event, uint64, uint64)
	// changed is closed when there may be more to read: take it before
	// read, wait on it after a read that found nothing.
	changed() <-chan struct{}
	// closed reports that nothing more will come (the worker stopped).
	closed() bool
}

// reader reads a bus one event at a time, a payload in a blob file as its
// open file (events.Bus.RangeRefs), so that a request holds at most one
// payload at once, and never a large one whole.
type reader struct {
	bus  *events.Bus
	keep func(source, name string) bool
	// cache, when set, is the handler's: events read once for all its
	// streams, and their frames encoded once (with envelope or not).
	cache    *readCache
	envelope bool
}

func (p reader) changed() <-chan struct{} { return p.bus.Changed() }
func (p reader) closed() bool             { return p.bus.Closed() }

// read returns the next event after since (nil if none yet; the caller
// closes it), the sequence to read next, and how many events were lost
// (a blob removed before it could be opened among them).
func (p reader) read(since uint64) (*event, uint64, uint64) {
	if p.cache != nil {
		return p.cache.read(p, since)
	}
	return p.readDirect(since)
}

// readDirect is read from the ring itself.
func (p reader) readDirect(since uint64) (*event, uint64, uint64) {
	return readOne(since, func(from uint64) ([]events.Event, uint64, uint64) { return p.bus.RangeRefs(from, 1, p.keep) }, openEvent)
}

// readOne reads one item at a time with rng from since on, and opens the
// first it finds with open: the item (nil if none yet), the sequence to
// read next, and how many were lost (one that fails to open, its blob
// removed since rng saw it, among them).
func readOne[T any](since uint64, rng func(uint64) ([]T, uint64, uint64), open func(*T) (*event, error)) (*event, uint64, uint64) {
	var lost uint64
	for {
		items, next, l := rng(since)
		lost += l
		if len(items) == 0 {
			return nil, next, lost
		}
		ev, err := open(&items[0])
		if err == nil {
			return ev, next, lost
		}
		lost++
		since = next
	}
}

// pageBufSize is the buffer of a page being written: a page that fits
// goes out in one write.
const pageBufSize = 16 << 10

// pageBufs are the buffers of pages being written, kept between
// requests: a long-poll answer is written at every event.
var pageBufs = sync.Pool{New: func() any { return bufio.NewWriterSize(nil, pageBufSize) }}

// writePage writes a page, {"<key>":[…],"next":N,"lost":L} (key is
// "events", or "alerts"), one event at a time, into bw, whose owner
// flushes it: first (if any), then what
// p reads from next on, until limit
// events, about maxBytes of payload (an event that would pass it waits
// for the next page, unless it is the first), or the end of the ring.
// It closes the events it writes or leaves.
func writePage(bw *bufio.Writer, p feed, key string, first *event, next, lost uint64, limit int, maxBytes int64) error {
	bw.WriteString(`{"` + key + `":[`)
	n, size := 0, int64(0)
	for ev := first; ev != nil; {
		if n > 0 && size+ev.size() > maxBytes {
			ev.close()
			next = ev.Seq // read again by the next page
			break
		}
		if n > 0 {
			bw.WriteByte(',')
		}
		var err error
		if j := ev.cachedJSON(); j != nil {
			bw.Write(j)
		} else {
			err = writeEventJSON(bw, ev)
		}
		ev.close()
		if err != nil {
			return err
		}
		n++
		size += ev.size()
		if n >= limit || size >= maxBytes {
			break
		}
		var l uint64
		ev, next, l = p.read(next)
		lost += l
	}
	b := strconv.AppendUint(append(bw.AvailableBuffer(), `],"next":`...), next, 10)
	b = append(b, `,"lost":`...)
	b = strconv.AppendUint(b, lost, 10)
	b = append(b, "}\n"...)
	_, err := bw.Write(b)
	return err
}

// WritePage answers with a page of the events after since, as GET
// /ipcbus/events does: at most limit events and about maxBytes of payload
// (at least one event), read and written one at a time, a payload in a
// blob file streamed from the file.
func WritePage(w http.ResponseWriter, bus *events.Bus, since uint64, limit int, maxBytes int64) error {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	p := reader{bus: bus}
	ev, next, lost := p.read(since)
	bw := pageBufs.Get().(*bufio.Writer)
	bw.Reset(w)
	defer func() { bw.Reset(nil); pageBufs.Put(bw) }()
	if err := writePage(bw, p, "events", ev, next, lost, limit, maxBytes); err != nil {
		return err
	}
	return bw.Flush()
}

func (h *Poll) longPoll(w http.ResponseWriter, r *http.Request, p feed, key string, since uint64, timeout time.Duration, limit int) {
	h.headers(w, false)
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	var ev *event
	var lost uint64
	woken := false // by a change: others may have been too
	answer := func() {
		out := pageOut{w: w, dw: deadlineWriter{w: pastIdleWriter(w, r), timeout: time.Duration(h.WriteTimeout)}}
		out.dw.rc = http.NewResponseController(out.dw.w)
		dw := &out.dw
		if err := out.write(p, key, ev, since, lost, limit, h.MaxBytes); err != nil && dw.err == nil {
			// not the client: a payload that could not be read
			h.logger.Warn("a long-poll answer was cut short: an event's payload could not be read", zap.Error(err))
		}
		if dw.dropped() {
			h.logger.Debug("dropped a long-poll client that did not read", zap.String("remote", r.RemoteAddr), zap.Duration("write_timeout", time.Duration(h.WriteTimeout)))
		}
	}
	for {
		changed := p.changed()
		var next uint64
		ev, next, lost = p.read(since)
		progressed := next != since
		since = next
		if ev != nil || lost > 0 || p.closed() {
			answer()
			if woken {
				// An event wakes every long-poll waiting for it at once:
				// let the others write their answers before this one
				// finishes its request (the server's and Caddy's work
				// after the handler), so that its tail does not delay them.
				runtime.Gosched()
			}
			return
		}
		select { // after the read, so that timeout=0 answers what is there
		case <-timer.C:
			answer()
			return
		case <-r.Context().Done():
			return // the client went away: no answer, no error
		case <-h.stopping.Done():
			answer()
			return
		default:
		}
		if progressed {
			continue // filtered records were skipped: there may be more to read
		}
		select {
		case <-changed:
			woken = true
		case <-timer.C:
			answer()
			return
		case <-r.Context().Done():
			return
		case <-h.stopping.Done():
			answer()
			return
		}
	}
}

// pageOut writes a long-poll answer: held in a buffer while it is
// small, so that it goes out in one write with its Content-Length (the
// usual answer: one syscall, no chunk to end it); a page that passes the
// buffer streams (chunked) from there, its payloads a piece at a time.
// Every write is bounded by dw's deadline (write_timeout).
type pageOut struct {
	w       http.ResponseWriter
	dw      deadlineWriter
	last    bool // the flush of the page's end: the whole page when nothing went out before
	started bool // the header is out
}

// write answers the page (see writePage) and flushes it.
func (o *pageOut) write(p feed, key string, first *event, next, lost uint64, limit int, maxBytes int64) error {
	bw := pageBufs.Get().(*bufio.Writer)
	bw.Reset(o)
	defer func() { bw.Reset(nil); pageBufs.Put(bw) }()
	err := writePage(bw, p, key, first, next, lost, limit, maxBytes)
	if err == nil {
		o.last = true
		err = bw.Flush()
	}
	if !o.started { // cut short before anything went out: the status still goes
		o.started = true
		o.w.WriteHeader(http.StatusOK)
	}
	if err == nil {
		err = o.dw.Flush()
	}
	if o.dw.err == nil {
		o.dw.arm() // what the server writes after the handler (the end of a chunked body) is bounded too
	}
	return err
}

func (o *pageOut) Write(b []byte) (int, error) {
	if !o.started {
		o.started = true
		if o.last {
			o.w.Header().Set("Content-Length", strconv.Itoa(len(b)))
		}
		o.w.WriteHeader(http.StatusOK)
	}
	return o.dw.Write(b)
}

func (h *Poll) stream(w http.ResponseWriter, r *http.Request, p feed, envelope bool, since uint64) {
	h.headers(w, true)
	shared := h.sharedWriters(r, p)
	if shared {
		w.Header().Set("Connection", "close") // taken over below: not reused after the stream
	}
	dw, done := newDeadlineWriter(pastIdleWriter(w, r), time.Duration(h.WriteTimeout), h.stopping)
	w.WriteHeader(http.StatusOK)
	if dw.Flush() != nil {
		done()
		return // the headers are out: nothing else can be said
	}
	if shared && hijackable(w) {
		done() // before the hijack, which clears the deadlines it leaves
		c, _, err := http.NewResponseController(w).Hijack()
		if err == nil {
			h.streamConn(c, p.(reader), since)
			return
		}
		h.logger.Debug("a stream's connection could not be taken over: it writes itself", zap.Error(err))
		dw, done = newDeadlineWriter(pastIdleWriter(w, r), time.Duration(h.WriteTimeout), h.stopping)
	}
	defer done()
	defer func() {
		if dw.dropped() {
			h.logger.Debug("dropped a stream client that did not read", zap.String("remote", r.RemoteAddr), zap.Duration("write_timeout", time.Duration(h.WriteTimeout)))
		}
	}()
	bw := bufio.NewWriterSize(dw, 4<<10) // held as long as the stream: small; large payloads go past it
	keep := time.NewTicker(time.Duration(h.KeepAlive))
	defer keep.Stop()
	h.follow(r.Context(), p, &since, &sseSink{h: h, bw: bw, dw: dw, envelope: envelope}, keep.C, false)
}

// sseSink writes a stream as Server-Sent Events.
type sseSink struct {
	h        *Poll
	bw       *bufio.Writer
	dw       interface{ Flush() error } // what bw writes to
	envelope bool
	pending  bool // events written since the last flush
}

func (s *sseSink) event(ev *event) error {
	if ev.cached != nil && ev.cached.frameEnvelope == s.envelope {
		if f := ev.cached.sseFrame(); f != nil {
			s.bw.Write(f)
			s.pending = true
			return nil
		}
	}
	if err := writeSSE(s.bw, ev, s.envelope); err != nil {
		s.h.logger.Warn("ending a stream: an event's payload could not be read", zap.Uint64("seq", ev.Seq), zap.Error(err))
		return err
	}
	s.pending = true
	return nil
}

func (s *sseSink) lost(from, count uint64) error {
	writeLost(s.bw, from, count)
	return nil
}

func (s *sseSink) flush() error {
	if s.bw.Buffered() == 0 && !s.pending {
		return nil
	}
	s.pending = false
	if err := s.bw.Flush(); err != nil {
		return err
	}
	return s.dw.Flush()
}

func (s *sseSink) idle() error {
	s.bw.WriteString(": keep-alive\n\n")
	if err := s.bw.Flush(); err != nil {
		return err
	}
	return s.dw.Flush()
}

// feed is what the request reads: the alerts to this process (with
// alerts) or the bus's events, the key of its pages, and its tail; nil
// when the app is not running.
func (h *Poll) feed(r *http.Request) (feed, string, func() uint64) {
	if len(h.Alerts) > 0 {
		c := h.app.IPC()
		if c == nil {
			return nil, "", nil
		}
		return alertReader{c: c, keep: h.alertFilter(r)}, "alerts", c.Tail
	}
	bus := h.app.Bus()
	if bus == nil {
		return nil, "", nil
	}
	return reader{bus: bus, keep: h.filter(r).match, cache: &h.cache, envelope: h.Envelope}, "events", bus.Tail
}

// writeLost writes the notice of events the ring no longer holds.
func writeLost(w *bufio.Writer, from, count uint64) {
	var b [128]byte
	w.Write(appendLost(b[:0], from, count))
}

// Interface guards
var (
	_ caddyhttp.MiddlewareHandler = (*Poll)(nil)
	_ caddy.Provisioner           = (*Poll)(nil)
	_ caddy.Validator             = (*Poll)(nil)
	_ caddy.CleanerUpper          = (*Poll)(nil)
)
