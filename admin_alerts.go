package ipcbus

import (
	"net/http"

	"github.com/ipcbus/caddy-ipcbus/handlers"
	"github.com/ipcbus/caddy-ipcbus/zone"
)

// AdminMaxBody is the largest request body of the admin API's POST
// endpoints, in bytes: 1MiB. For /ipcbus/send and /ipcbus/broadcast (the
// body is the alert's data) it is also never more than the app's
// max_payload; for /ipcbus/events (a JSON document) the bus then checks
// the payload against max_payload. (Caddy's own /load takes up to 100MB.)
// Beyond it the answer is 413, at once when the request says its length.
const AdminMaxBody = handlers.DefaultMaxSize

// handleSend serves POST /ipcbus/send?pid=P&name=N and
// POST /ipcbus/broadcast?name=N; the body is the alert's data. It takes
// the same path as the ipcbus_send and ipcbus_broadcast handlers.
func handleSend(w http.ResponseWriter, r *http.Request) error {
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		return apiErr(http.StatusMethodNotAllowed, errMethodPost)
	}
	a := current()
	if a == nil {
		return apiErr(http.StatusServiceUnavailable, errNotRunning)
	}
	q := r.URL.Query()
	broadcast := r.URL.Path == "/ipcbus/broadcast"
	if err := handlers.SendAlert(w, r, a, broadcast, q.Get("pid"), q.Get("name"), min(AdminMaxBody, a.MaxPayloadBytes())); err != nil {
		return apiErr(err.Status, err.Err)
	}
	return writeJSON(w, map[string]bool{"ok": true})
}

// LiveWorker reports whether pid is a live (or hung) worker of the node:
// the HTTP send path checks it before it reads a request's body.
func (a *App) LiveWorker(pid int) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.zone == nil || pid <= 0 {
		return false
	}
	for i := 0; i < a.zone.Workers(); i++ {
		s := a.zone.Worker(i)
		if st := s.State.Load(); (st == zone.WorkerLive || st == zone.WorkerHung) && int(s.PID.Load()) == pid {
			return true
		}
	}
	return false
}
