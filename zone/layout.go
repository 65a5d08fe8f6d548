package zone

import (
	"strconv"
	"sync/atomic"
	"unsafe"
)

// The zone file, layout version 8. All integers are little-endian (the
// host's order: a zone is never shared across machines). Offsets are from the
// start of the file. Every area starts on a 64-byte boundary, so the atomic
// words are aligned and hot words do not share a cache line.
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
//	  64        8                 segment data offset (a multiple of 4096)
//	  72        8                 segment data size in bytes (segments × segment size)
//	  80        8                 largest record payload the ring takes, in bytes
//	  88        8                 unique table offset
//	  96        4                 unique slots (Options.UniqueKeys: DefaultUniqueKeys, 256 to 1<<20)
//	  100       4                 unique slot size (64)
//	  104       8                 member table offset
//	  112       4                 member slots (MaxMembers)
//	  116       4                 member slot size (64)
//	  120       8                 segment table offset
//	  128       4                 segments
//	  132       4                 segment size in bytes (a power of two, 16 KiB to 4 MiB)
//	  136       56                reserved, zero
//	  192       8                 ring tail: the next sequence number to hand out (atomic)
//	  200       56                reserved, zero (the tail has the cache line to itself)
//	  256       8                 data tail: segment bytes handed out by leases so far (atomic)
//	  264       8                 lease cursor: segment leases tried so far; the next try is
//	                              at cursor mod segments (atomic)
//	  272       48                reserved, zero
//	  320       3 × 64            doorbells (type bell), one cache line each:
//	    +0      4                   futex word, bumped after a commit when a member sleeps on it
//	    +4      4                   reserved, zero
//	    +8      32                  sleepers: bit i set while member i has a reader asleep on it
//	    +40     24                  reserved, zero
//	512         128               node area (type Node)
//	640         128               fleet area (type FleetArea): the state of the host's
//	                              bridge to a NATS JetStream fleet, if one is configured
//	768         3328              reserved, zero
//	4096        256 × 128       worker table (type WorkerSlot; layout 8 added its AdminHash at +80)
//	36864       256 × 64        member table (type MemberSlot): one per process mapping
//	53248       keys × 64       unique table (type uniqueSlot): run-once keys of the events bus
//	…           slots × 16      ring index (type indexSlot) (at 315392 with the default 4096 keys)
//	…           segments × 128  segment table (type segSlot): the lease word, and in a
//	                            cache line of its own the last sequence committed
//	…           data size       segment data, from a page boundary: segments of segment size
//
// A record is a frame in one segment (type frame: a 40-byte header and the
// payload, 8-byte aligned) plus its index slot, which names the frame by
// {segment, lease generation, offset}. Only the lessee of a segment writes
// into it, and a segment is leased again (its generation bumped) only when its
// lessee released it or is dead: every byte a reader copies was written by
// the record's own writer, which the reader proves by checking the
// segment's generation before and after its copy and the frame's sequence
// number against the index slot.
//
// The file's own bytes are also used as lock targets (OFD byte-range locks,
// which do not touch the contents): byte 0 is the node lock, the first byte
// of worker slot i is that worker's liveness lock, and the first byte of
// member slot i is that member's.
const (
	// LayoutVersion is bumped whenever the meaning or position of any field changes.
	LayoutVersion = 8

	headerSize     = 4096
	workerSlotSize = 128
	memberSlotSize = 64
	indexSlotSize  = 16
	segSlotSize    = 128
	uniqueSlotSize = 64

	// DefaultUniqueKeys is the number of run-once keys a zone holds at
	// once unless Options.UniqueKeys says otherwise; MinUniqueKeys and
	// MaxUniqueKeys bound it (and the table takes at most a quarter of the
	// zone).
	DefaultUniqueKeys = 4096
	MinUniqueKeys     = 256
	MaxUniqueKeys     = 1 << 20

	// NumBells is the number of doorbells: readers of different record
	// kinds sleep on different ones, so that a commit wakes only readers
	// that want it. Bell 0 is events', bell 1 alerts', and bell 2
	// (bellAny) is rung by every commit, for readers blocked on a record
	// not yet committed, whose kind they cannot know.
	NumBells = 3
	bellAny  = 2

	// MaxWorkers is the number of worker slots in a zone.
	MaxWorkers = 256

	// MaxMembers is the number of processes (zone mappings) that can
	// attach to a zone for writing at once.
	MaxMembers = 256

	// MinSize and MaxSize bound the zone size a config may ask for. A
	// 32-bit build maps at most 1 GiB.
	MinSize = 1 << 20
	MaxSize = 1 << (30 + 6*(strconv.IntSize/64))

	// nodeLockByte is the byte of the zone file locked by the node lock.
	nodeLockByte = 0

	minSegSize = 16 << 10
	maxSegSize = 4 << 20
	maxSegs    = 1 << locSegBits
	// maxTail bounds the sequence numbers: a tail beyond it is damage.
	maxTail = 1 << 60
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
	MemberOff      uint64
	MemberSlots    uint32
	MemberSlotSize uint32
	SegOff         uint64
	Segments       uint32
	SegSize        uint32
	_              [56]byte

	tail     atomic.Uint64
	_        [56]byte
	dataTail atomic.Uint64
	leaseCur atomic.Uint64
	_        [48]byte
	bells    [NumBells]bell

	node  Node
	fleet FleetArea
}

