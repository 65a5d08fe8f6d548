// Package ipc is the alerts of caddy-ipcbus: ngx_lua_ipc's send, broadcast,
// receive, reply and sender between the processes of a node, on the zone's
// shared-memory ring. An alert to a process is handled by that process's
// newest worker; delivery is FIFO per (sender, receiver), asynchronous even
// to oneself, and a sender is held back (for a bounded time) rather than
// queueing without bound when a receiver does not keep up. It knows
// nothing of Caddy.
package ipc

import (
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/ipcbus/caddy-ipcbus/internal/notify"
	"github.com/ipcbus/caddy-ipcbus/zone"
)

// RecordKind marks an alert record on the zone ring. The record's aux
// field is the target pid, 0 for a broadcast.
const RecordKind = 2

// Bell is the zone doorbell alerts ring (the events bus uses the other), so
// that posting events does not wake alert readers, nor alerts event readers.
const Bell = 1

// Limits of ngx_lua_ipc.
const (
	MaxNameLen = 254
	MaxDataLen = 4294967040
)

// Defaults of Options.
const (
	DefaultSendTimeout = 5 * time.Second
	DefaultInlineLimit = 64 << 10
)

// Errors. The messages of ngx_lua_ipc keep their words.
var (
	// ErrInvalid wraps bad names and data.
	ErrInvalid = errors.New("invalid alert")
	// ErrTooLarge is returned for data over MaxDataLen.
	ErrTooLarge = errors.New("alert data too long")
	// ErrReceiverSlow is returned when a receiver stays too far behind for
	// the whole send timeout (policy block), or at once (policy drop).
	ErrReceiverSlow = errors.New("alert receiver is not keeping up")
	errSizeChanged  = errors.New("the blob file changed size since it was read")
	// ErrClosed is returned after Close.
	ErrClosed = errors.New("ipc is closed")
	// ErrBlobQuota is returned (wrapped) for data that would take the
	// zone's blob files over the blob quota (HTTP 507). It is
	// zone.ErrBlobQuota.
	ErrBlobQuota = zone.ErrBlobQuota
	// ErrRead is returned (wrapped, with the reader's error) by SendReader
	// and BroadcastReader when their reader fails, or ends before or goes
	// on after the size given. It is zone.ErrRead.
	ErrRead = zone.ErrRead
)

// NoWorkerError is returned for a pid that is not a live worker of the zone.
type NoWorkerError struct{ PID int }

func (e NoWorkerError) Error() string { return fmt.Sprintf("No worker process with PID %d", e.PID) }

// Policy is what a sender does when a receiver lags too far.
type Policy int

const (
	// Block waits up to SendTimeout for the receiver, then fails with ErrReceiverSlow.
	Block Policy = iota
	// Drop fails at once with ErrReceiverSlow (and counts the drop).
	Drop
)

// Options configure an IPC.
type Options struct {
	// Zone carries the alerts. Required.
	Zone *zone.Zone
	// PID and Generation name this worker (PID is the process's pid).
	PID, Generation int
	// SendTimeout bounds how long Send and Broadcast wait for a lagging
	// receiver under the Block policy. Default 5s.
	SendTimeout time.Duration
	// Overflow is Block (default) or Drop.
	Overflow Policy
	// MaxLag is how many records a receiver may be behind before senders
	// hold back. Default: half the ring. (A receiver is also held to half
	// the ring's data area.)
	MaxLag uint64
	// InlineLimit is the largest data carried in the ring itself; larger
	// alerts go to a blob file. Default 64KiB.
	InlineLimit int
	// WaitMax and Spin are as for the events bus.
	WaitMax, Spin time.Duration
	// Logger; nil discards.
	Logger *zap.Logger
}

// window is a stretch of sequence numbers a newer worker handles: from
// its hand-off (lo) to where it stopped (hi; the maximum while it runs).
type window struct {
	lo, hi uint64
	by     *IPC
}

