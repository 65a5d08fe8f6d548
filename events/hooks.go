package events

import (
	"sync"
	"sync/atomic"
)

// changeHooks are the functions OnChange registered: a copy-on-write list,
// so that running them costs one atomic load when there are none.
type changeHooks struct {
	mu   sync.Mutex
	next uint64
	list atomic.Pointer[[]changeHook]
}

type changeHook struct {
	id uint64
	fn func()
}

// OnChange registers f to run each time there may be more to read for this
// process's pollers: in the poster's goroutine once a post by this process
// is in the ring (after Post, PostReader, PostBatch or PostRemote, before
// they return), in the delivery goroutine once it has read what other
// processes posted (once per batch it finds ready: at most wakeBatch
// events, at most wakeDelay after the first), and once at Close.
//
// It is how a poller with few streams writes an event to them from the
// goroutine that has just learnt of it, rather than waking a goroutine of
// its own to do it: one wake-up less between a post and a client. f runs
// synchronously, must not block, and must not post; it may read the ring
// (Range). remove unregisters f; f may still run once after remove returns
// when a call had already started.
func (b *Bus) OnChange(f func()) (remove func()) {
	h := &b.hooks
	h.mu.Lock()
	h.next++
	id := h.next
	var cur []changeHook
	if p := h.list.Load(); p != nil {
		cur = *p
	}
	list := append(cur[:len(cur):len(cur)], changeHook{id: id, fn: f})
	h.list.Store(&list)
	h.mu.Unlock()
	return func() {
		h.mu.Lock()
		defer h.mu.Unlock()
		p := h.list.Load()
		if p == nil {
			return
		}
		kept := make([]changeHook, 0, len(*p))
		for _, c := range *p {
			if c.id != id {
				kept = append(kept, c)
			}
		}
		h.list.Store(&kept)
	}
}

// runHooks runs the OnChange functions. Callers hold no lock of the bus:
// the functions read the ring.
func (b *Bus) runHooks() {
	p := b.hooks.list.Load()
	if p == nil {
		return
	}
	for _, c := range *p {
		c.fn()
	}
}
