package ipcbus

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"

	"github.com/caddyserver/caddy/v2"

	"github.com/ipcbus/caddy-ipcbus/events"
	"github.com/ipcbus/caddy-ipcbus/handlers"
)

// PostRequest is the body of POST /ipcbus/events.
type PostRequest struct {
	Source string `json:"source"`
	Event  string `json:"event"`
	// Data is any JSON value. A JSON string is posted as its text; any
	// other value as JSON.
	Data json.RawMessage `json:"data,omitempty"`
	// Unique makes the event run-once (see unique_timeout).
	Unique string `json:"unique,omitempty"`
}

func apiErr(status int, err error) error { return caddy.APIError{HTTPStatus: status, Err: err} }

// runningBus returns the running app's bus and max payload.
func runningBus() (*events.Bus, int64, error) {
	a := current()
	if a == nil {
		return nil, 0, apiErr(http.StatusServiceUnavailable, errNotRunning)
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.bus == nil {
		return nil, 0, apiErr(http.StatusServiceUnavailable, errNotRunning)
	}
	return a.bus, a.MaxPayload, nil
}

func handleEvents(w http.ResponseWriter, r *http.Request) error {
	switch r.Method {
	case http.MethodGet:
		return getEvents(w, r)
	case http.MethodPost:
		return postEvent(w, r)
	}
	return apiErr(http.StatusMethodNotAllowed, errors.New("method not allowed: use GET to read events or POST to post one"))
}

func postEvent(w http.ResponseWriter, r *http.Request) error {
	bus, maxPayload, err := runningBus()
	if err != nil {
		return err
	}
	// JSON can spend up to six bytes on a payload byte (\u00XX).
	body, err := io.ReadAll(io.LimitReader(r.Body, 6*maxPayload+64<<10+1))
	if err != nil {
		return apiErr(http.StatusBadRequest, fmt.Errorf("reading the request body: %w", err))
	}
	if int64(len(body)) > 6*maxPayload+64<<10 {
		return apiErr(http.StatusRequestEntityTooLarge, fmt.Errorf("request body over %d bytes", 6*maxPayload+64<<10))
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
		return apiErr(handlers.EventStatus(err), err)
	}
	return writeJSON(w, map[string]uint64{"seq": seq})
}

func getEvents(w http.ResponseWriter, r *http.Request) error {
	bus, _, err := runningBus()
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
		if limit, err = strconv.Atoi(v); err != nil || limit < 1 || limit > 10000 {
			return apiErr(http.StatusBadRequest, fmt.Errorf("limit=%q: must be a number from 1 to 10000", v))
		}
	}
	evs, next, lost := bus.Range(since, limit)
	page := handlers.EventsPage{Events: make([]handlers.EventJSON, 0, len(evs)), Next: next, Lost: lost}
	for i := range evs {
		page.Events = append(page.Events, handlers.NewEventJSON(&evs[i]))
	}
	return writeJSON(w, page)
}
