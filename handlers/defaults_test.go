package handlers

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

// TestPollDefaults pins the defaults of ipcbus_poll that the README and
// the Caddyfile syntax document (a change must change them too), and the
// process-wide cap on open polls and streams.
func TestPollDefaults(t *testing.T) {
	var h Poll
	h.setDefaults()
	tests := []struct {
		name      string
		got, want any
	}{
		{"timeout", h.Timeout, caddy.Duration(30 * time.Second)},
		{"max_timeout", h.MaxTimeout, caddy.Duration(5 * time.Minute)},
		{"keepalive", h.KeepAlive, caddy.Duration(15 * time.Second)},
		{"write_timeout", h.WriteTimeout, caddy.Duration(10 * time.Second)},
		{"max_streams", h.MaxStreams, 10000},
		{"limit", h.Limit, 100},
		{"max_bytes", h.MaxBytes, int64(1 << 20)},
		{"ping_interval", h.PingInterval, caddy.Duration(15 * time.Second)},
		{"max_size", bodyLimit(h.MaxSize, 0), int64(1 << 20)},
		{"process-wide streams", DefaultProcessMaxStreams, 10000},
	}
	for _, tt := range tests {
		if tt.got != tt.want {
			t.Errorf("%s: %v (%T), documented %v", tt.name, tt.got, tt.got, tt.want)
		}
	}
}

// TestProcessMaxStreams: by default the process-wide cap follows the
// largest max_streams of a live handler; set by the app, it is exact.
func TestProcessMaxStreams(t *testing.T) {
	defer SetProcessMaxStreams(0)
	release := countHandler(20000)
	defer release()
	SetProcessMaxStreams(0)
	if got := ProcessMaxStreams(); got != 20000 {
		t.Fatalf("default cap with a handler of 20000: %d", got)
	}
	SetProcessMaxStreams(500)
	if got := ProcessMaxStreams(); got != 500 {
		t.Fatalf("cap set to 500: %d", got)
	}
	SetProcessMaxStreams(0)
	release()
	if got := ProcessMaxStreams(); got != DefaultProcessMaxStreams {
		t.Fatalf("default cap with no handler: %d", got)
	}
}

// TestErrorVar: a failure answered as JSON also leaves its message in the
// request variable ipcbus.error, for Caddy's logs ({http.vars.ipcbus.error}).
func TestErrorVar(t *testing.T) {
	vars := map[string]any{}
	r := httptest.NewRequest(http.MethodGet, "/", nil)
	r = r.WithContext(context.WithValue(r.Context(), caddyhttp.VarsCtxKey, vars))
	w := httptest.NewRecorder()
	writeError(w, r, httpErr(http.StatusConflict, errors.New("duplicate key")))
	if w.Code != http.StatusConflict || vars["ipcbus.error"] != "duplicate key" {
		t.Fatalf("status %d, vars %v", w.Code, vars)
	}
}
