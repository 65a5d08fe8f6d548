// Package handlers holds the HTTP handlers of caddy-ipcbus: ipcbus_send,
// ipcbus_broadcast and ipcbus_poll (long-poll JSON and Server-Sent Events),
// with their Caddyfile directives, and the JSON shapes the admin API shares
// with them.
package handlers

import (
	"encoding/json"
	"errors"
	"net/http"
	"time"

	"github.com/ipcbus/caddy-ipcbus/events"
	"github.com/ipcbus/caddy-ipcbus/ipc"
)

// Bus is what the handlers need from the ipcbus app (the root package's
// App implements it): the running worker's events bus and alerts endpoint,
// nil while the app is not started.
type Bus interface {
	Bus() *events.Bus
	IPC() *ipc.IPC
	MaxPayloadBytes() int64
}

// EventJSON is one event in JSON answers. Data is embedded as JSON when the
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

// NewEventJSON converts an event for a JSON answer.
func NewEventJSON(e *events.Event) EventJSON {
	return EventJSON{Seq: e.Seq, Source: e.Source, Event: e.Name, Data: DataJSON(e), PID: e.PID, Generation: e.Generation, Time: e.Time, Unique: e.Unique}
}

// DataJSON is an event's payload as a JSON value: itself when it was posted
// as JSON, else a JSON string of its bytes.
func DataJSON(e *events.Event) json.RawMessage {
	if e.JSON && len(e.Data) == 0 {
		return json.RawMessage("null")
	}
	if e.JSON && json.Valid(e.Data) {
		return e.Data
	}
	s, _ := json.Marshal(string(e.Data))
	return s
}

// EventsPage is a page of events: the answer of GET /ipcbus/events and of
// an ipcbus_poll long-poll.
type EventsPage struct {
	Events []EventJSON `json:"events"`
	// Next is the sequence to ask for next (the since of the next call).
	Next uint64 `json:"next"`
	// Lost counts events after since that the ring no longer holds.
	Lost uint64 `json:"lost"`
}

// EventStatus maps an events bus error to its HTTP status.
func EventStatus(err error) int {
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

// AlertStatus maps an alert error to its HTTP status: 404 for a pid that is
// not a live worker, 413 for data over the limit, 400 for other bad input,
// 503 for a receiver that does not keep up.
func AlertStatus(err error) int {
	var nw ipc.NoWorkerError
	switch {
	case errors.As(err, &nw):
		return http.StatusNotFound
	case errors.Is(err, ipc.ErrTooLarge):
		return http.StatusRequestEntityTooLarge
	case errors.Is(err, ipc.ErrInvalid):
		return http.StatusBadRequest
	case errors.Is(err, ipc.ErrReceiverSlow), errors.Is(err, ipc.ErrClosed):
		return http.StatusServiceUnavailable
	}
	return http.StatusInternalServerError
}

// writeJSON writes v with a status.
func writeJSON(w http.ResponseWriter, status int, v any) error {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	return json.NewEncoder(w).Encode(v)
}

// writeError writes {"error": msg} with a status.
func writeError(w http.ResponseWriter, status int, err error) error {
	return writeJSON(w, status, map[string]string{"error": err.Error()})
}
