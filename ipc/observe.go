package ipc

// Observer sees the alerts delivered to a worker besides their handler:
// the ipcbus app's configured reactions (on_alert actions, emission into
// Caddy's events, ipcbus_poll alert streams) use it, so that they neither
// replace nor are replaced by the handlers Go code registers.
type Observer interface {
	// Wants reports whether the observer takes alerts named name. It is
	// called for every alert delivered, on the delivery goroutine: keep it
	// cheap.
	Wants(name string) bool
	// Alert is called, on the delivery goroutine and before the alert's
	// handler (if any), with an alert Wants took, its data whole (read
	// from its blob file if it has one). a.Data is valid only during the
	// call: copy what is kept. It must not block for long: the alerts
	// after it wait.
	Alert(a *Alert)
}

// SetObserver sets the observer of this worker's alerts; nil removes it.
// An alert that the observer takes and no handler handles is received,
// not unhandled.
func (c *IPC) SetObserver(o Observer) {
	if o == nil {
		c.observer.Store(nil)
		return
	}
	c.observer.Store(&o)
}
