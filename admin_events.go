package ipcbus

import (
	"encoding/json"
	"errors"
	"fmt"
	"mime"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"

	"github.com/ipcbus/caddy-ipcbus/events"
	"github.com/ipcbus/caddy-ipcbus/handlers"
)

// PostRequest is the body of POST /ipcbus/events.
type PostRequest struct {
	// Source and Event name the event.
	Source string `json:"source"`
	Event  string `json:"event"`
	// Data is any JSON value. A JSON string is posted as its text; any
	// other value as JSON.
	Data json.RawMessage `json:"data,omitempty"`
	// Unique makes the event run-once (see unique_timeout).
	Unique string `json:"unique,omitempty"`
}

// AdminPageBytes bounds the payload bytes of one GET /ipcbus/events
// answer (at least one event is sent, whatever its size): 1MiB.
const AdminPageBytes = handlers.DefaultMaxBytes

var errMethodPost = errors.New("method not allowed: use POST with the alert's data as the body")

func apiErr(status int, err error) error { return caddy.APIError{HTTPStatus: status, Err: err} }

// runningBus returns the running app and its bus.
func runningBus() (*App, *events.Bus, error) {
	a := current()
	if a == nil {
		return nil, nil, apiErr(http.StatusServiceUnavailable, errNotRunning)
	}
	bus := a.Bus()
	if bus == nil {
		return nil, nil, apiErr(http.StatusServiceUnavailable, errNotRunning)
	}
	return a, bus, nil
}

// UniqueKeyTimeout is how long a run-once key stays taken: unique_timeout,
// or its default.
func (a *App) UniqueKeyTimeout() time.Duration {
	if a.UniqueTimeout > 0 {
		return time.Duration(a.UniqueTimeout)
	}
	return events.DefaultUniqueTimeout
}

func handleEvents(w http.ResponseWriter, r *http.Request) error {
	switch r.Method {
	case http.MethodGet:
		return getEvents(w, r)
	case http.MethodPost:
		return postEvent(w, r)
	}
	w.Header().Set("Allow", "GET, POST")
	return apiErr(http.StatusMethodNotAllowed, errors.New("method not allowed: use GET to read events or POST to post one"))
}

// isJSON reports a JSON media type: application/json or a +json one.
func isJSON(r *http.Request) bool {
	mt, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type"))
	return mt == "application/json" || strings.HasSuffix(mt, "+json")
}

func postEvent(w http.ResponseWriter, r *http.Request) error {
	// Like Caddy's /load: a JSON body says so. (A browser cannot send
	// that type across origins without asking first.)
	if !isJSON(r) {
		return apiErr(http.StatusUnsupportedMediaType, fmt.Errorf("unacceptable content-type %q: send the event as application/json", r.Header.Get("Content-Type")))
	}
	a, bus, err := runningBus()
	if err != nil {
		return err
	}
	body, herr := handlers.ReadBody(w, r, AdminMaxBody) // the bus checks the payload against max_payload
	if herr != nil {
		return apiErr(herr.Status, herr.Err)
	}
	var req PostRequest
	if err := json.Unmarshal(body, &req); err != nil {
		return apiErr(http.StatusBadRequest, fmt.Errorf(`the body must be a JSON object {"source","event","data","unique"}: %w`, err))
	}
	var data any
	if len(req.Data) > 0 && req.Data[0] == '"' {
		var s string
		if err := json.Unmarshal(req.Data, &s); err != nil {
			return apiErr(http.StatusBadRequest, err)
		}
		data = s
	} else if len(req.Data) > 0 {
		data = req.Data
	}
	var opts []events.PostOption
	if req.Unique != "" {
		opts = append(opts, events.Unique(req.Unique))
	}
	seq, err := bus.Post(req.Source, req.Event, data, opts...)
	if err != nil {
		herr := handlers.PostError(w, a, err)
		return apiErr(herr.Status, herr.Err)
	}
	return writeJSON(w, map[string]uint64{"seq": seq})
}

func getEvents(w http.ResponseWriter, r *http.Request) error {
	_, bus, err := runningBus()
	if err != nil {
		return err
	}
	q := r.URL.Query()
	since, limit := uint64(0), 100
	if v := q.Get("since"); v != "" {
		if since, err = strconv.ParseUint(v, 10, 64); err != nil {
			return apiErr(http.StatusBadRequest, fmt.Errorf("since=%q is not a sequence number", v))
		}
	}
	if v := q.Get("limit"); v != "" {
		if limit, err = strconv.Atoi(v); err != nil || limit < 1 || limit > handlers.MaxPollLimit {
			return apiErr(http.StatusBadRequest, fmt.Errorf("limit=%q: must be a number from 1 to %d", v, handlers.MaxPollLimit))
		}
	}
	_ = handlers.WritePage(w, bus, since, limit, AdminPageBytes) // a failed write: the client went away
	return nil
}
