package zone

import (
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

// Doorbell is a futex word in shared memory with a count of sleepers, so
// that ringing it costs nothing when nobody sleeps.
type Doorbell struct {
	word    *atomic.Uint32
	waiters *atomic.Uint32
}

// Arm registers the caller as a sleeper and returns the doorbell value to
// pass to Sleep. The caller must check its condition after Arm and before
// Sleep, and call Disarm after.
func (d Doorbell) Arm() uint32 {
	d.waiters.Add(1)
	return d.word.Load()
}

// Sleep waits until the doorbell rings after Arm returned v, or for at most dur.
func (d Doorbell) Sleep(v uint32, dur time.Duration) {
	futexWait(d.word, v, dur)
}

// Disarm unregisters a sleeper.
func (d Doorbell) Disarm() { d.waiters.Add(^uint32(0)) }

// Ring wakes every sleeper, if there is any.
func (d Doorbell) Ring() {
	if d.waiters.Load() == 0 {
		return
	}
	d.word.Add(1)
	futexWake(d.word, 1<<30)
}

// Doorbell is the zone's doorbell i (0 ≤ i < NumBells), rung after the
// commits of records written with that Meta.Bell.
func (z *Zone) Doorbell(i int) Doorbell {
	b := &z.hdr.bells[i%NumBells]
	return Doorbell{word: &b.word, waiters: &b.waiters}
}

// Sleepers is the number of readers counted asleep on the doorbell.
func (d Doorbell) Sleepers() uint32 { return d.waiters.Load() }

// Wake wakes every sleeper, whether or not one is counted.
func (d Doorbell) Wake() {
	d.word.Add(1)
	futexWake(d.word, 1<<30)
}

// ReleaseWaiters takes the sleeps counted in worker slot i off the
// doorbells' waiter counts. Call it once the worker is known dead (its
// liveness lock is gone), under the node lock.
func (z *Zone) ReleaseWaiters(i int) {
	ws := z.Worker(i)
	for b := range ws.Armed {
		if n := ws.Armed[b].Swap(0); n > 0 {
			z.hdr.bells[b].waiters.Add(-n)
		}
	}
}
