package events

import "sync"

// blobLogs remembers, for this process, the blobs whose loss has been
// logged: a blob that expired is met by every worker and by every poller
// that reads past it (each HTTP long-poll or stream that asks for it), and
// is logged once, not once per reader and request. It forgets everything
// when it is full; a blob is then logged at most once more.
var blobLogs = onceSet{max: 4096}

type onceSet struct {
	mu   sync.Mutex
	seen map[string]struct{}
	max  int
}

// first reports whether key is met for the first time.
func (s *onceSet) first(key string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.seen[key]; ok {
		return false
	}
	if s.seen == nil || len(s.seen) >= s.max {
		s.seen = make(map[string]struct{})
	}
	s.seen[key] = struct{}{}
	return true
}
