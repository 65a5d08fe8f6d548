package handlers

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyevents"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/dustin/go-humanize"

	"github.com/ipcbus/caddy-ipcbus/events"
	"github.com/ipcbus/caddy-ipcbus/ipc"
	"github.com/ipcbus/caddy-ipcbus/zone"
)

var errNotRunning = errors.New("ipcbus is not running")

// DefaultMaxSize is the default largest request body of ipcbus_send and
// ipcbus_broadcast (capped by the app's max_payload), and the largest body
// of the admin API's POST /ipcbus/send, /ipcbus/broadcast and /ipcbus/events.
const DefaultMaxSize = 1 << 20

// base is what every handler shares: the ipcbus app of its config, and a
// context cancelled on Caddy's "stopping" event (emitted before any app
// stops, on a reload as on exit), which ends streams and long-polls.
type base struct {
	app      Bus
	stopping context.Context
	stop     context.CancelFunc
}

func (b *base) provision(ctx caddy.Context) error {
	a, err := ctx.App("ipcbus")
	if err != nil {
		return fmt.Errorf("loading the ipcbus app: %w", err)
	}
	bus, ok := a.(Bus)
	if !ok {
		return fmt.Errorf("the ipcbus app is a %T, not an ipcbus bus", a)
	}
	b.app = bus
	b.stopping, b.stop = context.WithCancel(context.Background())
	ev, err := ctx.App("events")
	if err != nil {
		return fmt.Errorf("loading the events app: %w", err)
	}
	if e, ok := ev.(*caddyevents.App); ok {
		if err := e.On("stopping", stopper(b.stop)); err != nil {
			return err
		}
	}
	// The HTTP server's own shutdown hook ends them too (it runs whenever
	// the server shuts down, whatever emits events or not), and Cleanup is
	// the backstop.
	if srv, ok := ctx.Value(caddyhttp.ServerCtxKey).(*caddyhttp.Server); ok {
		srv.RegisterOnShutdown(b.stop)
	}
	return nil
}

func (b *base) cleanup() {
	if b.stop != nil {
		b.stop()
	}
}

// stopper cancels a context when the event it is subscribed to is emitted.
type stopper context.CancelFunc

// Handle cancels.
func (s stopper) Handle(context.Context, caddy.Event) error {
	s()
	return nil
}

// Error is a failed request with its HTTP status. The handlers answer it
// as {"error": "<Err>"}; the admin API turns it into a caddy.APIError.
type Error struct {
	// Status is the HTTP status of the answer.
	Status int
	// Err says what went wrong, for the client.
	Err error
}

// Error returns Err's message.
func (e *Error) Error() string { return e.Err.Error() }

// Unwrap returns Err.
func (e *Error) Unwrap() error { return e.Err }

func httpErr(status int, err error) *Error { return &Error{Status: status, Err: err} }

// value is a configured value with placeholders replaced, or, when it is
// not configured, the query parameter of the same role.
func value(r *http.Request, configured, query string) string {
	if configured != "" {
		if repl, ok := r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer); ok {
			return repl.ReplaceAll(configured, "")
		}
		return configured
	}
	return queryGet(r.URL.RawQuery, query)
}

// values is like value for lists: the configured ones (placeholders
// replaced, empty results dropped), else every value of the query
// parameter, each possibly comma-separated. empty reports configured
// values that all came out empty (a placeholder with nothing behind it):
// such a filter must match nothing, not everything.
func values(r *http.Request, configured []string, query string) (out []string, empty bool) {
	if len(configured) > 0 {
		repl, _ := r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer)
		for _, c := range configured {
			if repl != nil {
				c = repl.ReplaceAll(c, "")
			}
			if c != "" {
				out = append(out, c)
			}
		}
		return out, len(out) == 0
	}
	queryScan(r.URL.RawQuery, query, func(v string) bool {
		for p := range strings.SplitSeq(v, ",") {
			if p = strings.TrimSpace(p); p != "" {
				out = append(out, p)
			}
		}
		return true
	})
	return out, false
}

// MaxPatterns is the most patterns a request to ipcbus_poll may give in
// each of its source, event and name parameters (comma-separated or
// repeated): every event is matched against each of them for as long as
// the stream lasts, so a client may not make that cost grow with the
// length of its query.
const MaxPatterns = 64