// Alert is what a handler gets. Data is valid only during the call.
type Alert struct {
	Name string
	Data []byte
	// Sender is the sending process's pid, SenderGeneration its worker's generation.
	Sender           int
	SenderGeneration int
	// ToAll reports an alert sent to every process (Broadcast).
	ToAll bool
	Seq   uint64
	c     *IPC
}

// Reply sends an alert back to the sender of a (ngx_lua_ipc's ipc.reply;
// its ipc.sender is a.Sender). Call it from the handler a was given to.
func (a *Alert) Reply(name string, data []byte) error {
	return a.c.sendCounted(a.Sender, name, data, true)
}

// Send sends an alert to the process pid, as IPC.Send, from inside the
// handler a was given to: the sender's own worker, which cannot read on
// until the handler returns, is left out of the backpressure, and so is a
// receiver whose own handler waits in a send (two handlers sending to each
// other would each wait out the send timeout). Call it only from that
// handler (or code it calls and waits for); elsewhere use IPC.Send.
func (a *Alert) Send(pid int, name string, data []byte) error {
	return a.c.sendCounted(pid, name, data, true)
}

// Broadcast sends an alert to every process of the node, as
// IPC.Broadcast, from inside the handler a was given to (see Send).
func (a *Alert) Broadcast(name string, data []byte) error {
	return a.c.broadcastCounted(name, data, true)
}

// Handler handles an alert on the worker's delivery goroutine.
type Handler func(*Alert)

// Stats are an IPC's counters.
type Stats struct {
	Sent          uint64 `json:"sent"`
	Broadcasts    uint64 `json:"broadcasts"`
	BytesSent     uint64 `json:"bytes_sent"`
	Received      uint64 `json:"received"`
	BytesReceived uint64 `json:"bytes_received"`
	Unhandled     uint64 `json:"unhandled"`
	Dropped       uint64 `json:"dropped"`
	SendWaits     uint64 `json:"send_waits"`
	SendErrors    uint64 `json:"send_errors"`
	Lost          uint64 `json:"lost"`
	HandlerPanics uint64 `json:"handler_panics"`
	// BlobQuotaExceeded counts sends refused because their data would have
	// taken the zone's blob files over the blob quota.
	BlobQuotaExceeded uint64 `json:"blob_quota_exceeded"`
	// BlobErrors counts blob files that could not be written or read.
	BlobErrors uint64 `json:"blob_errors"`
}

// Add adds o's counters to s.
func (s *Stats) Add(o Stats) {
	s.Sent += o.Sent
	s.Broadcasts += o.Broadcasts
	s.BytesSent += o.BytesSent
	s.Received += o.Received
	s.BytesReceived += o.BytesReceived
	s.Unhandled += o.Unhandled
	s.Dropped += o.Dropped
	s.SendWaits += o.SendWaits
	s.SendErrors += o.SendErrors
	s.Lost += o.Lost
	s.HandlerPanics += o.HandlerPanics
	s.BlobQuotaExceeded += o.BlobQuotaExceeded
	s.BlobErrors += o.BlobErrors
}

// IPC is one worker's alerts endpoint.
type IPC struct {
	o     Options
	z     *zone.Zone
	ring  *zone.Ring
	log   *zap.Logger
	slot  atomic.Int64 // this worker's slot in the worker table, -1 unknown
	rd    *zone.Reader
	state sync.Mutex
	open  bool

	handlers atomic.Pointer[map[string]Handler]
	fallback atomic.Pointer[Handler]
	observer atomic.Pointer[Observer]
	hmu      sync.Mutex

	// Watchers of the alerts delivered to this process (see Changed).
	changes notify.Notifier

	// Hand-over between the workers of one process (see deliver.go).
	skipMu sync.Mutex
	// Under skipMu: the alerts that newer workers of this process handle
	// (one window per newer worker: from its hand-off, to where it stopped
	// if it stopped), and a pending rewind to re-read from rewindTo.
	windows  []window
	rewind   bool
	rewindTo uint64
	prev     *IPC          // under owners' lock: the older worker of this process
	handoff  uint64        // the first sequence this worker handles
	next     atomic.Uint64 // the sequence the loop reads next, for the newer worker

	// Under skipMu: the delivery goroutines (their done channels) of newer
	// workers that handed this process's alerts back to this one while one
	// of their handlers still ran (or that this one took over from such a
	// worker): no handler of this worker starts before they have ended
	// (see await).
	awaits []chan struct{}

	runMu     sync.Mutex
	inHandler bool // under runMu: a handler runs on the delivery goroutine (see Close)
	stop      atomic.Bool
	quit      chan struct{} // closed by Close: ends the loop's waits for other workers
	done      chan struct{}

	swept    time.Time
	dmu      sync.RWMutex // sends hold it to use the zone
	detached bool         // set under dmu by Detach
	bmu      sync.Mutex
	bounds   map[bkey]bound // per target pid (0: broadcast), see admit
	st       counters
}

