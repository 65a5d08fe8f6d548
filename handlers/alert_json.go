package handlers

import (
	"encoding/json"
	"time"
)

// AlertJSON is one IPC alert as ipcbus_poll with alerts writes it: the
// data of each stream frame (`id: <seq>`, `event: <name>`, `data: <this
// object>`) and each element of a long-poll's "alerts".
type AlertJSON struct {
	// Seq is the alert's sequence number on the zone's ring (the stream's
	// id, for Last-Event-ID).
	Seq uint64 `json:"seq"`
	// Name is the alert's name.
	Name string `json:"name"`
	// Data is the alert's data as a JSON string: its text when it is
	// valid UTF-8, else its base64, with DataEncoding "base64".
	Data json.RawMessage `json:"data"`
	// DataEncoding is "base64" when Data is the base64 of binary data.
	DataEncoding string `json:"data_encoding,omitempty"`
	// PID and Generation name the sender's worker.
	PID        int `json:"pid"`
	Generation int `json:"generation"`
	// Time is when the alert was written to the ring.
	Time time.Time `json:"time"`
	// Broadcast reports an alert sent to every process.
	Broadcast bool `json:"broadcast"`
}

// AlertsPage is a long-poll answer of ipcbus_poll with alerts.
type AlertsPage struct {
	// Alerts are the page's alerts, oldest first.
	Alerts []AlertJSON `json:"alerts"`
	// Next is the sequence to ask for next (the since of the next call).
	Next uint64 `json:"next"`
	// Lost counts alerts after since that the ring no longer holds.
	Lost uint64 `json:"lost"`
}