// bell is one doorbell: a futex word and the members asleep on it.
type bell struct {
	word     atomic.Uint32
	_        uint32
	sleepers [MaxMembers / 64]atomic.Uint64
	_        [24]byte
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
	// Reclaimed counts segments taken back from dead lessees.
	Reclaimed atomic.Uint64
	_         [24]byte
}

// FleetArea is the fleet area of a zone, 128 bytes: the state of the one
// bridge of the host to a NATS JetStream fleet (package fleet). Every word
// is atomic; the bridge writes them, any process reads them. It outlives
// the processes, so that a bridge taking over continues where the last one
// stopped.
type FleetArea struct {
	// Owner is the bridge lease: a random nonzero token of the bridge that
	// holds it, 0 when none does. Taken and handed over by compare-and-swap.
	Owner atomic.Uint64
	// Heartbeat is when the owner last showed it is working, Unix ns; a
	// lease whose heartbeat is older than the takeover time may be taken.
	Heartbeat atomic.Int64
	// OwnerPID is the process id of the owner (for display).
	OwnerPID atomic.Uint32
	_        uint32
	// Since is when the owner took the lease, Unix ns.
	Since atomic.Int64
	// Fleet is a hash of the fleet's name and node: a bridge of another
	// fleet (a changed config) starts the state below afresh.
	Fleet atomic.Uint64
	// OutNext is the ring sequence the outbound side reads next: every
	// event before it was published and acknowledged (or lost). 0 until
	// the first bridge starts.
	OutNext atomic.Uint64
	// StreamEpoch names the stream the inbound side applies (its creation
	// time, Unix ns), and InApplied the last stream sequence applied from it.
	// While StreamEpoch is 0 (the host's first bridge has not reached the
	// stream yet), InApplied holds when the host joined the fleet (Unix
	// ns), from which that bridge takes the fleet's events.
	StreamEpoch atomic.Uint64
	InApplied   atomic.Uint64
	// Published counts events published and acknowledged; OutLost events
	// the ring overran before they were published; OutPending the events
	// the ring holds that are not yet acknowledged (as last seen).
	Published  atomic.Uint64
	OutLost    atomic.Uint64
	OutPending atomic.Uint64
	// Applied counts remote events posted into this zone; InLag the stream
	// messages not yet applied (as last seen); InLost the messages the
	// stream discarded before this host applied them.
	Applied atomic.Uint64
	InLag   atomic.Uint64
	InLost  atomic.Uint64
	// NodesSeen is the highest join revision (in the fleet's nodes
	// bucket) of a host announced on this host's bus (node_joined).
	NodesSeen atomic.Uint64
	// OutPrev is the ring sequence of the last event published and
	// acknowledged: each message names its predecessor, so that a host
	// applies a host's events only in their order.
	OutPrev atomic.Uint64
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
	// SendWaiting is 1 while one of the worker's alert handlers waits in a
	// send for a slow receiver: its own reader is stopped meanwhile, and
	// senders do not wait for it (two handlers waiting for each other
	// would each wait out the send timeout).
	SendWaiting atomic.Uint32
	_           [4]byte
	// AdminHash identifies the admin address of the worker's Caddy config
	// (FNV-1a of its normalized form; 0 when the admin endpoint is off or
	// its address unknown): a worker refuses to join while another
	// process's live worker has the same, since SO_REUSEPORT would let
	// both listen and admin requests reach either. Layout 8.
	AdminHash atomic.Uint64
	_         [40]byte
}

