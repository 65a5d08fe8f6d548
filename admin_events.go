package ipcbus

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"time"

	"github.com/caddyserver/caddy/v2"

	"github.com/ipcbus/caddy-ipcbus/events"
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

// EventJSON is one event in API answers. Data is embedded as JSON when the
// event was posted as JSON, else as a string.
type EventJSON struct {
	Seq        uint64          `json:"seq"`
	Source     string          `json:"source"`
	Event      string          `json:"event"`
	Data       json.RawMessage `json:"data"`
	PID        int             `json:"pid"`
	Generation int             `json:"generation"`
	Time       time.Time       `json:"time"`
	Unique     string          `json:"unique,omitempty"`
}

// NewEventJSON converts an event for an API answer.
func NewEventJSON(e *events.Event) EventJSON {
	return EventJSON{Seq: e.Seq, Source: e.Source, Event: e.Name, Data: DataJSON(e), PID: e.PID, Generation: e.Generation, Time: e.Time, Unique: e.Unique}
}

// DataJSON is an event's payload as a JSON value: itself when it was posted
// as JSON, else a JSON string of its bytes.
func DataJSON(e *events.Event) json.RawMessage {
	if e.JSON && json.Valid(e.Data) {
		return e.Data
	}
	if len(e.Data) == 0 && e.JSON {
		return json.RawMessage("null")
	}
	s, _ := json.Marshal(string(e.Data))
	return s
}

// EventsPage is the answer of GET /ipcbus/events.
type EventsPage struct {
	Events []EventJSON `json:"events"`
	// Next is the sequence to ask for next (the since of the next call).
	Next uint64 `json:"next"`
	// Lost counts events after since that the ring no longer holds.
	Lost uint64 `json:"lost"`
}

// StatusOf maps a bus error to its HTTP status.
func StatusOf(err error) int {
	switch {
	case errors.Is(err, events.ErrDuplicate):
		return http.StatusConflict
	case errors.Is(err, events.ErrTooLarge):
		return http.StatusRequestEntityTooLarge
	case errors.Is(err, events.ErrInvalid):
		return http.StatusBadRequest
	case errors.Is(err, events.ErrClosed):
		return http.StatusServiceUnavailable
	}
	return http.StatusInternalServerError
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
		return apiErr(StatusOf(err), err)
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
	page := EventsPage{Events: make([]EventJSON, 0, len(evs)), Next: next, Lost: lost}
	for i := range evs {
		page.Events = append(page.Events, NewEventJSON(&evs[i]))
	}
	return writeJSON(w, page)
}
