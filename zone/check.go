package zone

import (
	"errors"
	"fmt"
)

var errDamagedBody = errors.New("damaged zone body")

// checkBody bounds the words of an attached zone that the ring and the
// tables interpret, so that a file with a valid header and a damaged body
// is refused at attach instead of making readers loop or writers fail: the
// tail and the data tail within their ranges, every index slot naming a
// sequence below the tail in a known state and a segment that exists,
// every segment leased to a member that can exist, every worker slot in a
// known state. Live writers may move the tail meanwhile, so slots are
// checked against the tail read after them.
func (z *Zone) checkBody() error {
	h := z.hdr
	if t := h.tail.Load(); t >= maxTail {
		return fmt.Errorf("%w: ring tail %d is beyond %d", errDamagedBody, t, uint64(maxTail))
	}
	if dt := h.dataTail.Load(); dt >= maxTail {
		return fmt.Errorf("%w: data tail %d is beyond %d", errDamagedBody, dt, uint64(maxTail))
	}
	for i := uint64(0); i < z.geo.segments; i++ {
		if o := leaseOwner(z.seg(uint32(i)).lease.Load()); o > MaxMembers {
			return fmt.Errorf("%w: segment %d leased to member %d, there are %d", errDamagedBody, i, o, MaxMembers)
		}
	}
	for i := 0; i < MaxWorkers; i++ {
		if st := z.Worker(i).State.Load(); st > WorkerHung {
			return fmt.Errorf("%w: worker slot %d in state %d", errDamagedBody, i, st)
		}
	}
	r := newRing(z)
	var newest uint64
	for i := uint64(0); i < r.slots; i++ {
		s := r.slot(i)
		w := s.state.Load()
		if w == 0 {
			continue
		}
		_, seg, _ := locSplit(s.loc.Load())
		if st := stateSt(w); st != stCommitted && st != stAbandoned {
			return fmt.Errorf("%w: index slot %d in state %d", errDamagedBody, i, st)
		}
		if (stateSeq(w)-1)&r.mask != i {
			return fmt.Errorf("%w: index slot %d holds sequence %d", errDamagedBody, i, stateSeq(w)-1)
		}
		if stateSt(w) == stCommitted && uint64(seg) >= r.segments {
			return fmt.Errorf("%w: index slot %d names segment %d, there are %d", errDamagedBody, i, seg, r.segments)
		}
		newest = max(newest, stateSeq(w))
	}
	if t := h.tail.Load(); newest > t {
		return fmt.Errorf("%w: index holds sequence %d, beyond the tail %d", errDamagedBody, newest-1, t)
	}
	return nil
}
