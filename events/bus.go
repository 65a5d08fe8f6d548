package events

import (
	"crypto/rand"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/ipcbus/caddy-ipcbus/internal/goid"
	"github.com/ipcbus/caddy-ipcbus/internal/notify"
	"github.com/ipcbus/caddy-ipcbus/zone"
)

// Defaults of Options.
const (
	DefaultUniqueTimeout = 2 * time.Second
	DefaultMaxPayload    = 64 << 20
	DefaultInlineLimit   = 64 << 10
	DefaultBlobTTL       = time.Minute
	// MaxPayloadLimit is the largest payload any config may allow, the
	// limit of ngx_lua_ipc alerts.
	MaxPayloadLimit = 4294967040
	// maxLocalQueue bounds the events posted locally and not yet handled.
	maxLocalQueue = 1 << 16
)

// Source is the source of the bus's own events.
const Source = "ipcbus"

// The bus's own events (source "ipcbus").
const (
	// EventStarted is posted (to every worker) when a worker's bus starts.
	EventStarted = "started"
	// EventStopping is posted (to every worker) when a worker's bus stops.
	EventStopping = "stopping"
	// EventLost is posted locally when this worker lost events: its Value
	// is a Loss.
	EventLost = "lost"
)

// Errors.
var (
	// ErrDuplicate is the distinct result of a unique post whose key was
	// already posted within unique_timeout.
	ErrDuplicate = errors.New("duplicate unique key: an event with this key was already posted within unique_timeout")
	// ErrTooLarge is returned for a payload over the configured limit.
	ErrTooLarge = errors.New("event payload too large")
	// ErrClosed is returned by a bus that was closed.
	ErrClosed = errors.New("events bus is closed")
	// ErrRecursive is returned by Poll called from a handler.
	ErrRecursive = errors.New("recursive: Poll was called from an event handler")
	// ErrInvalid wraps every validation error of a post.
	ErrInvalid = errors.New("invalid event")
	// ErrBlobQuota is returned (wrapped) for a payload that would take the
	// zone's blob files over the blob quota (HTTP 507). It is
	// zone.ErrBlobQuota.
	ErrBlobQuota = zone.ErrBlobQuota
	// ErrRead is returned (wrapped, with the reader's error) by PostReader
	// when its reader fails, or ends before or goes on after the size
	// given. It is zone.ErrRead.
	ErrRead = zone.ErrRead
)

// Options configure a Bus.
type Options struct {
	// Zone carries the events. Required.
	Zone *zone.Zone
	// PID and Generation name this worker as the sender of its events.
	PID, Generation int
	// Nonce is this worker's incarnation nonce, used to take unique events.
	// 0 picks a random one.
	Nonce uint64
	// UniqueTimeout is how long a unique key stays taken. Default 2s.
	UniqueTimeout time.Duration
	// MaxPayload is the largest payload accepted. Default 64MiB, at most 4294967040.
	MaxPayload int64
	// InlineLimit is the largest payload carried in the ring itself; larger
	// ones go to a blob file. Default 64KiB, capped by the ring's record limit.
	InlineLimit int
	// WaitMax is how long delivery waits for an event whose poster has
	// reserved but not committed it before skipping it as lost. Default 500ms.
	WaitMax time.Duration
	// Spin is how long, at most, delivery keeps checking for the next
	// event, yielding the CPU between checks, before it sleeps on the zone
	// doorbell. Default 50µs: bursts are read without a wake-up per event.
	// A window longer than the usual gap between events buys microsecond
	// latency with CPU. The window adapts (zone.Reader.SetSpin): no spin
	// while sleeps last longer than it, the full window once events come
	// sooner.
	Spin time.Duration
	// BlobTTL is how long blob files are kept. Default 1m.
	BlobTTL time.Duration
	// OnCursor, if set, is told the next sequence this worker will handle
	// after each event (to publish the worker's lag).
	OnCursor func(next uint64)
	// Logger gets the bus's logs; nil discards them.
	Logger *zap.Logger
}

