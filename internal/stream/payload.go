// Package stream takes the payload of a post or a send from a reader:
// into memory when it is small enough for the ring, else streamed into a
// blob file of the zone, so that it is never held whole.
package stream

import (
	"bytes"
	"errors"
	"fmt"
	"io"

	"github.com/ipcbus/caddy-ipcbus/zone"
)

// Payload is a payload taken from a reader: Data when it fits inline, else
// the name of the Blob file that holds it.
type Payload struct {
	Data []byte
	Blob string
	Size int64
}

// Read takes the payload of r: size bytes, or everything up to EOF when
// size is negative. Up to inline bytes are returned in memory; a larger
// payload is streamed to a blob file of z (its quota and space reserved
// first when size is known). A payload over max bytes fails with tooLarge
// (wrapped): before anything is read when size says so, else as soon as
// more than max bytes have come. A failing reader, or one that ends before
// or goes on after size bytes, fails with zone.ErrRead (wrapped); a blob
// over the quota with zone.ErrBlobQuota.
func Read(z *zone.Zone, r io.Reader, size, inline, max int64, tooLarge error) (Payload, error) {
	if size > max {
		return Payload{}, fmt.Errorf("%w: %d bytes, the limit is %d", tooLarge, size, max)
	}
	over := func(err error) error {
		if errors.Is(err, tooLarge) {
			return fmt.Errorf("%w: more than %d bytes, the limit is %d", tooLarge, max, max)
		}
		return err
	}
	if size >= 0 && size <= inline {
		return readInline(r, size)
	}
	if size >= 0 {
		name, n, err := z.PutBlobFrom(r, size)
		if err != nil {
			return Payload{}, err
		}
		return Payload{Blob: name, Size: n}, nil
	}
	lr := &limited{r: r, left: max, err: tooLarge}
	head := make([]byte, inline+1)
	k, err := io.ReadFull(lr, head)
	switch {
	case err == io.EOF || err == io.ErrUnexpectedEOF:
		return Payload{Data: head[:k], Size: int64(k)}, nil
	case err != nil:
		return Payload{}, over(fmt.Errorf("%w: %w", zone.ErrRead, err))
	}
	name, n, err := z.PutBlobFrom(io.MultiReader(bytes.NewReader(head), lr), -1)
	if err != nil {
		return Payload{}, over(err)
	}
	return Payload{Blob: name, Size: n}, nil
}

// readInline reads a payload of size bytes into memory, and makes sure r
// ends there: it reads into one byte more than size, so that a reader
// that says EOF with its last bytes (an HTTP body of a declared length
// does) is read once, and the buffer is the payload's (no byte of its
// own to check the end with, which would escape to the heap).
func readInline(r io.Reader, size int64) (Payload, error) {
	b := make([]byte, size+1)
	n := 0
	var err error
	for int64(n) <= size && err == nil {
		var k int
		k, err = r.Read(b[n:])
		n += k
	}
	switch {
	case int64(n) > size:
		return Payload{}, fmt.Errorf("%w: the payload is longer than the %d bytes announced", zone.ErrRead, size)
	case int64(n) < size:
		if err == io.EOF && n > 0 {
			err = io.ErrUnexpectedEOF // as io.ReadFull says it
		}
		return Payload{}, fmt.Errorf("%w: the payload ended before the %d bytes announced: %w", zone.ErrRead, size, err)
	case err != io.EOF:
		return Payload{}, fmt.Errorf("%w: %w", zone.ErrRead, err)
	}
	return Payload{Data: b[:size:size], Size: size}, nil
}

// limited reads r and fails with err once more than left bytes have come.
type limited struct {
	r    io.Reader
	left int64
	err  error
}

func (l *limited) Read(p []byte) (int, error) {
	if l.left < 0 {
		return 0, l.err
	}
	if int64(len(p)) > l.left+1 {
		p = p[:l.left+1]
	}
	n, err := l.r.Read(p)
	if l.left -= int64(n); l.left < 0 {
		return n, l.err
	}
	return n, err
}
