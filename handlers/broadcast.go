package handlers

import (
	"encoding/json"
	"errors"
	"mime"
	"net/http"
	"strings"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/ipcbus/caddy-ipcbus/events"
	"github.com/ipcbus/caddy-ipcbus/ipc"
)

func init() {
	caddy.RegisterModule(new(Broadcast))
}

// Broadcast posts the body of a POST request on the ordered events bus, so
// that every worker's handlers and every ipcbus_poll subscriber of every
// process of the node receive it, and answers {"seq": N}. A JSON body
// (Content-Type application/json) is posted as JSON; any other body as its
// bytes. With alert set, it sends an IPC alert broadcast instead and
// answers {"ok": true}. Errors: 400 bad input, 405 another method than
// POST, 409 a duplicate unique key, 413 too large, 503 the bus not running.
type Broadcast struct {
	// Source of the event. Placeholders allowed. Default: the "source" query parameter.
	Source string `json:"source,omitempty"`
	// Event name. Placeholders allowed. Default: the "event" query parameter.
	Event string `json:"event,omitempty"`
	// Unique makes the event run-once under this key. Placeholders allowed.
	// Default: the "unique" query parameter, if any.
	Unique string `json:"unique,omitempty"`
	// Alert broadcasts an IPC alert instead of posting an event.
	Alert bool `json:"alert,omitempty"`
	// Name of the alert (with alert). Placeholders allowed. Default: the
	// "name" query parameter.
	Name string `json:"name,omitempty"`

	base
}

// CaddyModule returns the Caddy module information.
func (*Broadcast) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{ID: "http.handlers.ipcbus_broadcast", New: func() caddy.Module { return new(Broadcast) }}
}

// Provision finds the ipcbus app.
func (h *Broadcast) Provision(ctx caddy.Context) error { return h.provision(ctx) }

// Cleanup releases the handler.
func (h *Broadcast) Cleanup() error { h.cleanup(); return nil }

// ServeHTTP posts the event or broadcasts the alert.
func (h *Broadcast) ServeHTTP(w http.ResponseWriter, r *http.Request, _ caddyhttp.Handler) error {
	if !onlyMethod(w, r, http.MethodPost) {
		return nil
	}
	if h.Alert {
		c := h.app.IPC()
		if c == nil {
			return writeError(w, http.StatusServiceUnavailable, errNotRunning)
		}
		body, status, err := readBody(w, r, ipc.MaxDataLen)
		if err != nil {
			return writeError(w, status, err)
		}
		if err := c.Broadcast(value(r, h.Name, "name"), body); err != nil {
			return writeError(w, AlertStatus(err), err)
		}
		return writeJSON(w, http.StatusOK, map[string]bool{"ok": true})
	}
	bus := h.app.Bus()
	if bus == nil {
		return writeError(w, http.StatusServiceUnavailable, errNotRunning)
	}
	body, status, err := readBody(w, r, h.app.MaxPayloadBytes())
	if err != nil {
		return writeError(w, status, err)
	}
	var data any = body
	if isJSON(r) {
		if !json.Valid(body) {
			return writeError(w, http.StatusBadRequest, errors.New("the body is sent as application/json but is not valid JSON"))
		}
		data = json.RawMessage(body)
	}
	var opts []events.PostOption
	if u := value(r, h.Unique, "unique"); u != "" {
		opts = append(opts, events.Unique(u))
	}
	seq, err := bus.Post(value(r, h.Source, "source"), value(r, h.Event, "event"), data, opts...)
	if err != nil {
		return writeError(w, EventStatus(err), err)
	}
	return writeJSON(w, http.StatusOK, map[string]uint64{"seq": seq})
}

func isJSON(r *http.Request) bool {
	mt, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type"))
	return mt == "application/json" || strings.HasSuffix(mt, "+json")
}

// Interface guards
var (
	_ caddyhttp.MiddlewareHandler = (*Broadcast)(nil)
	_ caddy.Provisioner           = (*Broadcast)(nil)
	_ caddy.CleanerUpper          = (*Broadcast)(nil)
)