// Loss describes events this worker will never handle.
type Loss struct {
	// From is the sequence of the first lost event, Count how many.
	From  uint64 `json:"from"`
	Count uint64 `json:"count"`
	// Reason is "overrun" (this worker fell a whole ring behind) or "gap"
	// (a poster died, or stalled past wait_max, mid-write).
	Reason string `json:"reason"`
}

// Stats are a bus's counters.
type Stats struct {
	Posted      uint64 `json:"posted"`
	PostedLocal uint64 `json:"posted_local"`
	PostErrors  uint64 `json:"post_errors"`
	Duplicates  uint64 `json:"duplicates"`
	// UniqueTableFull counts unique posts refused because the zone's
	// run-once key table was full (zone.ErrUniqueTableFull; HTTP 503).
	UniqueTableFull uint64 `json:"unique_table_full"`
	Delivered       uint64 `json:"delivered"`
	HandlerCalls    uint64 `json:"handler_calls"`
	HandlerPanics   uint64 `json:"handler_panics"`
	UniqueSkipped   uint64 `json:"unique_skipped"`
	LostOverrun     uint64 `json:"lost_overrun"`
	LostGap         uint64 `json:"lost_gap"`
	Malformed       uint64 `json:"malformed"`
	BlobsWritten    uint64 `json:"blobs_written"`
	BlobsRead       uint64 `json:"blobs_read"`
	BlobErrors      uint64 `json:"blob_errors"`
	// BlobQuotaExceeded counts posts refused because their payload would
	// have taken the zone's blob files over the blob quota.
	BlobQuotaExceeded uint64 `json:"blob_quota_exceeded"`
	LocalQueueFull    uint64 `json:"local_queue_full"`
}

// Add adds o's counters to s.
func (s *Stats) Add(o Stats) {
	s.Posted += o.Posted
	s.PostedLocal += o.PostedLocal
	s.PostErrors += o.PostErrors
	s.Duplicates += o.Duplicates
	s.UniqueTableFull += o.UniqueTableFull
	s.Delivered += o.Delivered
	s.HandlerCalls += o.HandlerCalls
	s.HandlerPanics += o.HandlerPanics
	s.UniqueSkipped += o.UniqueSkipped
	s.LostOverrun += o.LostOverrun
	s.LostGap += o.LostGap
	s.Malformed += o.Malformed
	s.BlobsWritten += o.BlobsWritten
	s.BlobsRead += o.BlobsRead
	s.BlobErrors += o.BlobErrors
	s.BlobQuotaExceeded += o.BlobQuotaExceeded
	s.LocalQueueFull += o.LocalQueueFull
}

// Bus is one worker's handle on the events bus.
type Bus struct {
	o      Options
	z      *zone.Zone
	ring   *zone.Ring
	h      *zone.Handle
	log    *zap.Logger
	rd     *zone.Reader
	inline int

	reg   atomic.Pointer[registry]
	regMu sync.Mutex
	ids   atomic.Uint64

	mu        sync.Mutex  // guards local, barriers, state
	localWork atomic.Bool // local or barriers not empty: set under mu
	local     []localItem
	barriers  []barrier
	started   bool
	closed    bool

	stop    atomic.Bool
	done    chan struct{}
	rmu     sync.RWMutex    // posts and pollers hold it to use the zone
	shut    bool            // set under rmu by Detach
	changes notify.Notifier // for the waiters on Changed
	hooks   changeHooks     // OnChange's
	// woken marks the recent events this process posted, whose posters
	// wake the waiters themselves (Notify, then the OnChange functions):
	// slot seq%len holds seq+1. The delivery goroutine does not wake them
	// again for those; a slot taken by a later post before it looks only
	// costs a wake-up.
	woken [64]atomic.Uint64
	// loopGID is the delivery goroutine's id, and handling is set while
	// one of its handlers runs: Poll from a handler must fail, not wait for
	// itself. Nothing but the goroutine's id tells a handler's Poll from
	// another goroutine's made meanwhile (which must wait): a handler gets
	// its *Event, but Poll is a Bus method any code it calls may reach. So
	// the id, read once by the loop, is compared only while a handler runs:
	// Poll parses its own stack then only (internal/goid), never on posts.
	loopGID  atomic.Uint64
	handling atomic.Bool
	handled  atomic.Uint64 // the next sequence to handle
	st       counters
	unblock  chan struct{}
	lastTick time.Time
	claimer  atomic.Pointer[ClaimFunc]
}