// Worker slot states.
const (
	WorkerFree    = 0
	WorkerLive    = 1
	WorkerExited  = 2
	WorkerCrashed = 3
	WorkerHung    = 4
)

// MemberSlot is one entry of the member table, 64 bytes: a process's
// mapping of the zone that may write and sleep. It is held by the member's
// liveness lock (the slot's first byte); only the holder writes it.
type MemberSlot struct {
	// PID is the process id of the member.
	PID atomic.Uint32
	_   uint32
	// JoinedAt is when the member took the slot, Unix ns.
	JoinedAt atomic.Int64
	// Leases counts the segments the member leased.
	Leases atomic.Uint64
	_      [40]byte
}

// indexSlot is one entry of the ring index, 16 bytes. Writers of
// sequences a whole index apart share it; the state word says whose it is.
type indexSlot struct {
	// state is (seq+1)<<2 | st with st one of stWriting, stCommitted,
	// stAbandoned; 0 means never written.
	state atomic.Uint64
	// loc names the record's frame: locWord(segment generation, segment,
	// offset). A writer stores it after claiming the slot and before
	// committing; a writer stalled past a lap of the index may store its own
	// loc over a newer record's, which readers then see as a frame of
	// another sequence and count lost.
	loc atomic.Uint64
}

const (
	stWriting   = 1
	stCommitted = 2
	stAbandoned = 3
)

func stateWord(seq uint64, st uint64) uint64 { return (seq+1)<<2 | st }
func stateSeq(w uint64) uint64               { return w >> 2 } // seq+1, 0 when never written
func stateSt(w uint64) uint64                { return w & 3 }

// loc packs a record's place: the low 30 bits of its segment's lease
// generation, the segment number (15 bits) and the offset in the segment in
// 8-byte units (19 bits: up to 4 MiB).
const (
	locOffBits = 19
	locSegBits = 15
	locGenBits = 30
	locGenMask = 1<<locGenBits - 1
)

func locWord(gen uint32, seg uint32, off uint64) uint64 {
	return uint64(gen&locGenMask)<<(locSegBits+locOffBits) | uint64(seg)<<locOffBits | off>>3
}

func locSplit(l uint64) (gen uint32, seg uint32, off uint64) {
	return uint32(l >> (locSegBits + locOffBits)), uint32(l>>locOffBits) & (maxSegs - 1), (l & (1<<locOffBits - 1)) << 3
}

// segSlot is one entry of the segment table, 128 bytes: two cache lines, so
// that the lessee's update of last on every commit does not make every
// reader's check of the lease word miss.
type segSlot struct {
	// lease is gen<<32 | owner: the segment's lease generation (bumped by
	// every new lease, before the lessee writes anything) and its lessee,
	// member index + 1 (0: free). Only the lessee of the current generation
	// writes the segment's bytes; it clears the owner once its writes are
	// all done. A segment whose lessee's liveness lock is gone is leased
	// again by whoever finds it.
	lease atomic.Uint64
	_     [56]byte
	// last is one past the highest sequence number committed into the
	// segment in its current lease (0: none yet), set by the lessee: the
	// records of the segment are all below it (for a reader's lag in bytes).
	last atomic.Uint64
	_    [56]byte
}

func leaseWord(gen uint32, owner uint32) uint64 { return uint64(gen)<<32 | uint64(owner) }
func leaseGen(w uint64) uint32                  { return uint32(w >> 32) }
func leaseOwner(w uint64) uint32                { return uint32(w) }