// checkPatterns answers 400 to a request whose filter parameters give
// more than MaxPatterns patterns; the route's own filters and the
// parameters it does not read are not counted.
func (h *Poll) checkPatterns(r *http.Request) *Error {
	keys := []string{"name"}
	if len(h.Alerts) == 0 {
		keys = keys[:0]
		if len(h.Sources) == 0 {
			keys = append(keys, "source")
		}
		if len(h.Events) == 0 {
			keys = append(keys, "event")
		}
	}
	for _, key := range keys {
		n := 0
		queryScan(r.URL.RawQuery, key, func(v string) bool {
			for p := range strings.SplitSeq(v, ",") {
				if strings.TrimSpace(p) != "" {
					n++
				}
			}
			return n <= MaxPatterns
		})
		if n > MaxPatterns {
			return httpErr(http.StatusBadRequest, fmt.Errorf("%s: more than %d patterns; give at most %d, comma-separated or in repeated %s parameters", key, MaxPatterns, MaxPatterns, key))
		}
	}
	return nil
}

// hasPlaceholder reports whether a configured value is only known per request.
func hasPlaceholder(s string) bool { return strings.Contains(s, "{") }

// ReadBody reads a request body of at most limit bytes: a Content-Length
// over the limit is answered 413 at once, before anything is read (and
// before a client that sent "Expect: 100-continue" sends its body), and a
// body without a length is cut off with a 413 as soon as it passes the
// limit. The handlers and the admin API read every body through it.
func ReadBody(w http.ResponseWriter, r *http.Request, limit int64) ([]byte, *Error) {
	if r.ContentLength > limit {
		stats.bodiesTooLarge.Add(1)
		return nil, tooLarge(w, r, limit)
	}
	if r.ContentLength == 0 || r.Body == nil || r.Body == http.NoBody {
		return nil, nil
	}
	body := http.MaxBytesReader(w, r.Body, limit)
	var b []byte
	var err error
	if r.ContentLength > 0 {
		b, err = readSized(body, r.ContentLength)
	} else {
		b, err = io.ReadAll(body) // body is a MaxBytesReader: at most limit bytes
	}
	if err != nil {
		var mb *http.MaxBytesError
		if errors.As(err, &mb) {
			stats.bodiesTooLarge.Add(1)
			return nil, tooLarge(w, r, limit)
		}
		return nil, httpErr(http.StatusBadRequest, fmt.Errorf("reading the request body: %w", err))
	}
	return b, nil
}

// BodyReader gives the request body for a streamed post or send: bounded
// by limit (a Content-Length over it is answered 413 at once, before
// anything is read; a body without a length is cut off as soon as it
// passes the limit, which streamError turns into a 413), with its declared
// size, or -1 when it has none. The payload then goes to a blob file as it
// arrives when it is larger than the ring carries: never held whole.
func BodyReader(w http.ResponseWriter, r *http.Request, limit int64) (io.Reader, int64, *Error) {
	if r.ContentLength > limit {
		stats.bodiesTooLarge.Add(1)
		return nil, 0, tooLarge(w, r, limit)
	}
	if r.ContentLength == 0 || r.Body == nil || r.Body == http.NoBody {
		return bytes.NewReader(nil), 0, nil
	}
	return http.MaxBytesReader(w, r.Body, limit), r.ContentLength, nil
}

// streamError is the answer to a failed streamed post or send whose body
// came from BodyReader, when the body is what failed: 413 past the limit,
// 507 over the blob quota, 400 a body shorter or longer than declared, or
// that broke off. It returns nil for any other error.
func streamError(w http.ResponseWriter, r *http.Request, limit int64, err error) *Error {
	var mb *http.MaxBytesError
	switch {
	case errors.As(err, &mb):
		stats.bodiesTooLarge.Add(1)
		return tooLarge(w, r, limit)
	case errors.Is(err, zone.ErrBlobQuota):
		return httpErr(http.StatusInsufficientStorage, err)
	case errors.Is(err, zone.ErrRead):
		return httpErr(http.StatusBadRequest, err)
	}
	return nil
}

// readSized reads a body of a declared size (the server's body reader ends
// there, and fails if the client sends less), growing its buffer as the
// bytes come: a client that declares a large body holds no more memory
// than it has sent.
func readSized(body io.Reader, size int64) ([]byte, error) {
	b := make([]byte, 0, min(size, 32<<10))
	for int64(len(b)) < size {
		if len(b) == cap(b) {
			nb := make([]byte, len(b), min(size, 2*int64(cap(b))))
			copy(nb, b)
			b = nb
		}
		n, err := body.Read(b[len(b):cap(b)])
		b = b[:len(b)+n]
		if err == io.EOF && int64(len(b)) < size {
			return nil, io.ErrUnexpectedEOF
		}
		if err != nil && err != io.EOF {
			return nil, err
		}
	}
	return b, nil
}