type counters struct {
	posted, postedLocal, postErrors, duplicates, uniqueFull, delivered, calls, panics, uniqueSkipped,
	lostOverrun, lostGap, malformed, blobsWritten, blobsRead, blobErrors, blobQuota, localFull atomic.Uint64
}

type localItem struct {
	ev      Event
	barrier chan struct{} // a Poll marker when non-nil
}

type barrier struct {
	target uint64
	done   chan struct{}
}

// New makes a bus for one worker. Events posted from now on (and before
// Start) are delivered to it once it starts.
func New(o Options) (*Bus, error) {
	if o.Zone == nil {
		return nil, errors.New("events: Options.Zone is required")
	}
	if o.UniqueTimeout == 0 {
		o.UniqueTimeout = DefaultUniqueTimeout
	}
	if o.MaxPayload == 0 {
		o.MaxPayload = DefaultMaxPayload
	}
	if o.InlineLimit == 0 {
		o.InlineLimit = DefaultInlineLimit
	}
	if o.WaitMax == 0 {
		o.WaitMax = zone.DefaultWaitMax
	}
	if o.BlobTTL == 0 {
		o.BlobTTL = DefaultBlobTTL
	}
	if o.Spin == 0 {
		o.Spin = zone.DefaultSpin
	}
	switch {
	case o.UniqueTimeout < 0:
		return nil, fmt.Errorf("invalid unique_timeout %v: must be positive", o.UniqueTimeout)
	case o.MaxPayload < 0 || o.MaxPayload > MaxPayloadLimit:
		return nil, fmt.Errorf("invalid max_payload %d: must be between 1 and %d bytes", o.MaxPayload, int64(MaxPayloadLimit))
	case o.InlineLimit < 0:
		return nil, fmt.Errorf("invalid inline limit %d: must be positive", o.InlineLimit)
	case o.WaitMax < 0 || o.BlobTTL < 0 || o.Spin < 0:
		return nil, fmt.Errorf("invalid wait_max %v, blob_ttl %v or spin %v: must be positive", o.WaitMax, o.BlobTTL, o.Spin)
	}
	if o.Nonce == 0 {
		var b [8]byte
		_, _ = rand.Read(b[:])
		o.Nonce = binary.LittleEndian.Uint64(b[:]) | 1
	}
	if o.Logger == nil {
		o.Logger = zap.NewNop()
	}
	h, err := o.Zone.NewHandle()
	if err != nil {
		return nil, err
	}
	r := o.Zone.Ring()
	b := &Bus{
		o: o, z: o.Zone, ring: r, h: h, log: o.Logger,
		rd:     r.NewReader(r.Tail()),
		inline: min(o.InlineLimit, r.MaxRecord()-maxEncHeader),
		done:   make(chan struct{}),
	}
	b.rd.SetWaitMax(o.WaitMax)
	b.rd.SetSpin(o.Spin)
	b.rd.SetFilter(onlyEvents)
	b.handled.Store(b.rd.Next())
	b.reg.Store(&registry{})
	return b, nil
}

// onlyEvents keeps the ring's event records (the others, alerts, are
// skipped without being copied).
func onlyEvents(kind uint32, _ uint64) bool { return kind == RecordKind }

// SetOnCursor sets Options.OnCursor before Start.
func (b *Bus) SetOnCursor(f func(next uint64)) { b.o.OnCursor = f }

// Start begins delivery and posts the "started" event to every worker.
func (b *Bus) Start() error {
	b.mu.Lock()
	if b.started || b.closed {
		b.mu.Unlock()
		return errors.New("events bus already started or closed")
	}
	b.started = true
	b.mu.Unlock()
	go b.loop()
	_, err := b.Post(Source, EventStarted, b.self())
	return err
}

