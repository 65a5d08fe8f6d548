package events

import (
	"fmt"
	"slices"
	"strings"
)

// Handler handles an event. It runs on the worker's delivery goroutine, so
// a slow handler delays the events after it (order is kept).
type Handler func(*Event)

// ID names a registration, for Unregister.
type ID uint64

type sourceEvent struct{ source, event string }

type entry struct {
	id ID
	fn Handler
}

// registry is copied on every change and read without locks by dispatch.
type registry struct {
	all      []*entry
	bySource map[string][]*entry
	byEvent  map[sourceEvent][]*entry
}

func (r *registry) clone() *registry {
	c := &registry{all: slices.Clone(r.all), bySource: map[string][]*entry{}, byEvent: map[sourceEvent][]*entry{}}
	for k, v := range r.bySource {
		c.bySource[k] = slices.Clone(v)
	}
	for k, v := range r.byEvent {
		c.byEvent[k] = slices.Clone(v)
	}
	return c
}

// Register adds a handler: for every event when source is empty, for every
// event of source when no event names are given, else for those events of
// source. It returns the ID that Unregister takes.
func (b *Bus) Register(h Handler, source string, events ...string) ID {
	b.regMu.Lock()
	defer b.regMu.Unlock()
	e := &entry{id: ID(b.ids.Add(1)), fn: h}
	r := b.reg.Load().clone()
	switch {
	case source == "":
		r.all = append(r.all, e)
	case len(events) == 0:
		r.bySource[source] = append(r.bySource[source], e)
	default:
		for _, ev := range events {
			k := sourceEvent{source, ev}
			r.byEvent[k] = append(r.byEvent[k], e)
		}
	}
	b.reg.Store(r)
	return e.id
}

// Unregister removes a registration and reports whether there was one.
// (Go functions cannot be compared, so registrations are named by the ID
// Register returned; lua-resty-worker-events' register_weak has no use in
// Go, where a handler is kept alive by its registration by design.)
func (b *Bus) Unregister(id ID) bool {
	b.regMu.Lock()
	defer b.regMu.Unlock()
	r := b.reg.Load().clone()
	found := false
	drop := func(list []*entry) []*entry {
		return slices.DeleteFunc(list, func(e *entry) bool {
			if e.id == id {
				found = true
				return true
			}
			return false
		})
	}
	r.all = drop(r.all)
	for k, v := range r.bySource {
		if r.bySource[k] = drop(v); len(r.bySource[k]) == 0 {
			delete(r.bySource, k)
		}
	}
	for k, v := range r.byEvent {
		if r.byEvent[k] = drop(v); len(r.byEvent[k]) == 0 {
			delete(r.byEvent, k)
		}
	}
	if found {
		b.reg.Store(r)
	}
	return found
}

// EventList is a fixed set of event names of one source, like
// lua-resty-worker-events' event_list: using a name that is not in it is an
// error, not a typo that silently never matches.
type EventList struct {
	source string
	names  map[string]bool
}

// NewEventList makes an event list; source and names must be valid and
// the names distinct.
func NewEventList(source string, names ...string) (*EventList, error) {
	if err := validName("source", source); err != nil {
		return nil, err
	}
	l := &EventList{source: source, names: map[string]bool{}}
	for _, n := range names {
		if err := validName("event", n); err != nil {
			return nil, err
		}
		if l.names[n] {
			return nil, invalid("event %q is listed twice", n)
		}
		l.names[n] = true
	}
	return l, nil
}

// Source is the list's source.
func (l *EventList) Source() string { return l.source }

// Event returns name if it is in the list, else an error naming the allowed ones.
func (l *EventList) Event(name string) (string, error) {
	if !l.names[name] {
		allowed := make([]string, 0, len(l.names))
		for n := range l.names {
			allowed = append(allowed, n)
		}
		slices.Sort(allowed)
		return "", fmt.Errorf("%w: unknown event %q in the event list of %q; known: %s", ErrInvalid, name, l.source, strings.Join(allowed, ", "))
	}
	return name, nil
}

// Post posts an event of the list.
func (l *EventList) Post(b *Bus, name string, data any, opts ...PostOption) (uint64, error) {
	if _, err := l.Event(name); err != nil {
		return 0, err
	}
	return b.Post(l.source, name, data, opts...)
}

// Register registers h for the named events of the list (all of them when
// none are named).
func (l *EventList) Register(b *Bus, h Handler, names ...string) (ID, error) {
	for _, n := range names {
		if _, err := l.Event(n); err != nil {
			return 0, err
		}
	}
	return b.Register(h, l.source, names...), nil
}
