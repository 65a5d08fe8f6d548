package handlers

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyevents"
)

var errNotRunning = errors.New("ipcbus is not running")

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

// value is a configured value with placeholders replaced, or, when it is
// not configured, the query parameter of the same role.
func value(r *http.Request, configured, query string) string {
	if configured != "" {
		if repl, ok := r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer); ok {
			return repl.ReplaceAll(configured, "")
		}
		return configured
	}
	return r.URL.Query().Get(query)
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
	for _, v := range r.URL.Query()[query] {
		for _, p := range strings.Split(v, ",") {
			if p = strings.TrimSpace(p); p != "" {
				out = append(out, p)
			}
		}
	}
	return out, false
}

// readBody reads at most limit bytes of the body; more is a 413.
func readBody(w http.ResponseWriter, r *http.Request, limit int64) ([]byte, int, error) {
	b, err := io.ReadAll(http.MaxBytesReader(w, r.Body, limit))
	if err != nil {
		var mb *http.MaxBytesError
		if errors.As(err, &mb) {
			return nil, http.StatusRequestEntityTooLarge, fmt.Errorf("request body over the limit of %d bytes", limit)
		}
		return nil, http.StatusBadRequest, fmt.Errorf("reading the request body: %w", err)
	}
	return b, 0, nil
}

func onlyMethod(w http.ResponseWriter, r *http.Request, method string) bool {
	if r.Method == method {
		return true
	}
	w.Header().Set("Allow", method)
	writeError(w, http.StatusMethodNotAllowed, fmt.Errorf("method %s not allowed: use %s", r.Method, method))
	return false
}
