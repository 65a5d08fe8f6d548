package handlers

import (
	"net/http"

	"github.com/ipcbus/caddy-ipcbus/ipc"
)

// alertReader reads the alerts to this process (and the broadcasts) from
// the ring one at a time, a blob's data as its open file, as reader does
// events.
type alertReader struct {
	c    *ipc.IPC
	keep func(name string) bool
}

func (p alertReader) changed() <-chan struct{} { return p.c.Changed() }
func (p alertReader) closed() bool             { return p.c.Closed() }

func (p alertReader) read(since uint64) (*event, uint64, uint64) {
	return readOne(since, func(from uint64) ([]ipc.AlertRef, uint64, uint64) { return p.c.Range(from, 1, p.keep) },
		func(a *ipc.AlertRef) (*event, error) { return openAlert(p.c, a) })
}

// alertFilter keeps the alerts whose name matches a configured pattern
// and, when the request has "name" parameters (several, or
// comma-separated; each exact or a prefix ending in *), one of those too.
func (h *Poll) alertFilter(r *http.Request) func(string) bool {
	asked, _ := values(r, nil, "name")
	return func(name string) bool {
		return matchAny(h.Alerts, name) && (len(asked) == 0 || matchAny(asked, name))
	}
}

func matchAny(patterns []string, name string) bool {
	for _, p := range patterns {
		if MatchAlertName(p, name) {
			return true
		}
	}
	return false
}
