package zone

import (
	"sync/atomic"
	"unsafe"
)

// The zone file, layout version 6. All integers are little-endian
// (the host's order: a zone is never shared across machines). Offsets are
// from the start of the file. Every area starts on a 64-byte boundary so that
// the atomic words are aligned and hot words do not share a cache line.
//
//	offset      size            what
//	0           4096            header page (type header below)
//	  0         8                 magic "IPCBUSZ\x00"
//	  8         4                 layout version (LayoutVersion)
//	  12        4                 header size (4096)
//	  16        8                 total file size in bytes
//	  24        8                 creation time, Unix ns
//	  32        8                 worker table offset
//	  40        4                 worker slots (MaxWorkers)
//	  44        4                 worker slot size (128)
//	  48        8                 ring index offset
//	  56        8                 ring index slots (a power of two)
//	  64        8                 ring data offset
//	  72        8                 ring data size in bytes (a multiple of 64)
//	  80        8                 largest record the ring takes, in bytes
//	  88        8                 unique table offset
//	  96        4                 unique slots (UniqueSlots)
//	  100       4                 unique slot size (64)
//	  104       24                reserved, zero
//	  128       8                 ring tail: the next sequence number to hand out (atomic)
//	  192       8                 ring data tail: the next data byte position to hand out (atomic)
//	  256       4                 doorbell 0: futex word, bumped after a commit when a reader sleeps
//	  260       4                 waiters on doorbell 0
//	  264       4                 doorbell 1 (records written with Meta.Bell 1: IPC alerts)
//	  268       4                 waiters on doorbell 1
//	  320       128               node area (type Node)
//	  448       3648              reserved, zero
//	4096        256 × 128       worker table (type WorkerSlot)
//	36864       4096 × 64       unique table (type uniqueSlot): run-once keys of the events bus
//	…           slots × 64      ring index (type indexSlot)
//	…           data size       ring data: record payloads, 8-byte aligned, wrapping
//
// The file's own bytes are also used as lock targets (OFD byte-range locks,
// which do not touch the contents): byte 0 is the node lock, and the first
// byte of worker slot i is that worker's liveness lock.
const (
	// LayoutVersion is bumped whenever the meaning or position of any field changes.
	LayoutVersion = 6

	headerSize     = 4096
	workerSlotSize = 128
	indexSlotSize  = 64
	uniqueSlotSize = 64

	// UniqueSlots is the number of run-once keys a zone holds at once.
	UniqueSlots = 4096

	// NumBells is the number of doorbells: readers of different record
	// kinds sleep on different ones, so that a commit wakes only readers
	// that want it.
	NumBells = 2

	// MaxWorkers is the number of worker slots in a zone.
	MaxWorkers = 256

	// MinSize and MaxSize bound the zone size a config may ask for.
	MinSize = 1 << 20
	MaxSize = 64 << 30

	// nodeLockByte is the byte of the zone file locked by the node lock.
	nodeLockByte = 0
)

var magic = [8]byte{'I', 'P', 'C', 'B', 'U', 'S', 'Z', 0}

// header is the first page of a zone, overlaid on the mapping.
type header struct {
	Magic          [8]byte
	Version        uint32
	HeaderSize     uint32
	Size           uint64
	CreatedAt      int64
	WorkerOff      uint64
	WorkerSlots    uint32
	WorkerSlotSize uint32
	IndexOff       uint64
	IndexSlots     uint64
	DataOff        uint64
	DataSize       uint64
	MaxRecord      uint64
	UniqueOff      uint64
	UniqueSlots    uint32
	UniqueSlotSize uint32
	_              [24]byte

	tail     atomic.Uint64
	_        [56]byte
	dataTail atomic.Uint64
	_        [56]byte
	bells    [NumBells]struct {
		word    atomic.Uint32
		waiters atomic.Uint32
	}
	_ [48]byte

	node Node
}

// Node is the node area of a zone: the state of the node and the counters
// that outlive every worker while the zone file exists. Fields are changed
// under the node lock and read at any time.
type Node struct {
	// State is NodeNever, NodeRunning or NodeStopped.
	State atomic.Uint32
	// Epoch counts node starts; it names the current run of the node.
	Epoch atomic.Uint32
	// StartedAt and StoppedAt are Unix ns of the last node start and stop.
	StartedAt atomic.Int64
	StoppedAt atomic.Int64
	// Starts counts node starts (the first worker joining a zone with no live worker).
	Starts atomic.Uint64
	// WorkerStarts counts workers that joined.
	WorkerStarts atomic.Uint64
	// Reloads counts workers that joined while an older worker of the same process lived.
	Reloads atomic.Uint64
	// Exits counts clean worker exits (any reason but a crash).
	Exits atomic.Uint64
	// Crashes counts workers found dead without having left (liveness lock gone).
	Crashes atomic.Uint64
	// MissedHeartbeats counts workers found alive but silent for longer than dead_after.
	MissedHeartbeats atomic.Uint64
	// Generation is a counter handed out to processes that want a node-unique number.
	Generation atomic.Uint64
	// Gaps counts ring records abandoned by readers because their writer never committed.
	Gaps atomic.Uint64
	// AlertsDiscarded counts IPC alerts addressed to workers found crashed
	// before they read them.
	AlertsDiscarded atomic.Uint64
	_               [32]byte
}

