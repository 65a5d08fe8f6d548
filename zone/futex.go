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
	futexWaitOp = 0
	futexWakeOp = 1
)

// futexWait sleeps while *addr == val, at most d (forever when d < 0). It
// uses the shared (not private) futex operations, so it works across
// processes on a MAP_SHARED mapping. Spurious wakeups are allowed; callers
// re-check their condition.
func futexWait(addr *atomic.Uint32, val uint32, d time.Duration) {
	var tsp unsafe.Pointer
	var ts unix.Timespec
	if d >= 0 {
		ts = unix.NsecToTimespec(int64(d))
		tsp = unsafe.Pointer(&ts)
	}
	_, _, _ = unix.Syscall6(unix.SYS_FUTEX, uintptr(unsafe.Pointer(addr)), futexWaitOp, uintptr(val), uintptr(tsp), 0, 0)
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

// ring wakes every sleeper, if there is any.
func (b *bell) ring() {
	if b.asleep() {
		b.word.Add(1)
		futexWake(&b.word, 1<<30)
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
