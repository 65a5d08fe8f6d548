package events

import (
	"errors"
	"fmt"
	"io"
	"time"

	"go.uber.org/zap"

	"github.com/ipcbus/caddy-ipcbus/internal/stream"
	"github.com/ipcbus/caddy-ipcbus/zone"
)

// PostReader is Post with the payload read from r, for payloads that must
// not be held in memory (an HTTP request body): size bytes, or everything
// up to EOF when size is negative. The names are checked before r is
// read, and so is size against max_payload. A payload that fits in the
// ring (64 KiB) is read into memory; a larger one is streamed to a blob
// file through a 64 KiB buffer, the blob quota and the file's space
// reserved first when size is known (1 MiB at a time otherwise). The data
// is delivered as bytes, or with AsJSON as JSON (checked as it streams).
// A unique key is taken once the payload has been read, so that a failed
// read does not spend it.
//
// Errors, besides those of Post: ErrBlobQuota when the blob quota is
// reached (HTTP 507), ErrTooLarge over max_payload, ErrRead when r fails
// or does not hold size bytes (an *http.MaxBytesError of r stays in the
// chain).
func (b *Bus) PostReader(source, event string, r io.Reader, size int64, opts ...PostOption) (uint64, error) {
	seq, err := b.postReader(source, event, r, size, opts)
	if err != nil {
		b.countRefusal(err)
		return 0, fmt.Errorf("failed posting event %q by %q; %w", event, source, err)
	}
	b.st.posted.Add(1)
	b.runHooks()
	return seq, nil
}

func (b *Bus) postReader(source, event string, r io.Reader, size int64, opts []PostOption) (uint64, error) {
	var po postOpts
	for _, o := range opts {
		o(&po)
	}
	if err := b.checkPost(source, event, po); err != nil {
		return 0, err
	}
	if po.json {
		r = &jsonReader{r: r}
	}
	// Not under rmu: a slow body must not hold up Detach. The zone's blob
	// functions stay safe, and fail, once it is closed.
	p, err := stream.Read(b.z, r, size, int64(b.inline), b.o.MaxPayload, ErrTooLarge)
	if err != nil {
		if errors.Is(err, errNotJSON) {
			return 0, invalid("data is not valid JSON")
		}
		return 0, b.blobFailed(err)
	}
	e := encoded{source: source, event: event, payload: p.Data}
	if po.json {
		e.flags |= flagJSON
	}
	if p.Blob != "" {
		b.st.blobsWritten.Add(1)
		e.flags |= flagBlob
		e.payload = []byte(p.Blob)
	}
	b.rmu.RLock()
	defer b.rmu.RUnlock()
	if b.shut {
		if p.Blob != "" {
			b.z.RemoveBlob(p.Blob)
		}
		return 0, ErrClosed
	}
	if po.unique != "" {
		if err := b.claim(&e, po.unique); err != nil {
			if p.Blob != "" {
				b.z.RemoveBlob(p.Blob)
			}
			return 0, err
		}
	}
	return b.write(e)
}

// checkPost checks what a post can be refused for before its payload is read.
func (b *Bus) checkPost(source, event string, po postOpts) error {
	b.rmu.RLock()
	shut := b.shut
	b.rmu.RUnlock()
	if shut {
		return ErrClosed
	}
	if err := validName("source", source); err != nil {
		return err
	}
	if err := validName("event", event); err != nil {
		return err
	}
	if po.unique != "" {
		return validName("unique key", po.unique)
	}
	return nil
}

// blobFailed counts and logs a failure to write a blob, and returns it.
// The quota refusals are logged at the 1st, 2nd, 4th, 8th... time; other
// blob errors each time, with the file's path (which the error itself,
// meant for the poster, does not give).
func (b *Bus) blobFailed(err error) error {
	var be *zone.BlobError
	switch {
	case errors.Is(err, zone.ErrBlobQuota):
		if n := b.st.blobQuota.Add(1); n&(n-1) == 0 {
			b.log.Warn("large event payload refused: blob quota reached", zap.Uint64("refused", n), zap.Error(err))
		}
	case errors.As(err, &be):
		b.st.blobErrors.Add(1)
		b.log.Error("cannot write a large event payload to a blob file", zap.String("path", be.Path), zap.Error(err))
	}
	return err
}

// claim takes the unique key for e: beyond this host first (a fleet
// source's key is taken fleet-wide, see SetClaim), then on the host.
func (b *Bus) claim(e *encoded, key string) error {
	if err := b.claimBeyond(e.source, e.event, key); err != nil {
		return err
	}
	t, ok, err := b.h.ClaimUnique(key, time.Now(), b.o.UniqueTimeout, newToken())
	if err != nil {
		return err
	}
	if !ok {
		return ErrDuplicate
	}
	e.flags |= flagUnique
	e.unique, e.slot, e.token = key, t.Slot, t.Token
	return nil
}