type selfInfo struct {
	PID        int `json:"pid"`
	Generation int `json:"generation"`
}

func (b *Bus) self() selfInfo { return selfInfo{PID: b.o.PID, Generation: b.o.Generation} }

// Close posts "stopping" to every worker, handles what was posted before it
// (waiting at most drain), and stops delivery. It does not close the zone.
func (b *Bus) Close(drain time.Duration) error {
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return nil
	}
	started := b.started
	b.mu.Unlock()
	if started {
		_, _ = b.Post(Source, EventStopping, b.self())
		b.pollTimeout(drain)
	}
	b.mu.Lock()
	b.closed = true
	for _, br := range b.barriers {
		close(br.done)
	}
	b.barriers = nil
	for _, it := range b.local {
		if it.barrier != nil {
			close(it.barrier)
		}
	}
	b.local = nil
	b.mu.Unlock()
	if started {
		b.stop.Store(true)
		b.rd.Interrupt()
		<-b.done
	}
	b.changes.Notify()
	b.runHooks()
	return b.h.Close()
}

// Detach ends every use of the zone by this bus: after it returns, posts
// fail with ErrClosed and pollers read nothing, so the zone may be
// unmapped. (Close leaves posting possible, for the lifecycle events a
// worker posts as it leaves.)
func (b *Bus) Detach() {
	b.rmu.Lock()
	b.shut = true
	b.rmu.Unlock()
}

// PostOption modifies a post.
type PostOption func(*postOpts)

type postOpts struct {
	unique string
	json   bool
}

// Unique makes the post run-once: the first post of key within
// unique_timeout (node-wide) is accepted and handled by exactly one live
// worker; later posts of the key until then fail with ErrDuplicate.
func Unique(key string) PostOption { return func(p *postOpts) { p.unique = key } }

// AsJSON marks a payload of bytes (a []byte or string given to Post, or
// what PostReader reads) as JSON: it is checked (as it streams, with
// PostReader), refused with ErrInvalid when it is not JSON, and delivered
// with Event.JSON set.
func AsJSON() PostOption { return func(p *postOpts) { p.json = true } }

// newToken is a random nonzero ticket token for a unique key.
func newToken() uint64 {
	var tb [8]byte
	_, _ = rand.Read(tb[:])
	return binary.LittleEndian.Uint64(tb[:]) | 1
}

func invalid(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{ErrInvalid}, args...)...)
}

// CheckName reports whether s is a valid source, event name or unique
// key (what names which, for the error): 1 to MaxNameLen bytes, no CR, LF
// or NUL. The error wraps ErrInvalid.
func CheckName(what, s string) error { return validName(what, s) }

func validName(what, s string) error {
	if s == "" {
		return invalid("%s is empty", what)
	}
	if len(s) > MaxNameLen {
		return invalid("%s is %d bytes, the limit is %d", what, len(s), MaxNameLen)
	}
	if strings.ContainsAny(s, "\r\n\x00") {
		return invalid("%s %q holds a line break or NUL, which is not allowed", what, s)
	}
	return nil
}

// payload turns posted data into bytes: []byte and string as they are,
// json.RawMessage as JSON (checked), nil as nothing, anything else as its
// JSON encoding.
func payload(data any) ([]byte, bool, error) {
	switch v := data.(type) {
	case nil:
		return nil, false, nil
	case []byte:
		return v, false, nil
	case string:
		return []byte(v), false, nil
	case json.RawMessage:
		if !json.Valid(v) {
			return nil, false, invalid("data is not valid JSON")
		}
		return v, true, nil
	}
	j, err := json.Marshal(data)
	if err != nil {
		return nil, false, invalid("data cannot be encoded as JSON: %v", err)
	}
	return j, true, nil
}