type counters struct {
	sent, broadcasts, bytesSent, received, bytesReceived, unhandled, dropped, waits, errors, lost, panics,
	blobQuota, blobErrors atomic.Uint64
}

// New makes the alerts endpoint of one worker.
func New(o Options) (*IPC, error) {
	if o.Zone == nil {
		return nil, errors.New("ipc: Options.Zone is required")
	}
	r := o.Zone.Ring()
	if o.SendTimeout == 0 {
		o.SendTimeout = DefaultSendTimeout
	}
	if o.MaxLag == 0 {
		o.MaxLag = r.Slots() / 2
	}
	if o.InlineLimit == 0 {
		o.InlineLimit = DefaultInlineLimit
	}
	if o.SendTimeout < 0 || o.MaxLag > r.Slots() || o.InlineLimit < 0 {
		return nil, fmt.Errorf("invalid ipc options: send timeout %v must be positive, max lag %d at most the ring's %d records", o.SendTimeout, o.MaxLag, r.Slots())
	}
	o.InlineLimit = min(o.InlineLimit, r.MaxRecord()-2-MaxNameLen)
	// Receivers asleep through records they do not want (alerts to other
	// processes, events) are woken often enough to stay well inside the
	// lag limit, so that backpressure never blames an idle receiver.
	r.WakeAllEvery(o.MaxLag / 4)
	if o.Logger == nil {
		o.Logger = zap.NewNop()
	}
	c := &IPC{o: o, z: o.Zone, ring: r, log: o.Logger, quit: make(chan struct{}), done: make(chan struct{}), bounds: map[bkey]bound{}}
	c.slot.Store(-1)
	empty := map[string]Handler{}
	c.handlers.Store(&empty)
	return c, nil
}

// Receive sets the handler of alerts named name; nil removes it, and a
// second registration replaces the first.
func (c *IPC) Receive(name string, h Handler) {
	c.hmu.Lock()
	defer c.hmu.Unlock()
	m := make(map[string]Handler, len(*c.handlers.Load())+1)
	for k, v := range *c.handlers.Load() {
		m[k] = v
	}
	if h == nil {
		delete(m, name)
	} else {
		m[name] = h
	}
	c.handlers.Store(&m)
}

// SetDefaultHandler sets the handler of alerts whose name has none; nil
// removes it, and such alerts are then dropped and counted (unhandled).
func (c *IPC) SetDefaultHandler(h Handler) {
	if h == nil {
		c.fallback.Store(nil)
		return
	}
	c.fallback.Store(&h)
}

// Stats returns the counters.
func (c *IPC) Stats() Stats {
	s := &c.st
	return Stats{
		Sent: s.sent.Load(), Broadcasts: s.broadcasts.Load(), BytesSent: s.bytesSent.Load(),
		Received: s.received.Load(), BytesReceived: s.bytesReceived.Load(), Unhandled: s.unhandled.Load(),
		Dropped: s.dropped.Load(), SendWaits: s.waits.Load(), SendErrors: s.errors.Load(),
		Lost: s.lost.Load(), HandlerPanics: s.panics.Load(),
		BlobQuotaExceeded: s.blobQuota.Load(), BlobErrors: s.blobErrors.Load(),
	}
}