func tooLarge(w http.ResponseWriter, r *http.Request, limit int64) *Error {
	answerEarly(w, r)
	return httpErr(http.StatusRequestEntityTooLarge, fmt.Errorf("request body over the limit of %d bytes", limit))
}

// answerEarly lets an answer go out before the request's body is read:
// over HTTP/1 it closes the connection after the answer. Otherwise, when
// the body is wrapped (Caddy's read timeouts wrap it), net/http reads up
// to 256KiB of it before it writes the answer, waiting for a client that
// sent only its head (or waits for "100 Continue") to send its body.
// (EnableFullDuplex would skip that read too, but net/http then leaves a
// background read running when it drains a small body after the handler,
// and panics on the connection's next request.) HTTP/2 has no such wait,
// and there a Connection header would end every stream of the connection.
func answerEarly(w http.ResponseWriter, r *http.Request) {
	if r.ProtoMajor == 1 && r.ContentLength != 0 {
		w.Header().Set("Connection", "close")
	}
}

// allow answers 405 with an Allow header unless r's method is one of methods.
func allow(w http.ResponseWriter, r *http.Request, methods ...string) bool {
	for _, m := range methods {
		if r.Method == m {
			return true
		}
	}
	w.Header().Set("Allow", strings.Join(methods, ", "))
	answerEarly(w, r)
	writeError(w, r, &Error{http.StatusMethodNotAllowed, fmt.Errorf("method %s not allowed: use %s", r.Method, strings.Join(methods, " or "))})
	return false
}

// checkName applies the events bus's rules for sources, event names and
// unique keys (1 to 255 bytes, no line break or NUL), with its words.
func checkName(what, s string) error {
	switch {
	case s == "":
		return fmt.Errorf("%w: %s is empty", events.ErrInvalid, what)
	case len(s) > events.MaxNameLen:
		return fmt.Errorf("%w: %s is %d bytes, the limit is %d", events.ErrInvalid, what, len(s), events.MaxNameLen)
	case strings.ContainsAny(s, "\r\n\x00"):
		return fmt.Errorf("%w: %s %q holds a line break or NUL, which is not allowed", events.ErrInvalid, what, s)
	}
	return nil
}

// checkAlertName applies the alerts' rules for names, with ngx_lua_ipc's words.
func checkAlertName(name string) error {
	switch {
	case name == "":
		return fmt.Errorf("%w: alert name cannot be empty", ipc.ErrInvalid)
	case len(name) > ipc.MaxNameLen:
		return fmt.Errorf("%w: alert name length cannot exceed %d, was %d", ipc.ErrInvalid, ipc.MaxNameLen, len(name))
	}
	return nil
}

// parseSize reads a size like 1MiB (2^20 bytes) or 1MB (10^6 bytes).
func parseSize(s string) (int64, error) {
	n, err := humanize.ParseBytes(s)
	if err != nil || n == 0 || n > events.MaxPayloadLimit {
		return 0, fmt.Errorf("%q is not a size from 1 byte to 4294967040 bytes; write it like 1MiB (2^20 bytes) or 1MB (10^6 bytes)", s)
	}
	return int64(n), nil
}

// bodyLimit is a handler's max_size: the configured one, or the default,
// never more than the app's max_payload.
func bodyLimit(configured, maxPayload int64) int64 {
	limit := configured
	if limit <= 0 {
		limit = DefaultMaxSize
	}
	if maxPayload > 0 && limit > maxPayload {
		limit = maxPayload
	}
	return limit
}

// retryAfter is the Retry-After of a 503 for a full run-once key table:
// the unique timeout, after which every key now taken is free again.
func retryAfter(d time.Duration) string {
	if d <= 0 {
		d = events.DefaultUniqueTimeout
	}
	return strconv.FormatInt(int64((d+time.Second-1)/time.Second), 10)
}

// PostError turns an error of events.Bus.Post into the handlers' answer:
// its status (409 duplicate, 413 too large, 400 invalid, 503 closed or a
// full run-once key table, with Retry-After), set on w where a header is
// needed.
func PostError(w http.ResponseWriter, app Bus, err error) *Error {
	if errors.Is(err, zone.ErrUniqueTableFull) {
		w.Header().Set("Retry-After", retryAfter(app.UniqueKeyTimeout()))
		return httpErr(http.StatusServiceUnavailable, err)
	}
	return httpErr(EventStatus(err), err)
}

// CheckName applies the events bus's rules for sources and event names
// (1 to 255 bytes, no line break or NUL) to a configured one; what names
// it in the error.
func CheckName(what, s string) error { return checkName(what, s) }
