package zone

import (
	"math/bits"
	"sync/atomic"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Futex operations (linux/futex.h), without FUTEX_PRIVATE_FLAG: the word is
// shared between processes.
const (
	futexWakeOp       = 1
	futexWaitBitsetOp = 9
	futexWakeBitsetOp = 10
	futexMatchAny     = 0xffffffff
)

// A sleeper waits with a bitset and a waker wakes only the sleepers whose
// bitset shares a bit with its own. The low 24 bits name targets (a
// sleeper that wants only records for pid p sleeps with TargetBit(p)), the
// high 8 bits are interrupt bits, one per reader of a process (modulo 8),
// so that interrupting one reader does not wake every reader of the node.
const (
	targetBits    = 24
	targetMask    = 1<<targetBits - 1
	interruptBits = 8
)

// TargetBit is the wake-up bit of records addressed to pid (Meta.Wake).
func TargetBit(pid uint32) uint32 { return 1 << (pid % targetBits) }

// futexWaitBitset sleeps while *addr == val, at most d, and is woken only
// by wakers whose bitset shares a bit with mask. It uses the shared (not
// private) futex operations, so it works across processes on a MAP_SHARED
// mapping. Spurious wakeups are allowed; callers re-check their condition.
func futexWaitBitset(addr *atomic.Uint32, val uint32, d time.Duration, mask uint32) {
	// FUTEX_WAIT_BITSET takes an absolute CLOCK_MONOTONIC deadline, the
	// runtime's clock. A day at most: a deadline past the clock's range is
	// EINVAL, which would return at once, every time.
	ts := unix.NsecToTimespec(nanotime() + int64(min(max(d, 0), 24*time.Hour)))
	futexSleep(unsafe.Pointer(addr), uintptr(val), unsafe.Pointer(&ts), uintptr(mask))
}

// futexWakeBitset wakes the sleepers on addr whose bitset shares a bit with mask.
func futexWakeBitset(addr *atomic.Uint32, mask uint32) {
	_, _, _ = unix.Syscall6(unix.SYS_FUTEX, uintptr(unsafe.Pointer(addr)), futexWakeBitsetOp, 1<<30, 0, 0, uintptr(mask))
}

// futexWake wakes up to n sleepers on addr.
func futexWake(addr *atomic.Uint32, n int) {
	_, _, _ = unix.Syscall6(unix.SYS_FUTEX, uintptr(unsafe.Pointer(addr)), futexWakeOp, uintptr(n), 0, 0, 0)
}

// Doorbell is a futex word in the zone with the set of members that have a
// reader asleep on it, so that ringing it costs nothing when nobody sleeps.
// A member's bit is set by its process while one of its readers sleeps, and
// cleared by it after, or by anyone who finds the member dead
// (Zone.ReapMembers): a reader killed asleep never leaves a bell ringing
// forever.
type Doorbell struct{ b *bell }

// Doorbell is the zone's doorbell i (0 ≤ i < NumBells).
func (z *Zone) Doorbell(i int) Doorbell { return Doorbell{&z.hdr.bells[i%NumBells]} }

// Sleepers is the number of members with a reader asleep on the doorbell.
func (d Doorbell) Sleepers() int {
	n := 0
	for k := range d.b.sleepers {
		n += bits.OnesCount64(d.b.sleepers[k].Load())
	}
	return n
}

// asleep reports whether any member sleeps on the doorbell.
func (b *bell) asleep() bool {
	s := &b.sleepers
	return s[0].Load()|s[1].Load()|s[2].Load()|s[3].Load() != 0
}

// ring wakes the sleepers whose bitset shares a bit with mask, if anyone
// sleeps on the bell.
func (b *bell) ring(mask uint32) {
	if b.asleep() {
		b.word.Add(1)
		futexWakeBitset(&b.word, mask)
	}
}

// Wake wakes every sleeper, whether or not one is counted.
func (d Doorbell) Wake() {
	d.b.word.Add(1)
	futexWake(&d.b.word, 1<<30)
}

// arm marks this member asleep on bell b (the first of its readers sets the
// bit) and returns the futex value to sleep on. The caller checks its
// condition after arm and before sleeping, and calls disarm after: a commit
// after the check bumps the word, so the sleep returns at once.
func (r *Ring) arm(b int) uint32 {
	r.sleepMu.Lock()
	if r.asleep[b] == 0 {
		r.hdr.bells[b].sleepers[r.self/64].Or(1 << (r.self % 64))
	}
	r.asleep[b]++
	r.sleepMu.Unlock()
	return r.hdr.bells[b].word.Load()
}

func (r *Ring) disarm(b int) {
	r.sleepMu.Lock()
	r.asleep[b]--
	if r.asleep[b] == 0 {
		r.hdr.bells[b].sleepers[r.self/64].And(^uint64(1 << (r.self % 64)))
	}
	r.sleepMu.Unlock()
}
