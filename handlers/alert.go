package handlers

import (
	"fmt"
	"net/http"
	"strconv"

	"github.com/ipcbus/caddy-ipcbus/ipc"
)

// SendAlert is the one path of an IPC alert sent over HTTP, for
// ipcbus_send, ipcbus_broadcast { alert } and the admin API's
// /ipcbus/send and /ipcbus/broadcast: it checks what costs nothing first
// (the app running, the pid, the name, the pid being a live worker of the
// node), then sends the body as the alert's data to pid, or to every
// process with broadcast, streaming it (at most maxSize bytes; a
// Content-Length over it is refused before anything is read; a large body
// goes to a blob file as it arrives, never held whole). On success it
// writes nothing: the caller answers {"ok": true} its own way.
func SendAlert(w http.ResponseWriter, r *http.Request, app Bus, broadcast bool, pid, name string, maxSize int64) *Error {
	early := func(status int, err error) *Error { // answered before the body is read
		answerEarly(w, r)
		return httpErr(status, err)
	}
	c := app.IPC()
	if c == nil {
		return early(http.StatusServiceUnavailable, errNotRunning)
	}
	to := 0
	if !broadcast {
		n, err := strconv.Atoi(pid)
		if err != nil || n <= 0 {
			return early(http.StatusBadRequest, fmt.Errorf("pid %q is not a process id: give the pid of a Caddy process of the node", pid))
		}
		to = n
	}
	if err := checkAlertName(name); err != nil {
		return early(http.StatusBadRequest, err)
	}
	if !broadcast && !app.LiveWorker(to) {
		return early(http.StatusNotFound, ipc.NoWorkerError{PID: to})
	}
	body, size, herr := BodyReader(w, r, maxSize)
	if herr != nil {
		return herr
	}
	var err error
	if broadcast {
		err = c.BroadcastReader(name, body, size)
	} else {
		err = c.SendReader(to, name, body, size)
	}
	if err != nil {
		if herr := streamError(w, r, maxSize, err); herr != nil {
			return herr
		}
		return httpErr(AlertStatus(err), err)
	}
	return nil
}
