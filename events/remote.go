package events

import (
	"errors"
	"fmt"
	"time"

	"github.com/ipcbus/caddy-ipcbus/zone"
)

// ErrUnavailable is returned (wrapped) by a unique post whose run-once key
// must be taken beyond this host (a fleet source) while that is not
// possible: the post is refused rather than risk running twice (HTTP 503).
var ErrUnavailable = errors.New("run-once keys unavailable")

// ClaimFunc takes a run-once key beyond this host before the bus takes it
// on the host. It returns nil to go on (also for a source it does not
// cover), an error wrapping ErrDuplicate when another post holds the key,
// or one wrapping ErrUnavailable when it cannot tell.
type ClaimFunc func(source, event, key string) error

// SetClaim installs (or with nil removes) the function every unique post
// of this bus calls first. The fleet bridge uses it for fleet-wide run-once
// events.
func (b *Bus) SetClaim(f ClaimFunc) {
	if f == nil {
		b.claimer.Store(nil)
		return
	}
	b.claimer.Store(&f)
}

func (b *Bus) claimBeyond(source, event, key string) error {
	f := b.claimer.Load()
	if f == nil {
		return nil
	}
	return (*f)(source, event, key)
}

// PostRemote posts an event that was posted on another host of a fleet,
// with where it comes from: every worker of this host handles it, except a
// run-once event (unique not ""), which ran on its own host and is here
// only shown to pollers and followers. data is the payload as posted there.
func (b *Bus) PostRemote(source, event string, data []byte, isJSON bool, unique string, r Remote) (uint64, error) {
	seq, err := b.postRemote(source, event, data, isJSON, unique, r)
	if err != nil {
		b.countRefusal(err)
		return 0, fmt.Errorf("failed posting remote event %q by %q from node %q; %w", event, source, r.Node, err)
	}
	b.st.posted.Add(1)
	b.runHooks()
	return seq, nil
}

func (b *Bus) postRemote(source, event string, data []byte, isJSON bool, unique string, r Remote) (uint64, error) {
	b.rmu.RLock()
	defer b.rmu.RUnlock()
	if b.shut {
		return 0, ErrClosed
	}
	for _, f := range [][2]string{{"source", source}, {"event", event}} {
		if err := validName(f[0], f[1]); err != nil {
			return 0, err
		}
	}
	if unique != "" {
		if err := validName("unique key", unique); err != nil {
			return 0, err
		}
	}
	if r.Node == "" || len(r.Node) > MaxNodeLen {
		return 0, invalid("node id %q must be 1 to %d bytes", r.Node, MaxNodeLen)
	}
	if int64(len(data)) > b.o.MaxPayload {
		return 0, fmt.Errorf("%w: %d bytes, the limit is %d", ErrTooLarge, len(data), b.o.MaxPayload)
	}
	e := encoded{flags: flagRemote, source: source, event: event, unique: unique, remote: r, payload: data}
	if isJSON {
		e.flags |= flagJSON
	}
	if unique != "" {
		e.flags |= flagUnique
	}
	if err := b.spill(&e); err != nil {
		return 0, err
	}
	return b.write(e)
}

// Origin is where a host's events stand on this host: the zone they come
// from and the sequence, on that zone's ring, of the last one posted here.
type Origin struct {
	Zone int64
	Seq  uint64
}

// RemoteScan is what the ring holds of the remote events posted here.
type RemoteScan struct {
	// LastStreamSeq is the highest stream sequence of a remote event of
	// the stream epoch asked for, 0 if none.
	LastStreamSeq uint64
	// Origins has, by node, the last remote event of that node in ring
	// order.
	Origins map[string]Origin
}

// ScanRemote reads the events the ring holds and reports the remote ones
// (see RemoteScan). The ring record is what commits a remote event on this
// host: a bridge taking over starts after what this returns, so that an
// event its predecessor posted just before dying is neither lost nor
// posted twice. It waits at most wait for records still being written.
func (b *Bus) ScanRemote(epoch uint64, wait time.Duration) (RemoteScan, error) {
	sc := RemoteScan{Origins: map[string]Origin{}}
	b.rmu.RLock()
	defer b.rmu.RUnlock()
	if b.shut {
		return sc, ErrClosed
	}
	end := b.ring.Tail()
	rd := b.ring.NewReader(0)
	rd.SetFilter(onlyEvents)
	deadline := time.Now().Add(wait)
	for rd.Next() < end {
		rec, st := rd.Read(time.Until(deadline))
		switch st {
		case zone.Got:
			e, err := decode(rec.Data)
			if err != nil || e.flags&flagRemote == 0 {
				continue
			}
			r := &e.remote
			if r.StreamEpoch == epoch {
				sc.LastStreamSeq = max(sc.LastStreamSeq, r.StreamSeq)
			}
			sc.Origins[r.Node] = Origin{Zone: r.OriginZone, Seq: r.OriginSeq}
		case zone.Overrun, zone.Gap:
		default:
			if !time.Now().Before(deadline) {
				return sc, fmt.Errorf("ring records before %d still being written after %v", end, wait)
			}
		}
	}
	return sc, nil
}