// Post broadcasts an event to every worker of the node, this one included,
// and returns its sequence number. It does not wait for delivery. data is
// delivered exactly as given: []byte or string as bytes, any other value as
// its JSON encoding (encoded once, here).
func (b *Bus) Post(source, event string, data any, opts ...PostOption) (uint64, error) {
	seq, err := b.post(source, event, data, opts)
	if err != nil {
		b.countRefusal(err)
		return 0, fmt.Errorf("failed posting event %q by %q; %w", event, source, err)
	}
	b.st.posted.Add(1)
	b.runHooks()
	return seq, nil
}

func (b *Bus) post(source, event string, data any, opts []PostOption) (uint64, error) {
	b.rmu.RLock()
	defer b.rmu.RUnlock()
	if b.shut {
		return 0, ErrClosed
	}
	if err := validName("source", source); err != nil {
		return 0, err
	}
	if err := validName("event", event); err != nil {
		return 0, err
	}
	var po postOpts
	for _, o := range opts {
		o(&po)
	}
	body, isJSON, err := payload(data)
	if err != nil {
		return 0, err
	}
	if po.json && !isJSON {
		if !json.Valid(body) {
			return 0, invalid("data is not valid JSON")
		}
		isJSON = true
	}
	if int64(len(body)) > b.o.MaxPayload {
		return 0, fmt.Errorf("%w: %d bytes, the limit is %d", ErrTooLarge, len(body), b.o.MaxPayload)
	}
	e := encoded{source: source, event: event, payload: body}
	if isJSON {
		e.flags |= flagJSON
	}
	if po.unique != "" {
		if err := validName("unique key", po.unique); err != nil {
			return 0, err
		}
		if err := b.claim(&e, po.unique); err != nil {
			return 0, err
		}
	}
	if err := b.spill(&e); err != nil {
		return 0, err
	}
	return b.write(e)
}

// spill moves a payload over the inline limit into a blob file.
func (b *Bus) spill(e *encoded) error {
	if len(e.payload) <= b.inline {
		return nil
	}
	name, err := b.z.PutBlob(e.payload)
	if err != nil {
		return b.blobFailed(err)
	}
	b.st.blobsWritten.Add(1)
	e.flags |= flagBlob
	e.payload = []byte(name)
	return nil
}

// write puts an encoded event on the ring, and removes its blob, if any,
// when that fails.
func (b *Bus) write(e encoded) (uint64, error) {
	var hb [maxEncHeader]byte
	head := e.header(hb[:0])
	meta := zone.Meta{Kind: RecordKind, PID: uint32(b.o.PID), Gen: uint32(b.o.Generation)}
	for attempt := 0; ; attempt++ {
		seq, err := b.ring.Write(meta, head, e.payload)
		if errors.Is(err, zone.ErrAbandoned) && attempt < 3 {
			continue // readers gave up on us while we stalled: write it again
		}
		if err != nil && e.flags&flagBlob != 0 {
			b.z.RemoveBlob(string(e.payload))
		}
		if err == nil {
			b.wakeReaders(seq, seq)
		}
		return seq, err
	}
}

// wakeReaders wakes this process's waiters on Changed (HTTP streams and
// long-polls) after a post: they read the ring themselves, so they need
// not wait for the delivery goroutine to see the event first.
func (b *Bus) wakeReaders(first, last uint64) {
	if b.changes.Watched() {
		b.changes.Notify()
	}
	n := uint64(len(b.woken))
	for s := max(first, last-min(last, n-1)); s <= last; s++ {
		b.woken[s%n].Store(s + 1)
	}
}

// PostLocal delivers an event to this worker only, asynchronously, by
// reference: data is never serialized (handlers get it as Event.Value), and
// the event has no sender.
func (b *Bus) PostLocal(source, event string, data any) error {
	if err := validName("source", source); err != nil {
		return fmt.Errorf("failed posting event %q by %q; %w", event, source, err)
	}
	if err := validName("event", event); err != nil {
		return fmt.Errorf("failed posting event %q by %q; %w", event, source, err)
	}
	ev := Event{Source: source, Name: event, Value: data, Local: true, Time: time.Now()}
	switch v := data.(type) {
	case []byte:
		ev.Data = v
	case string:
		ev.Data = []byte(v)
	}
	if err := b.enqueue(localItem{ev: ev}); err != nil {
		return fmt.Errorf("failed posting event %q by %q; %w", event, source, err)
	}
	b.st.postedLocal.Add(1)
	return nil
}

