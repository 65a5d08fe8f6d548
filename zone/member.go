package zone

import (
	"errors"
	"fmt"
	"math/bits"
	"os"
	"strconv"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// A member is one process's read-write mapping of the zone (one Zone). It
// holds a slot of the member table by an OFD lock on the slot's first byte,
// taken on its own open file description, so the kernel releases it the
// moment the process dies. Segment leases and sleeping readers are
// recorded under the member's index: whatever a dead member held is found
// by its missing lock and taken back, never waited for.

// ErrNoMemberSlot is returned by Open when every member slot is held.
var ErrNoMemberSlot = errors.New("no free member slot: too many processes attached to the zone")

// member returns member slot i.
func (z *Zone) member(i int) *MemberSlot {
	return (*MemberSlot)(unsafe.Pointer(&z.mem[z.geo.memberOff+uint64(i)*memberSlotSize]))
}

func (z *Zone) memberLockOffset(i int) int64 {
	return int64(z.geo.memberOff) + int64(i)*memberSlotSize
}

// join takes a free member slot and clears what a dead predecessor in it
// left: its sleeper bits and its segment leases.
func (z *Zone) join() error {
	f, err := os.OpenFile("/proc/self/fd/"+strconv.Itoa(int(z.f.Fd())), os.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		f, err = os.OpenFile(z.path, os.O_RDWR|unix.O_CLOEXEC, 0)
	}
	if err != nil {
		return fmt.Errorf("opening a member handle on zone file %s: %w", z.path, err)
	}
	for i := 0; i < MaxMembers; i++ {
		if lockRange(f, unix.F_WRLCK, z.memberLockOffset(i), false) != nil {
			continue
		}
		z.mf, z.self = f, i
		m := z.member(i)
		m.PID.Store(uint32(os.Getpid()))
		m.JoinedAt.Store(time.Now().UnixNano())
		m.Leases.Store(0)
		z.clearMember(i)
		return nil
	}
	f.Close()
	return fmt.Errorf("zone file %s: %w (%d)", z.path, ErrNoMemberSlot, MaxMembers)
}

// clearMember takes back what member i holds: its bits on every doorbell
// and the segments it leased. Call it only when member i is dead, or is
// this process's own and has nothing in flight.
func (z *Zone) clearMember(i int) {
	bit := uint64(1) << (i % 64)
	for b := range z.hdr.bells {
		w := &z.hdr.bells[b].sleepers[i/64]
		if w.Load()&bit != 0 {
			w.And(^bit)
		}
	}
	for s := uint64(0); s < z.geo.segments; s++ {
		e := z.seg(uint32(s))
		w := e.lease.Load()
		if leaseOwner(w) == uint32(i)+1 {
			e.lease.CompareAndSwap(w, leaseWord(leaseGen(w), 0))
		}
	}
}

// memberAlive reports whether member i's lock is held by a live process.
// It asks the kernel through the zone's own description, which holds no
// member lock. An error counts as alive: nothing is taken from a member
// that might still write.
func (z *Zone) memberAlive(i int) bool {
	held, err := lockHeld(z.f, z.memberLockOffset(i))
	return held || err != nil
}

// ReapMembers takes back, from every dead member, its bits on the doorbells
// (a reader killed asleep would otherwise make every commit pay a wake-up
// call) and its segment leases. It probes only members that have a bit
// set, so it costs one fcntl per sleeping member. It returns the number of
// dead members it found.
func (z *Zone) ReapMembers() int {
	if z.mf == nil {
		return 0
	}
	var seen [MaxMembers / 64]uint64
	for b := range z.hdr.bells {
		for k := range seen {
			seen[k] |= z.hdr.bells[b].sleepers[k].Load()
		}
	}
	seen[z.self/64] &^= 1 << (z.self % 64)
	n := 0
	for k, w := range seen {
		for w != 0 {
			i := k*64 + bits.TrailingZeros64(w)
			w &= w - 1
			// Taking member i's own lock proves it dead and keeps a new
			// process from joining slot i (and leasing, and sleeping) until
			// the slot is cleared: a probe then a clear would let a joiner in
			// between lose its live lease to the clear.
			if lockRange(z.mf, unix.F_WRLCK, z.memberLockOffset(i), false) == nil {
				z.clearMember(i)
				_ = lockRange(z.mf, unix.F_UNLCK, z.memberLockOffset(i), false)
				n++
			}
		}
	}
	return n
}

// Members is the number of member slots held by live processes.
func (z *Zone) Members() int {
	n := 0
	for i := 0; i < MaxMembers; i++ {
		if i == z.self && z.mf != nil {
			n++
			continue
		}
		if held, err := lockHeld(z.f, z.memberLockOffset(i)); err == nil && held {
			n++
		}
	}
	return n
}
