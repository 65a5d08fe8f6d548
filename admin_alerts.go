package ipcbus

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"

	"github.com/ipcbus/caddy-ipcbus/handlers"
	"github.com/ipcbus/caddy-ipcbus/ipc"
)

// handleSend serves POST /ipcbus/send?pid=P&name=N and
// POST /ipcbus/broadcast?name=N; the body is the alert's data.
func handleSend(w http.ResponseWriter, r *http.Request) error {
	if r.Method != http.MethodPost {
		return apiErr(http.StatusMethodNotAllowed, errors.New("method not allowed: use POST with the alert's data as the body"))
	}
	a := current()
	if a == nil {
		return apiErr(http.StatusServiceUnavailable, errNotRunning)
	}
	c := a.IPC()
	if c == nil {
		return apiErr(http.StatusServiceUnavailable, errNotRunning)
	}
	q := r.URL.Query()
	name := q.Get("name")
	broadcast := r.URL.Path == "/ipcbus/broadcast"
	pid := 0
	if !broadcast {
		v := q.Get("pid")
		n, err := strconv.Atoi(v)
		if err != nil || n <= 0 {
			return apiErr(http.StatusBadRequest, fmt.Errorf("pid=%q: give the pid of a Caddy process of the node", v))
		}
		pid = n
	}
	body, err := io.ReadAll(io.LimitReader(r.Body, ipc.MaxDataLen+1))
	if err != nil {
		return apiErr(http.StatusBadRequest, fmt.Errorf("reading the request body: %w", err))
	}
	if len(body) > ipc.MaxDataLen {
		return apiErr(http.StatusRequestEntityTooLarge, fmt.Errorf("alert data length cannot exceed %d, was more", int64(ipc.MaxDataLen)))
	}
	if broadcast {
		err = c.Broadcast(name, body)
	} else {
		err = c.Send(pid, name, body)
	}
	if err != nil {
		return apiErr(handlers.AlertStatus(err), err)
	}
	return writeJSON(w, map[string]bool{"ok": true})
}