func (b *Bus) enqueue(it localItem) error {
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return ErrClosed
	}
	if len(b.local) >= maxLocalQueue && it.barrier == nil {
		b.mu.Unlock()
		b.st.localFull.Add(1)
		return fmt.Errorf("local event queue full (%d events not yet handled)", maxLocalQueue)
	}
	b.local = append(b.local, it)
	b.localWork.Store(true)
	b.mu.Unlock()
	b.rd.Interrupt()
	return nil
}

// Poll is a barrier: it returns once every event posted (shared or local)
// before the call has been handled by this worker. It returns ErrRecursive
// when called from a handler, and ErrClosed after Close.
func (b *Bus) Poll() error { return b.pollTimeout(-1) }

func (b *Bus) pollTimeout(d time.Duration) error {
	if b.handling.Load() && b.loopGID.Load() == goid.Get() {
		return ErrRecursive
	}
	b.mu.Lock()
	started := b.started
	b.mu.Unlock()
	if !started {
		return errors.New("events bus not started")
	}
	done := make(chan struct{})
	target := b.ring.Tail()
	if err := b.enqueue(localItem{barrier: done, ev: Event{Seq: target}}); err != nil {
		return err
	}
	if d < 0 {
		<-done
		return nil
	}
	select {
	case <-done:
		return nil
	case <-time.After(d):
		return fmt.Errorf("events not handled within %v", d)
	}
}

// Stats returns the bus's counters.
func (b *Bus) Stats() Stats {
	c := &b.st
	return Stats{
		Posted: c.posted.Load(), PostedLocal: c.postedLocal.Load(), PostErrors: c.postErrors.Load(),
		Duplicates: c.duplicates.Load(), UniqueTableFull: c.uniqueFull.Load(), Delivered: c.delivered.Load(), HandlerCalls: c.calls.Load(),
		HandlerPanics: c.panics.Load(), UniqueSkipped: c.uniqueSkipped.Load(), LostOverrun: c.lostOverrun.Load(),
		LostGap: c.lostGap.Load(), Malformed: c.malformed.Load(), BlobsWritten: c.blobsWritten.Load(),
		BlobsRead: c.blobsRead.Load(), BlobErrors: c.blobErrors.Load(), BlobQuotaExceeded: c.blobQuota.Load(),
		LocalQueueFull: c.localFull.Load(),
	}
}

// countRefusal counts a failed post: a duplicate, a full run-once key
// table (logged at the 1st, 2nd, 4th, 8th... time), or another error.
func (b *Bus) countRefusal(err error) {
	switch {
	case errors.Is(err, ErrDuplicate):
		b.st.duplicates.Add(1)
	case errors.Is(err, zone.ErrUniqueTableFull):
		if n := b.st.uniqueFull.Add(1); n&(n-1) == 0 {
			b.log.Warn("unique post refused: the run-once key table is full", zap.Uint64("refused", n))
		}
	default:
		b.st.postErrors.Add(1)
	}
}

// Changed returns a channel that is closed once this worker has handled
// another ring record. Pollers that are not handlers (HTTP long-polls and
// streams) read the ring with Range, and wait on Changed when they are
// caught up: get the channel first, then check Next, then wait.
func (b *Bus) Changed() <-chan struct{} { return b.changes.Changed() }

// Tail is the sequence number the next event posted by anyone will get
// (or a later one): "now", for pollers that start from now.
func (b *Bus) Tail() uint64 {
	b.rmu.RLock()
	defer b.rmu.RUnlock()
	if b.shut {
		return 0
	}
	return b.ring.Tail()
}

// Closed reports whether Close was called.
func (b *Bus) Closed() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.closed
}

// Next is the sequence number of the next shared event this worker will handle.
func (b *Bus) Next() uint64 { return b.handled.Load() }
