package handlers

import (
	"fmt"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/ipcbus/caddy-ipcbus/ipc"
)

// alertStreams counts the alert name patterns of this process's
// ipcbus_poll handlers with alerts (while they live), so that an alert
// they stream counts as received rather than unhandled. Readers load an
// immutable slice.
var alertStreams = struct {
	mu   sync.Mutex
	refs map[string]int
	cur  atomic.Pointer[[]string]
}{refs: map[string]int{}}

// watchAlerts counts patterns until the returned release is called.
func watchAlerts(patterns []string) (release func()) {
	as := &alertStreams
	as.mu.Lock()
	defer as.mu.Unlock()
	for _, p := range patterns {
		as.refs[p]++
	}
	publishAlertPatternsLocked()
	var once sync.Once
	return func() {
		once.Do(func() {
			as.mu.Lock()
			defer as.mu.Unlock()
			for _, p := range patterns {
				if as.refs[p]--; as.refs[p] <= 0 {
					delete(as.refs, p)
				}
			}
			publishAlertPatternsLocked()
		})
	}
}

func publishAlertPatternsLocked() {
	ps := make([]string, 0, len(alertStreams.refs))
	for p := range alertStreams.refs {
		ps = append(ps, p)
	}
	alertStreams.cur.Store(&ps)
}

// AlertStreamsWant reports whether an ipcbus_poll handler of this process
// streams alerts named name (whether a client is connected or not).
func AlertStreamsWant(name string) bool {
	ps := alertStreams.cur.Load()
	if ps == nil {
		return false
	}
	for _, p := range *ps {
		if MatchAlertName(p, name) {
			return true
		}
	}
	return false
}

// MatchAlertName reports whether an alert name matches a pattern: exact,
// or a prefix ending in "*" ("*" alone matches every name).
func MatchAlertName(pattern, name string) bool {
	if p, ok := strings.CutSuffix(pattern, "*"); ok {
		return strings.HasPrefix(name, p)
	}
	return pattern == name
}

// checkAlertPattern checks an alert name pattern: a name of 1 to 254
// bytes, or a prefix of one ending in *; * nowhere else.
func checkAlertPattern(p string) error {
	n, _ := strings.CutSuffix(p, "*")
	switch {
	case p == "":
		return fmt.Errorf("an alert name pattern is empty; give a name, a prefix ending in * or * for every alert")
	case len(n) > ipc.MaxNameLen:
		return fmt.Errorf("alert name %.20q… is %d bytes, alert names have at most %d", p, len(n), ipc.MaxNameLen)
	case strings.Contains(n, "*"):
		return fmt.Errorf("alert name pattern %q: * is allowed only at the end (a prefix)", p)
	}
	return nil
}

// CheckAlertPattern checks a configured alert name pattern (see
// MatchAlertName).
func CheckAlertPattern(p string) error { return checkAlertPattern(p) }
