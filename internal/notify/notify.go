// Package notify wakes the goroutines that wait for more to read (HTTP
// long-polls and streams) when a delivery goroutine has read on: the
// events bus and the alerts share it.
package notify

import (
	"sync"
	"sync/atomic"
)

// Notifier hands out a channel that is closed at the next Notify. The
// zero value is ready to use.
type Notifier struct {
	watched atomic.Bool // someone waits on a channel from Changed
	mu      sync.Mutex
	ch      chan struct{}
}

// Changed returns a channel closed at the next Notify: take it before
// looking for more, wait on it when there was nothing.
func (n *Notifier) Changed() <-chan struct{} {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.ch == nil {
		n.ch = make(chan struct{})
	}
	n.watched.Store(true)
	return n.ch
}

// Watched reports whether a channel from Changed is waiting to be closed:
// a delivery goroutine checks it (one atomic load) before Notify.
func (n *Notifier) Watched() bool { return n.watched.Load() }

// Notify closes the channel Changed handed out, if any.
func (n *Notifier) Notify() {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.watched.Store(false)
	if n.ch != nil {
		close(n.ch)
		n.ch = nil
	}
}
