package handlers

import (
	"fmt"
	"net/http"
	"strconv"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"

	"github.com/ipcbus/caddy-ipcbus/ipc"
)

func init() {
	caddy.RegisterModule(new(Send))
}

// Send sends the body of a POST request as an IPC alert to one Caddy
// process of the node (ngx_lua_ipc's send), to be handled by its newest
// worker. It answers {"ok": true}, or an error: 404 for a pid that is not
// a live worker of the node, 400 or 413 for the limits (a name of at most
// 254 bytes, data of at most 4294967040), 405 for another method than POST.
type Send struct {
	// PID of the receiving process. Placeholders allowed. Default: the
	// "pid" query parameter.
	PID string `json:"pid,omitempty"`
	// Name of the alert. Placeholders allowed. Default: the "name" query parameter.
	Name string `json:"name,omitempty"`

	base
	logger *zap.Logger
}

// CaddyModule returns the Caddy module information.
func (*Send) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{ID: "http.handlers.ipcbus_send", New: func() caddy.Module { return new(Send) }}
}

// Provision finds the ipcbus app.
func (h *Send) Provision(ctx caddy.Context) error {
	h.logger = ctx.Logger()
	return h.provision(ctx)
}

// Cleanup releases the handler.
func (h *Send) Cleanup() error { h.cleanup(); return nil }

// ServeHTTP sends the alert.
func (h *Send) ServeHTTP(w http.ResponseWriter, r *http.Request, _ caddyhttp.Handler) error {
	if !onlyMethod(w, r, http.MethodPost) {
		return nil
	}
	c := h.app.IPC()
	if c == nil {
		return writeError(w, http.StatusServiceUnavailable, errNotRunning)
	}
	ps := value(r, h.PID, "pid")
	pid, err := strconv.Atoi(ps)
	if err != nil || pid <= 0 {
		return writeError(w, http.StatusBadRequest, fmt.Errorf("pid %q: give the pid of a Caddy process of the node", ps))
	}
	name := value(r, h.Name, "name")
	body, status, err := readBody(w, r, ipc.MaxDataLen)
	if err != nil {
		return writeError(w, status, err)
	}
	if err := c.Send(pid, name, body); err != nil {
		return writeError(w, AlertStatus(err), err)
	}
	return writeJSON(w, http.StatusOK, map[string]bool{"ok": true})
}

// Interface guards
var (
	_ caddyhttp.MiddlewareHandler = (*Send)(nil)
	_ caddy.Provisioner           = (*Send)(nil)
	_ caddy.CleanerUpper          = (*Send)(nil)
)
