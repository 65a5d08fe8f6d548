// Package handlers holds the HTTP handlers of caddy-ipcbus: ipcbus_send,
// ipcbus_broadcast and ipcbus_poll (long-poll JSON, Server-Sent Events and
// WebSocket), with their Caddyfile directives, and the request paths,
// limits and JSON shapes the admin API shares with them.
package handlers

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"net/http"
	"time"
	"unicode/utf8"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/ipcbus/caddy-ipcbus/events"
	"github.com/ipcbus/caddy-ipcbus/ipc"
	"github.com/ipcbus/caddy-ipcbus/zone"
)

// Bus is what the handlers need from the ipcbus app (the root package's
// App implements it): the running worker's events bus and alerts endpoint,
// nil while the app is not started, and a few settings and checks.
type Bus interface {
	Bus() *events.Bus
	IPC() *ipc.IPC
	// MaxPayloadBytes is the app's max_payload.
	MaxPayloadBytes() int64
	// UniqueKeyTimeout is how long a run-once key stays taken (the app's
	// unique_timeout); a full key table is retried after it.
	UniqueKeyTimeout() time.Duration
	// LiveWorker reports whether pid is a live (or hung) worker of the
	// node, so that a send to nobody is refused before its body is read.
	LiveWorker(pid int) bool
}

// EncodingBase64 is the value of EventJSON.DataEncoding for a payload that
// is neither JSON nor valid UTF-8 text: Data is then a JSON string of its
// bytes in standard base64.
const EncodingBase64 = "base64"

// EventJSON is one event in JSON answers. Data is embedded as JSON when the
// event was posted as JSON, else as a string: the text itself when it is
// valid UTF-8, else its base64, with DataEncoding "base64".
type EventJSON struct {
	// Seq is the event's sequence number.
	Seq uint64 `json:"seq"`
	// Source and Event are what it was posted with.
	Source string `json:"source"`
	Event  string `json:"event"`
	// Data is the payload.
	Data json.RawMessage `json:"data"`
	// DataEncoding is "base64" when Data is the base64 of a binary payload.
	DataEncoding string `json:"data_encoding,omitempty"`
	// PID and Generation name the poster's worker.
	PID        int `json:"pid"`
	Generation int `json:"generation"`
	// Time is when the event was committed to the ring.
	Time time.Time `json:"time"`
	// Unique is its run-once key, if any.
	Unique string `json:"unique,omitempty"`
	// Node is, for an event posted on another host of the fleet, that
	// host's node id (PID, Generation and Time are then the poster's there).
	Node string `json:"node,omitempty"`
}

// NewEventJSON converts an event for a JSON answer.
func NewEventJSON(e *events.Event) EventJSON {
	data, enc := dataJSON(e)
	return EventJSON{Seq: e.Seq, Source: e.Source, Event: e.Name, Data: data, DataEncoding: enc, PID: e.PID, Generation: e.Generation, Time: e.Time, Unique: e.Unique, Node: e.Node}
}

// DataJSON is an event's payload as a JSON value: itself when it was posted
// as JSON, else a JSON string of its text, or of its base64 when it is not
// valid UTF-8 (see NewEventJSON, which says so in DataEncoding).
func DataJSON(e *events.Event) json.RawMessage {
	d, _ := dataJSON(e)
	return d
}

func dataJSON(e *events.Event) (json.RawMessage, string) {
	switch dataKind(e) {
	case kindNull:
		return json.RawMessage("null"), ""
	case kindJSON:
		return e.Data, ""
	case kindText:
		s, _ := json.Marshal(string(e.Data))
		return s, ""
	}
	s, _ := json.Marshal(base64.StdEncoding.EncodeToString(e.Data))
	return s, EncodingBase64
}

// How a payload is carried in JSON.
const (
	kindNull = iota
	kindJSON
	kindText
	kindBinary
)

func dataKind(e *events.Event) int {
	switch {
	case e.JSON && len(e.Data) == 0:
		return kindNull
	case e.JSON && json.Valid(e.Data):
		return kindJSON
	case utf8.Valid(e.Data):
		return kindText
	}
	return kindBinary
}

// EventsPage is a page of events: the answer of GET /ipcbus/events and of
// an ipcbus_poll long-poll.
type EventsPage struct {
	// Events are the page's events, oldest first.
	Events []EventJSON `json:"events"`
	// Next is the sequence to ask for next (the since of the next call).
	Next uint64 `json:"next"`
	// Lost counts events after since that the ring no longer holds.
	Lost uint64 `json:"lost"`
}

// EventStatus maps an events bus error to its HTTP status. (PostError
// also sets Retry-After for a full run-once key table.)
func EventStatus(err error) int {
	switch {
	case errors.Is(err, events.ErrDuplicate):
		return http.StatusConflict
	case errors.Is(err, events.ErrTooLarge):
		return http.StatusRequestEntityTooLarge
	case errors.Is(err, events.ErrInvalid):
		return http.StatusBadRequest
	case errors.Is(err, events.ErrClosed), errors.Is(err, zone.ErrUniqueTableFull), errors.Is(err, events.ErrUnavailable):
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

// writeJSON writes v with a status. A failed write means the client went
// away; nothing more can be said to it, and it is no server error.
func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

// writeError writes {"error": msg} with the error's status.
//
// The handlers answer failures themselves, as JSON with the right status,
// rather than returning a caddyhttp.Error: API clients get a body they can
// parse, and a 4xx of the protocol (a duplicate key, a body over the
// limit) is no server error to log. The access log still shows the
// status, and the message is left in the request variable ipcbus.error
// ({http.vars.ipcbus.error}, e.g. for log_append). handle_errors routes do
// not run for them.
func writeError(w http.ResponseWriter, r *http.Request, e *Error) {
	caddyhttp.SetVar(r.Context(), "ipcbus.error", e.Err.Error())
	writeJSON(w, e.Status, map[string]string{"error": e.Err.Error()})
}
