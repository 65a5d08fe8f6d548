package handlers

import (
	"errors"
	"fmt"
	"mime"
	"net/http"
	"strconv"
	"strings"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/ipcbus/caddy-ipcbus/events"
)

func init() {
	caddy.RegisterModule(new(Broadcast))
}

// Broadcast posts the body of a POST request on the ordered events bus, so
// that every worker's handlers and every ipcbus_poll subscriber of every
// process of the node receive it, and answers {"seq": N}. A JSON body
// (Content-Type application/json) is posted as JSON; any other body as its
// bytes. With alert set, it sends an IPC alert broadcast instead and
// answers {"ok": true}. Errors: 400 bad input (a reserved source or event
// name among them), 405 another method than POST, 409 a duplicate unique
// key, 413 a body over max_size, 503 the bus not running or the run-once
// key table full (with Retry-After). Names are checked before the body is
// read.
type Broadcast struct {
	// Source of the event. Placeholders allowed. Default: the "source"
	// query parameter. The reserved sources (ipcbus, ipcbus.*, and those of
	// ipcbus_forward, "caddy" by default) are refused.
	Source string `json:"source,omitempty"`
	// Event name. Placeholders allowed. Default: the "event" query
	// parameter. Names starting with "ipcbus." are refused.
	Event string `json:"event,omitempty"`
	// Unique makes the event run-once under this key. Placeholders allowed.
	// Default: the "unique" query parameter, if any.
	Unique string `json:"unique,omitempty"`
	// Alert broadcasts an IPC alert instead of posting an event.
	Alert bool `json:"alert,omitempty"`
	// Name of the alert (with alert). Placeholders allowed. Default: the
	// "name" query parameter.
	Name string `json:"name,omitempty"`
	// MaxSize is the largest request body (the payload) in bytes; beyond
	// it the answer is 413, at once when the request says its length.
	// Default: 1MiB; at most the app's max_payload.
	MaxSize int64 `json:"max_size,omitempty"`

	base
	limit int64
}

// CaddyModule returns the Caddy module information.
func (*Broadcast) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{ID: "http.handlers.ipcbus_broadcast", New: func() caddy.Module { return new(Broadcast) }}
}

// Provision finds the ipcbus app.
func (h *Broadcast) Provision(ctx caddy.Context) error {
	if err := h.provision(ctx); err != nil {
		return err
	}
	h.limit = bodyLimit(h.MaxSize, h.app.MaxPayloadBytes())
	return nil
}

// Validate checks the configuration: names without placeholders must be
// valid and not reserved as they are, and max_size within the app's
// max_payload.
func (h *Broadcast) Validate() error {
	literal := func(s string) bool { return s != "" && !hasPlaceholder(s) }
	if h.Alert {
		if h.Source != "" || h.Event != "" || h.Unique != "" {
			return errors.New("ipcbus_broadcast: alert sends an IPC alert, which has a name but no source, event or unique key")
		}
		if literal(h.Name) {
			if err := checkAlertName(h.Name); err != nil {
				return fmt.Errorf("ipcbus_broadcast: %w", err)
			}
		}
	} else {
		if h.Name != "" {
			return errors.New("ipcbus_broadcast: name is the name of an alert; set alert, or use source and event")
		}
		for _, c := range []struct{ what, v string }{{"source", h.Source}, {"event", h.Event}, {"unique key", h.Unique}} {
			if literal(c.v) {
				if err := checkName(c.what, c.v); err != nil {
					return fmt.Errorf("ipcbus_broadcast: %w", err)
				}
			}
		}
		// The forwarders' own sources are checked per request: a reload
		// may move them, and the old config's are still reserved now.
		if err := checkPublish(literalOr(h.Source), literalOr(h.Event), false); err != nil {
			return fmt.Errorf("ipcbus_broadcast: %w", err)
		}
	}
	return checkMaxSize("ipcbus_broadcast", h.MaxSize, h.app)
}

// literalOr is s when it has no placeholder, else "" (known per request only).
func literalOr(s string) string {
	if hasPlaceholder(s) {
		return ""
	}
	return s
}

// Cleanup releases the handler.
func (h *Broadcast) Cleanup() error { h.cleanup(); return nil }

