package handlers

import (
	"fmt"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/ipcbus/caddy-ipcbus/events"
)

// Reserved names. The sources "ipcbus" and "ipcbus.*" carry the bus's own
// events and the worker lifecycle, and the sources of the ipcbus_forward
// event handlers ("caddy" by default) carry Caddy's events: Go handlers on
// every worker act on them. Over HTTP they cannot be posted, and
// ipcbus_poll streams them only where a route's configured source filter
// names them. Event names starting with "ipcbus." are the server's own
// notices on streams (ipcbus.lost): they cannot be posted over HTTP either.
const (
	// ReservedPrefix is the event name prefix of server notices.
	ReservedPrefix = "ipcbus."
	// NoticeLost names the SSE notice of events the ring no longer holds.
	NoticeLost = ReservedPrefix + "lost"
	// DefaultForwardSource is the default source of ipcbus_forward.
	DefaultForwardSource = "caddy"
)

// sourceSet counts the sources of this process's ipcbus_forward handlers
// (besides the default, always reserved). Readers on the hot path load an
// immutable map.
type sourceSet struct {
	mu   sync.Mutex
	refs map[string]int
	cur  atomic.Pointer[map[string]bool]
}

var forwardSources = sourceSet{refs: map[string]int{}}

// ReserveSource reserves an event source for as long as the returned
// release has not been called: ipcbus_forward calls it for its source.
func ReserveSource(source string) (release func()) {
	fs := &forwardSources
	fs.mu.Lock()
	defer fs.mu.Unlock()
	fs.refs[source]++
	fs.publishLocked()
	var once sync.Once
	return func() {
		once.Do(func() {
			fs.mu.Lock()
			defer fs.mu.Unlock()
			if fs.refs[source]--; fs.refs[source] <= 0 {
				delete(fs.refs, source)
			}
			fs.publishLocked()
		})
	}
}

func (fs *sourceSet) publishLocked() {
	m := make(map[string]bool, len(fs.refs))
	for s := range fs.refs {
		m[s] = true
	}
	fs.cur.Store(&m)
}

// reservedRoot returns the reserved name a source falls under ("ipcbus"
// for "ipcbus" and "ipcbus.*", the source itself for a forwarder's), or
// "" for a source anyone may use.
func reservedRoot(source string) string { return reservedRootOf(source, true) }

func reservedRootOf(source string, forwarders bool) string {
	if source == events.Source || strings.HasPrefix(source, events.Source+".") {
		return events.Source
	}
	if source == DefaultForwardSource {
		return source
	}
	if !forwarders {
		return ""
	}
	if m := forwardSources.cur.Load(); m != nil && (*m)[source] {
		return source
	}
	return ""
}

// IsReservedSource reports whether source is reserved (see ReservedPrefix).
func IsReservedSource(source string) bool { return reservedRoot(source) != "" }

// checkPublish refuses, over HTTP, the reserved sources and the notice
// names; without forwarders, only "ipcbus", "ipcbus.*" and "caddy".
func checkPublish(source, event string, forwarders bool) error {
	if reservedRootOf(source, forwarders) != "" {
		return fmt.Errorf("%w: source %q is reserved for the server's own events (ipcbus, ipcbus.*, and the sources of ipcbus_forward) and cannot be posted over HTTP", events.ErrInvalid, source)
	}
	if strings.HasPrefix(event, ReservedPrefix) {
		return fmt.Errorf("%w: event %q: names starting with %q are reserved for the server's notices and cannot be posted over HTTP", events.ErrInvalid, event, ReservedPrefix)
	}
	return nil
}

// explicitFor reports whether a configured source pattern names the
// reserved source s explicitly: it matches s and its literal part (before
// a trailing *) covers the whole reserved name, as "ipcbus.workers",
// "ipcbus.*", "ipcbus*" or "caddy" do, and "*" or "ipc*" do not. A pattern
// with a placeholder never does: the request would choose it.
func explicitFor(pattern, s, root string) bool {
	if hasPlaceholder(pattern) || !match([]string{pattern}, s) {
		return false
	}
	return len(strings.TrimSuffix(pattern, "*")) >= len(root)
}

// SourceMatches reports whether an event source matches a configured
// pattern (exact, or a prefix ending in *), a reserved source only when
// the pattern names it explicitly ("ipcbus.workers", "ipcbus.*",
// "caddy"; not "*"), as for ipcbus_poll's configured sources.
func SourceMatches(pattern, source string) bool {
	if !match([]string{pattern}, source) {
		return false
	}
	if root := reservedRoot(source); root != "" {
		return explicitFor(pattern, source, root)
	}
	return true
}