// frame is a record's header at the start of its place in a segment,
// 40 bytes, followed by the payload. The whole frame is written by the
// segment's lessee before the record is published in its index slot.
type frame struct {
	// seq is the record's sequence number.
	seq uint64
	// length is the payload length in bytes.
	length uint32
	// kind is a record type for the layers above (events, alerts).
	kind uint32
	// pid and gen identify the writer.
	pid uint32
	gen uint32
	// time is when the record was written, Unix ns.
	time int64
	// aux is for the layers above (a target pid, flags).
	aux uint64
}

const frameSize = 40

// geometry is the layout derived from a size; it is recomputed on attach and
// compared with the header, so a header is never trusted on its own.
type geometry struct {
	size        uint64
	workerOff   uint64
	workerSlots uint64
	memberOff   uint64
	uniqueOff   uint64
	uniqueKeys  uint64
	indexOff    uint64
	indexSlots  uint64
	segOff      uint64
	segments    uint64
	segSize     uint64
	dataOff     uint64
	dataSize    uint64
	maxRecord   uint64
}

// layoutFor computes the geometry of a zone of the given size: one index
// slot per 512 bytes of zone (rounded down to a power of two), and the rest
// in segments of the largest power of two (16 KiB to 4 MiB) that makes at
// least 16 of them. A record, frame header included, takes at most a
// quarter of a segment, so a lease wastes at most a quarter at its end.
func layoutFor(size uint64, uniqueKeys uint64) geometry {
	g := geometry{size: size, workerOff: headerSize, workerSlots: MaxWorkers}
	g.memberOff = g.workerOff + MaxWorkers*workerSlotSize
	g.uniqueOff = g.memberOff + MaxMembers*memberSlotSize
	g.uniqueKeys = uniqueKeys
	g.indexOff = g.uniqueOff + uniqueKeys*uniqueSlotSize
	n := uint64(1)
	for n*2 <= size/512 {
		n *= 2
	}
	g.indexSlots = n
	g.segOff = g.indexOff + n*indexSlotSize
	rest := size - g.segOff
	g.segSize = minSegSize
	for g.segSize*2 <= rest/16 && g.segSize*2 <= maxSegSize {
		g.segSize *= 2
	}
	g.segments = min(rest/(g.segSize+segSlotSize), maxSegs-1)
	for {
		g.dataOff = (g.segOff + g.segments*segSlotSize + 4095) &^ 4095
		if g.dataOff+g.segments*g.segSize <= size {
			break
		}
		g.segments--
	}
	g.dataSize = g.segments * g.segSize
	g.maxRecord = g.segSize/4 - frameSize
	return g
}

func init() {
	// The overlays must have exactly the sizes the layout documents.
	var h header
	if unsafe.Sizeof(h) > headerSize || unsafe.Offsetof(h.SegSize) != 132 || unsafe.Offsetof(h.tail) != 192 ||
		unsafe.Offsetof(h.dataTail) != 256 || unsafe.Offsetof(h.leaseCur) != 264 || unsafe.Offsetof(h.bells) != 320 ||
		unsafe.Sizeof(bell{}) != 64 || unsafe.Offsetof(h.node) != 512 || unsafe.Sizeof(Node{}) != 128 ||
		unsafe.Offsetof(h.fleet) != 640 || unsafe.Sizeof(FleetArea{}) != 128 ||
		unsafe.Sizeof(WorkerSlot{}) != workerSlotSize || unsafe.Sizeof(MemberSlot{}) != memberSlotSize ||
		unsafe.Sizeof(indexSlot{}) != indexSlotSize || unsafe.Sizeof(segSlot{}) != segSlotSize ||
		unsafe.Sizeof(frame{}) != frameSize || unsafe.Sizeof(uniqueSlot{}) != uniqueSlotSize ||
		layoutFor(MinSize, DefaultUniqueKeys).indexOff != 315392 || maxSegSize>>3 > 1<<locOffBits {
		panic("zone: layout overlays do not match the documented layout")
	}
}