// Node states.
const (
	NodeNever   = 0
	NodeRunning = 1
	NodeStopped = 2
)

// WorkerSlot is one entry of the worker table, 128 bytes. A slot is owned by
// the worker whose liveness lock (the slot's first byte) is held; the others
// only read it, and change State to WorkerCrashed or WorkerHung under the
// node lock when they find the owner dead or silent.
type WorkerSlot struct {
	// State is WorkerFree, WorkerLive, WorkerExited, WorkerCrashed or WorkerHung.
	State atomic.Uint32
	// Reason is the exit reason code, set with WorkerExited/WorkerCrashed.
	Reason atomic.Uint32
	// PID is the process id of the worker.
	PID atomic.Uint32
	// Generation is the per-process generation of the worker (1, 2, …).
	Generation atomic.Uint32
	// Nonce is a random incarnation number, so that a reused pid is never
	// mistaken for an earlier worker.
	Nonce atomic.Uint64
	// StartedAt, Heartbeat and ExitedAt are Unix ns.
	StartedAt atomic.Int64
	Heartbeat atomic.Int64
	ExitedAt  atomic.Int64
	// Cursor is the ring sequence the worker will read next (its lag is tail − Cursor).
	Cursor atomic.Uint64
	// Missed counts the times this worker was found silent for longer than dead_after.
	Missed atomic.Uint32
	// Epoch is the node epoch the worker joined in.
	Epoch atomic.Uint32
	// AlertCursor is the ring sequence the worker's IPC reader reads next;
	// senders hold back when it lags too far (backpressure).
	AlertCursor atomic.Uint64
	// Armed counts, per doorbell, the worker's readers asleep on it: when the
	// worker is found crashed they are taken off the doorbell's waiter
	// count, which would otherwise stay high and make every commit pay for
	// a wake-up call.
	Armed [NumBells]atomic.Uint32
	_     [48]byte
}

// Worker slot states.
const (
	WorkerFree    = 0
	WorkerLive    = 1
	WorkerExited  = 2
	WorkerCrashed = 3
	WorkerHung    = 4
)

// indexSlot is one entry of the ring index, 64 bytes: one cache line.
type indexSlot struct {
	// state is (seq+1)<<2 | st with st one of stWriting, stCommitted, stAbandoned;
	// 0 means never written.
	state atomic.Uint64
	// dpos is the absolute data position of the payload (taken modulo the data size).
	dpos uint64
	// length is the payload length in bytes.
	length uint32
	// kind is a record type for the layers above (events, alerts).
	kind uint32
	// pid and gen identify the writer.
	pid uint32
	gen uint32
	// time is when the writer claimed the slot, Unix ns.
	time int64
	// aux is for the layers above (a target pid, flags).
	aux uint64
	// check mixes seq with the fields above: a writer that was overtaken
	// (stalled past a lap of the index) and whose late stores land on a
	// newer record's slot makes that record fail the check, so a reader
	// counts it lost rather than returning mixed fields. (Payload bytes are
	// not summed: a writer re-checks its data reservation before copying.)
	check uint32
	_     [12]byte
}

const (
	stWriting   = 1
	stCommitted = 2
	stAbandoned = 3
)

func stateWord(seq uint64, st uint64) uint64 { return (seq+1)<<2 | st }
func stateSeq(w uint64) uint64               { return w >> 2 } // seq+1, 0 when never written
func stateSt(w uint64) uint64                { return w & 3 }

// geometry is the layout derived from a size; it is recomputed on attach and
// compared with the header, so a header is never trusted on its own.
type geometry struct {
	size        uint64
	workerOff   uint64
	indexOff    uint64
	indexSlots  uint64
	dataOff     uint64
	dataSize    uint64
	maxRecord   uint64
	workerSlots uint64
	uniqueOff   uint64
}

// layoutFor computes the geometry of a zone of the given size: one index slot
// per 512 bytes of zone (rounded down to a power of two), the rest for data.
func layoutFor(size uint64) geometry {
	g := geometry{size: size, workerOff: headerSize, workerSlots: MaxWorkers}
	g.uniqueOff = g.workerOff + MaxWorkers*workerSlotSize
	g.indexOff = g.uniqueOff + UniqueSlots*uniqueSlotSize
	n := uint64(1)
	for n*2 <= size/512 {
		n *= 2
	}
	g.indexSlots = n
	g.dataOff = g.indexOff + n*indexSlotSize
	g.dataSize = (size - g.dataOff) &^ 63
	g.maxRecord = g.dataSize / 8
	if g.maxRecord > 4<<20 {
		g.maxRecord = 4 << 20
	}
	return g
}

func init() {
	// The overlays must have exactly the sizes the layout documents.
	if unsafe.Sizeof(header{}) > headerSize || unsafe.Offsetof(header{}.tail) != 128 ||
		unsafe.Offsetof(header{}.dataTail) != 192 || unsafe.Offsetof(header{}.bells) != 256 ||
		unsafe.Offsetof(header{}.node) != 320 || unsafe.Sizeof(Node{}) != 128 ||
		unsafe.Sizeof(WorkerSlot{}) != workerSlotSize || unsafe.Sizeof(indexSlot{}) != indexSlotSize ||
		unsafe.Sizeof(uniqueSlot{}) != uniqueSlotSize || unsafe.Offsetof(header{}.UniqueOff) != 88 {
		panic("zone: layout overlays do not match the documented layout")
	}
}