// ServeHTTP posts the event or broadcasts the alert.
func (h *Broadcast) ServeHTTP(w http.ResponseWriter, r *http.Request, _ caddyhttp.Handler) error {
	if !allow(w, r, http.MethodPost) {
		return nil
	}
	if h.Alert {
		if err := SendAlert(w, r, h.app, true, "", value(r, h.Name, "name"), h.limit); err != nil {
			writeError(w, r, err)
			return nil
		}
		writeJSON(w, http.StatusOK, map[string]bool{"ok": true})
		return nil
	}
	if isBatch(r) {
		first, last, n, err := h.postBatch(w, r)
		if err != nil {
			writeError(w, r, err)
			return nil
		}
		writeJSON(w, http.StatusOK, map[string]any{"first": first, "last": last, "count": n})
		return nil
	}
	seq, err := h.post(w, r)
	if err != nil {
		writeError(w, r, err)
		return nil
	}
	writeSeq(w, seq)
	return nil
}

// writeSeq answers {"seq":N}, as writeJSON would, without encoding a map.
func writeSeq(w http.ResponseWriter, seq uint64) {
	var sb [40]byte
	b := strconv.AppendUint(append(sb[:0], `{"seq":`...), seq, 10)
	b = append(b, "}\n"...)
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write(b)
}

func (h *Broadcast) post(w http.ResponseWriter, r *http.Request) (uint64, *Error) {
	bus := h.app.Bus()
	if bus == nil {
		answerEarly(w, r)
		return 0, httpErr(http.StatusServiceUnavailable, errNotRunning)
	}
	source, event, unique := value(r, h.Source, "source"), value(r, h.Event, "event"), value(r, h.Unique, "unique")
	fail := func(err error) *Error { // answered before the body is read
		answerEarly(w, r)
		return httpErr(http.StatusBadRequest, fmt.Errorf("failed posting event %q by %q; %w", event, source, err))
	}
	for _, c := range []struct{ what, v string }{{"source", source}, {"event", event}} {
		if err := checkName(c.what, c.v); err != nil {
			return 0, fail(err)
		}
	}
	if unique != "" {
		if err := checkName("unique key", unique); err != nil {
			return 0, fail(err)
		}
	}
	if err := checkPublish(source, event, true); err != nil {
		return 0, fail(err)
	}
	body, size, herr := BodyReader(w, r, h.limit)
	if herr != nil {
		return 0, herr
	}
	var opts []events.PostOption
	if isJSON(r) {
		opts = append(opts, events.AsJSON()) // checked as it streams
	}
	if unique != "" {
		opts = append(opts, events.Unique(unique))
	}
	seq, err := bus.PostReader(source, event, body, size, opts...)
	if err != nil {
		if herr := streamError(w, r, h.limit, err); herr != nil {
			return 0, herr
		}
		return 0, PostError(w, h.app, err)
	}
	return seq, nil
}

func isJSON(r *http.Request) bool {
	mt := mediaType(r)
	return mt == "application/json" || strings.HasSuffix(mt, "+json")
}

// mediaType is the media type of the request's Content-Type, as
// mime.ParseMediaType gives it ("" when there is none, or it does not
// parse), without parsing a bare lower-case type (the usual
// "application/json" or "text/plain"): that is its own media type.
func mediaType(r *http.Request) string {
	ct := r.Header.Get("Content-Type")
	if bareMediaType(ct) {
		return ct
	}
	mt, _, _ := mime.ParseMediaType(ct)
	return mt
}

// bareMediaType reports whether ct is a media type without parameters,
// already lower-case: a token, or two joined by a slash (RFC 2045).
func bareMediaType(ct string) bool {
	slash := strings.IndexByte(ct, '/')
	if slash == 0 || slash == len(ct)-1 || ct == "" {
		return false
	}
	for i := 0; i < len(ct); i++ {
		c := ct[i]
		switch {
		case i == slash:
		case 'a' <= c && c <= 'z', '0' <= c && c <= '9':
		case strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0:
		default:
			return false
		}
	}
	return true
}

// Interface guards
var (
	_ caddyhttp.MiddlewareHandler = (*Broadcast)(nil)
	_ caddy.Provisioner           = (*Broadcast)(nil)
	_ caddy.Validator             = (*Broadcast)(nil)
	_ caddy.CleanerUpper          = (*Broadcast)(nil)
)
