package zone

import (
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"sync/atomic"
	"time"
	"unsafe"
)

// uniqueSlot is one run-once key of the events bus, 64 bytes. Keys are
// stored as the first 16 bytes of their SHA-256 (a collision is not a
// practical concern), with the time the key stops being unique and the
// winning post's ticket. Everything but the take is written under the node
// lock.
type uniqueSlot struct {
	hash0   atomic.Uint64
	hash1   atomic.Uint64
	expires atomic.Int64
	// ticket is the winning post's token (odd) until a worker takes the
	// event, then the token with its low bit cleared; 0 while the slot
	// changes hands. Taking is one CAS from the token the event carries,
	// so a ticket of an earlier key in the slot can never take this one.
	ticket atomic.Uint64
	_      [32]byte
}

// ErrUniqueTableFull is returned when every run-once slot near a key's
// hash is in use by an unexpired key.
var ErrUniqueTableFull = errors.New("unique key table full: too many unique keys within unique_timeout")

// uniqueProbe is how many slots an insert looks at.
const uniqueProbe = 64

func (z *Zone) uniqueSlot(i uint32) *uniqueSlot {
	return (*uniqueSlot)(unsafe.Pointer(&z.mem[z.geo.uniqueOff+uint64(i)%z.geo.uniqueKeys*uniqueSlotSize]))
}

// UniqueTicket names a won run-once key: the slot and the token the event
// record carries, so that exactly one worker can take it.
type UniqueTicket struct {
	Slot  uint32
	Token uint64
}

// ClaimUnique decides a run-once key at post time: the first post of key
// within ttl wins (ok is true, and the ticket goes into the event), later
// posts of it until the ttl passes lose (ok is false). It takes the node lock.
func (h *Handle) ClaimUnique(key string, now time.Time, ttl time.Duration, token uint64) (UniqueTicket, bool, error) {
	sum := sha256.Sum256([]byte(key))
	k := [2]uint64{binary.LittleEndian.Uint64(sum[:8]) | 1, binary.LittleEndian.Uint64(sum[8:16])}
	if err := h.LockNode(); err != nil {
		return UniqueTicket{}, false, err
	}
	defer h.UnlockNode()
	nowNs := now.UnixNano()
	free := -1
	for p := uint32(0); p < uniqueProbe; p++ {
		i := uint32(k[0]) + p
		s := h.z.uniqueSlot(i)
		live := s.hash0.Load() != 0 && s.expires.Load() > nowNs
		if live && s.hash0.Load() == k[0] && s.hash1.Load() == k[1] {
			return UniqueTicket{}, false, nil
		}
		if !live && free < 0 {
			free = int(uint64(i) % h.z.geo.uniqueKeys)
		}
	}
	if free < 0 {
		return UniqueTicket{}, false, ErrUniqueTableFull
	}
	s := h.z.uniqueSlot(uint32(free))
	token |= 1
	s.ticket.Store(0) // no stale ticket can take it while it changes
	s.hash0.Store(k[0])
	s.hash1.Store(k[1])
	s.expires.Store(nowNs + int64(ttl))
	s.ticket.Store(token)
	return UniqueTicket{Slot: uint32(free), Token: token}, true, nil
}

// TakeUnique lets one worker take the event of ticket t; it returns true
// for exactly one caller. An event whose key slot was
// reused meanwhile (its ttl long passed) is taken by nobody, and never
// takes the newer key's event.
func (z *Zone) TakeUnique(t UniqueTicket) bool {
	s := z.uniqueSlot(t.Slot)
	return t.Token&1 != 0 && s.ticket.CompareAndSwap(t.Token, t.Token&^1)
}
