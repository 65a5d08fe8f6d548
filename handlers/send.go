package handlers

import (
	"fmt"
	"net/http"
	"strconv"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

func init() {
	caddy.RegisterModule(new(Send))
}

// Send sends the body of a POST request as an IPC alert to one Caddy
// process of the node (ngx_lua_ipc's send), to be handled by its newest
// worker. It answers {"ok": true}, or an error: 400 for a bad pid or name
// (a name of at most 254 bytes), 404 for a pid that is not a live worker
// of the node, 405 for another method than POST, 413 for a body over
// max_size, 503 when the bus is not running or the receiver does not keep
// up. The pid and the name are checked before the body is read.
type Send struct {
	// PID of the receiving process. Placeholders allowed. Default: the
	// "pid" query parameter.
	PID string `json:"pid,omitempty"`
	// Name of the alert. Placeholders allowed. Default: the "name" query parameter.
	Name string `json:"name,omitempty"`
	// MaxSize is the largest request body (the alert's data) in bytes;
	// beyond it the answer is 413, at once when the request says its
	// length. Default: 1MiB; at most the app's max_payload.
	MaxSize int64 `json:"max_size,omitempty"`

	base
	limit int64
}

// CaddyModule returns the Caddy module information.
func (*Send) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{ID: "http.handlers.ipcbus_send", New: func() caddy.Module { return new(Send) }}
}

// Provision finds the ipcbus app.
func (h *Send) Provision(ctx caddy.Context) error {
	if err := h.provision(ctx); err != nil {
		return err
	}
	h.limit = bodyLimit(h.MaxSize, h.app.MaxPayloadBytes())
	return nil
}

// Validate checks the configuration: a pid or name without placeholders
// must be valid as it is, and max_size within the app's max_payload.
func (h *Send) Validate() error {
	if h.PID != "" && !hasPlaceholder(h.PID) {
		if n, err := strconv.Atoi(h.PID); err != nil || n <= 0 {
			return fmt.Errorf("ipcbus_send: pid %q is not a process id: give a pid, a placeholder, or nothing (the pid query parameter)", h.PID)
		}
	}
	if h.Name != "" && !hasPlaceholder(h.Name) {
		if err := checkAlertName(h.Name); err != nil {
			return fmt.Errorf("ipcbus_send: %w", err)
		}
	}
	return checkMaxSize("ipcbus_send", h.MaxSize, h.app)
}

// checkMaxSize checks a configured max_size against the app's max_payload.
func checkMaxSize(directive string, size int64, app Bus) error {
	if size < 0 {
		return fmt.Errorf("%s: max_size must be positive, was %d", directive, size)
	}
	if app != nil && size > app.MaxPayloadBytes() {
		return fmt.Errorf("%s: max_size %d is over the ipcbus max_payload of %d bytes: lower it, or raise max_payload", directive, size, app.MaxPayloadBytes())
	}
	return nil
}

// Cleanup releases the handler.
func (h *Send) Cleanup() error { h.cleanup(); return nil }

// ServeHTTP sends the alert.
func (h *Send) ServeHTTP(w http.ResponseWriter, r *http.Request, _ caddyhttp.Handler) error {
	if !allow(w, r, http.MethodPost) {
		return nil
	}
	if err := SendAlert(w, r, h.app, false, value(r, h.PID, "pid"), value(r, h.Name, "name"), h.limit); err != nil {
		writeError(w, r, err)
		return nil
	}
	writeJSON(w, http.StatusOK, map[string]bool{"ok": true})
	return nil
}

// Interface guards
var (
	_ caddyhttp.MiddlewareHandler = (*Send)(nil)
	_ caddy.Provisioner           = (*Send)(nil)
	_ caddy.Validator             = (*Send)(nil)
	_ caddy.CleanerUpper          = (*Send)(nil)
)
