package handlers

import (
	"context"
	"errors"
	"net"
	"net/http"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

// DefaultProcessMaxStreams is the default of the process-wide cap on open
// long-polls and streams of all ipcbus_poll handlers together, on top of
// each handler's own max_streams: this, or the largest max_streams of a
// live handler when that is larger, so that one route configured for more
// is not held to it. The ipcbus app's max_streams sets the cap exactly
// (SetProcessMaxStreams).
const DefaultProcessMaxStreams = 10000

// processCap holds the process-wide cap: its base and the max_streams of
// the live handlers.
var processCap = struct {
	mu       sync.Mutex
	base     int64
	fixed    bool          // base set by the app: the cap exactly
	handlers map[int64]int // max_streams → live handlers with it
	cur      atomic.Int64
}{base: DefaultProcessMaxStreams, handlers: map[int64]int{}}

func init() { processCap.cur.Store(DefaultProcessMaxStreams) }

func updateCapLocked() {
	c := processCap.base
	for n := range processCap.handlers {
		if !processCap.fixed {
			c = max(c, n)
		}
	}
	processCap.cur.Store(c)
}

// SetProcessMaxStreams sets the process-wide cap on open long-polls and
// streams (all ipcbus_poll handlers together) to n exactly; n <= 0
// restores the default (DefaultProcessMaxStreams, or the largest
// max_streams of a live handler). A request beyond the cap gets 503. The
// ipcbus app sets it from its max_streams at every start.
func SetProcessMaxStreams(n int64) {
	processCap.mu.Lock()
	defer processCap.mu.Unlock()
	processCap.fixed = n > 0
	if n <= 0 {
		n = DefaultProcessMaxStreams
	}
	processCap.base = n
	updateCapLocked()
}

// ProcessMaxStreams is the process-wide cap on open long-polls and streams.
func ProcessMaxStreams() int64 { return processCap.cur.Load() }

// countHandler counts a live handler's max_streams into the cap until the
// returned release is called.
func countHandler(maxStreams int64) (release func()) {
	processCap.mu.Lock()
	defer processCap.mu.Unlock()
	processCap.handlers[maxStreams]++
	updateCapLocked()
	var once sync.Once
	return func() {
		once.Do(func() {
			processCap.mu.Lock()
			defer processCap.mu.Unlock()
			if processCap.handlers[maxStreams]--; processCap.handlers[maxStreams] <= 0 {
				delete(processCap.handlers, maxStreams)
			}
			updateCapLocked()
		})
	}
}

// stats are this process's counters of the HTTP handlers.
var stats struct {
	open, refused, slowDropped, bodiesTooLarge atomic.Int64
	shared                                     atomic.Int64 // streams in a hub now
	inlinePasses                               atomic.Int64
}

// Stats are this process's counters of the HTTP handlers (all configs).
type Stats struct {
	// OpenStreams is the number of long-polls and streams open now.
	OpenStreams int64 `json:"open_streams"`
	// StreamsRefused counts polls and streams answered 503 because a
	// max_streams or the process-wide cap was reached.
	StreamsRefused int64 `json:"streams_refused"`
	// SlowClientsDropped counts streams and long-polls ended because the
	// client did not take a write within write_timeout.
	SlowClientsDropped int64 `json:"slow_clients_dropped"`
	// BodiesTooLarge counts request bodies refused with 413 by max_size
	// (handlers) or the admin API's limit.
	BodiesTooLarge int64 `json:"bodies_too_large"`
	// SharedStreams is the number of streams written by the shared
	// writers now (see Poll.StreamWriters); the others of OpenStreams are
	// written by their own goroutine.
	SharedStreams int64 `json:"shared_streams"`
	// InlinePasses counts the passes over the streams of a small shared
	// writer made by the goroutine that learnt of an event (its poster, or
	// the delivery goroutine) instead of the writer's own goroutine.
	InlinePasses int64 `json:"inline_passes"`
}

// ReadStats returns this process's counters of the HTTP handlers.
func ReadStats() Stats {
	return Stats{
		OpenStreams:        stats.open.Load(),
		StreamsRefused:     stats.refused.Load(),
		SlowClientsDropped: stats.slowDropped.Load(),
		BodiesTooLarge:     stats.bodiesTooLarge.Load(),
		SharedStreams:      stats.shared.Load(),
		InlinePasses:       stats.inlinePasses.Load(),
	}
}

// acquire takes a slot under a handler's own limit and the process-wide
// cap; release gives it back.
func acquire(mine *atomic.Int64, limit int64) bool {
	if mine.Add(1) > limit {
		mine.Add(-1)
		stats.refused.Add(1)
		return false
	}
	if stats.open.Add(1) > processCap.cur.Load() {
		stats.open.Add(-1)
		mine.Add(-1)
		stats.refused.Add(1)
		return false
	}
	return true
}

func release(mine *atomic.Int64) {
	mine.Add(-1)
	stats.open.Add(-1)
}

// stopEndGrace is how long the end of a stream's body may take to go out
// after a stop.
const stopEndGrace = 100 * time.Millisecond

// writeChunk bounds each write under one deadline, so that a slow client
// that keeps reading is not dropped for a large event.
const writeChunk = 64 << 10

// deadlineWriter writes a response under a write deadline that leaves each
// write and flush at least write_timeout: a client that takes nothing for
// that long makes the write fail (and the handler drop it) rather than
// hold its goroutine. Setting a deadline costs (a timer moved in the
// runtime), so it is moved only when less than write_timeout is left:
// set to write_timeout and an eighth ahead, it is moved at most once in
// an eighth of write_timeout, and a write may take up to that eighth
// longer than write_timeout before it fails. It
// also overrides the server's own write timeout, which counts from the
// start of the request and would cut a stream. With a stopping context, a
// blocked write is aborted as soon as it is done, and so is every later one.
type deadlineWriter struct {
	w        http.ResponseWriter
	rc       *http.ResponseController
	timeout  time.Duration
	stopping context.Context // nil: no abort
	err      error
	deadline time.Time // the one set last (zero: none yet)
}

// newDeadlineWriter returns the writer and the function to call when the
// handler is done with it.
func newDeadlineWriter(w http.ResponseWriter, timeout time.Duration, stopping context.Context) (*deadlineWriter, func()) {
	d := &deadlineWriter{w: w, rc: http.NewResponseController(w), timeout: timeout, stopping: stopping}
	stop := func() bool { return false }
	// The abort may run when the handler is done with w (stop came too
	// late to prevent it): it must not touch w then (an HTTP/2 writer
	// is gone once the handler returns), so done waits for it.
	var mu sync.Mutex
	finished := false
	if stopping != nil {
		stop = context.AfterFunc(stopping, func() {
			mu.Lock()
			defer mu.Unlock()
			if !finished {
				_ = d.rc.SetWriteDeadline(time.Now())
			}
		})
	}
	return d, func() {
		stop()
		mu.Lock()
		finished = true
		mu.Unlock()
		// What the server writes after the handler (the end of a chunked
		// body) is bounded too; the server clears the deadline after the
		// request, before the connection serves another. After a stop
		// that cut no write, the end gets a moment, so that the client
		// sees a clean end rather than a cut.
		switch {
		case d.err != nil:
		case stopping != nil && stopping.Err() != nil:
			_ = d.rc.SetWriteDeadline(time.Now().Add(stopEndGrace))
		default:
			d.arm()
		}
	}
}

func (d *deadlineWriter) arm() {
	now := time.Now()
	if !d.deadline.IsZero() && d.deadline.Sub(now) >= d.timeout {
		return // the one set is far enough
	}
	d.deadline = now.Add(d.timeout + d.timeout/8)
	_ = d.rc.SetWriteDeadline(d.deadline)
	if d.stopping != nil && d.stopping.Err() != nil { // the abort may have come before the line above
		_ = d.rc.SetWriteDeadline(time.Now())
	}
}

func (d *deadlineWriter) Write(p []byte) (int, error) {
	if d.err != nil {
		return 0, d.err
	}
	written := 0
	for len(p) > 0 {
		c := p[:min(len(p), writeChunk)]
		d.arm()
		n, err := d.w.Write(c)
		written += n
		if err != nil {
			d.err = err
			return written, err
		}
		p = p[n:]
	}
	return written, nil
}

// Flush sends what the response has buffered.
func (d *deadlineWriter) Flush() error {
	if d.err != nil {
		return d.err
	}
	d.arm()
	if err := d.rc.Flush(); err != nil {
		d.err = err
	}
	return d.err
}

// dropped reports (and counts) a write that failed because the client did
// not read: a timeout that is not the stop's abort. (A client that went
// away fails writes otherwise; the server cancels the request's context
// on any failed write, so that context cannot tell.)
func (d *deadlineWriter) dropped() bool {
	if d.err == nil || (d.stopping != nil && d.stopping.Err() != nil) {
		return false
	}
	var ne net.Error
	if errors.Is(d.err, os.ErrDeadlineExceeded) || (errors.As(d.err, &ne) && ne.Timeout()) {
		stats.slowDropped.Add(1)
		return true
	}
	return false
}

// pastIdleWriter is where a stream of HTTP/1 writes: past Caddy's idle
// write timeout when it is the outermost wrapper of w, since the stream
// bounds its writes itself (deadlineWriter), and that wrapper would set
// a deadline of its own on every write and flush, twice an event. On
// HTTP/1 a deadline left between writes is harmless; HTTP/2 needs the
// wrapper (it clears the deadline between writes), and another wrapper
// above it (a log, an encoder) must see the bytes: w is kept for both.
func pastIdleWriter(w http.ResponseWriter, r *http.Request) http.ResponseWriter {
	if r.ProtoMajor != 1 {
		return w
	}
	if iw, ok := w.(*caddyhttp.IdleTimeoutWriter); ok && iw.ResponseWriterWrapper != nil && iw.ResponseWriterWrapper.ResponseWriter != nil {
		return iw.ResponseWriterWrapper.ResponseWriter
	}
	return w
}
