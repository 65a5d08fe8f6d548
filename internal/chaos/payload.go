package chaos

import (
	"encoding/binary"
	"fmt"
	"math/bits"
)

// The payload of every chaos record verifies itself, without trusting the
// ring: a fixed header, then a body whose bytes are a function of the
// record's identity (writer, incarnation, counter) and of their offset.
//
//	offset  size  field
//	0       4     magic (Magic)
//	4       4     writer id
//	8       4     incarnation (one per writer process started)
//	12      8     counter (one per write attempt of that incarnation)
//	20      4     body length
//	24      8     hash of the body (bodyHash)
//	32      …     body
//
// A stale copy of another record's bytes cannot pass: its header names
// another identity (caught by the ring metadata cross-check or the order
// check), and its body bytes differ from this identity's stream at almost
// every 8-byte word.

// Magic starts every chaos payload.
const Magic = 0x53414843 // "CHAS", little-endian

// HeaderSize is the size of the payload header, and so the smallest payload.
const HeaderSize = 32

// ID names one record of the chaos run.
type ID struct {
	Writer  uint32 `json:"writer"`
	Inc     uint32 `json:"inc"`
	Counter uint64 `json:"counter"`
}

// seed mixes an identity into the first state of its body stream.
func (id ID) seed() uint64 {
	return mix64(uint64(id.Writer)<<32|uint64(id.Inc)) ^ mix64(id.Counter^0x6a09e667f3bcc909)
}

// mix64 is the splitmix64 finalizer.
func mix64(x uint64) uint64 {
	x ^= x >> 30
	x *= 0xbf58476d1ce4e5b9
	x ^= x >> 27
	x *= 0x94d049bb133111eb
	return x ^ x>>31
}

// word is the body's i-th 8-byte word for a stream seeded with s.
func word(s uint64, i int) uint64 { return mix64(s + uint64(i)*0x9e3779b97f4a7c15) }

// hasher is a 64-bit hash over 8-byte words (four independent lanes, so
// that it runs near memory speed), with a splitmix finish. It is the
// bench's own check, independent of the ring's.
type hasher struct{ a, b, c, d uint64 }

const hashPrime = 0x100000001b3 // FNV-1a's 64-bit prime

func newHasher() hasher {
	return hasher{0xcbf29ce484222325, 0x84222325cbf29ce4, 0x9e3779b97f4a7c15, 0xc2b2ae3d27d4eb4f}
}

func (h *hasher) add(i int, w uint64) {
	switch i & 3 {
	case 0:
		h.a = bits.RotateLeft64((h.a^w)*hashPrime, 31)
	case 1:
		h.b = bits.RotateLeft64((h.b^w)*hashPrime, 29)
	case 2:
		h.c = bits.RotateLeft64((h.c^w)*hashPrime, 27)
	default:
		h.d = bits.RotateLeft64((h.d^w)*hashPrime, 25)
	}
}

func (h *hasher) sum(n int) uint64 {
	return mix64(h.a ^ mix64(h.b^mix64(h.c^mix64(h.d^uint64(n)))))
}

// tailWord reads the last, partial word of b (fewer than 8 bytes).
func tailWord(b []byte) uint64 {
	var t [8]byte
	copy(t[:], b)
	return binary.LittleEndian.Uint64(t[:])
}

// Fill writes the payload of id into p (len(p) ≥ HeaderSize).
func Fill(p []byte, id ID) {
	body := p[HeaderSize:]
	s, h := id.seed(), newHasher()
	i := 0
	for ; 8*i+8 <= len(body); i++ {
		w := word(s, i)
		binary.LittleEndian.PutUint64(body[8*i:], w)
		h.add(i, w)
	}
	if r := len(body) - 8*i; r > 0 {
		var t [8]byte
		binary.LittleEndian.PutUint64(t[:], word(s, i))
		copy(body[8*i:], t[:r])
		h.add(i, tailWord(body[8*i:]))
	}
	binary.LittleEndian.PutUint32(p[0:], Magic)
	binary.LittleEndian.PutUint32(p[4:], id.Writer)
	binary.LittleEndian.PutUint32(p[8:], id.Inc)
	binary.LittleEndian.PutUint64(p[12:], id.Counter)
	binary.LittleEndian.PutUint32(p[20:], uint32(len(body)))
	binary.LittleEndian.PutUint64(p[24:], h.sum(len(body)))
}

// Damage describes what is wrong with a payload.
type Damage struct {
	// What is a short description; empty when the payload is intact.
	What string `json:"what"`
	// BadBytes counts body bytes that differ from the identity's stream,
	// and FirstBad is the offset in the payload of the first of them (-1
	// when none).
	BadBytes int `json:"bad_bytes,omitempty"`
	FirstBad int `json:"first_bad"`
}

// Check verifies every byte of payload p and returns its identity (as the
// header claims it) and any damage. A damaged header stops the check.
func Check(p []byte) (ID, Damage) {
	d := Damage{FirstBad: -1}
	if len(p) < HeaderSize {
		d.What = fmt.Sprintf("short payload: %d bytes", len(p))
		return ID{}, d
	}
	if m := binary.LittleEndian.Uint32(p); m != Magic {
		d.What = fmt.Sprintf("bad magic %#x", m)
		return ID{}, d
	}
	id := ID{Writer: binary.LittleEndian.Uint32(p[4:]), Inc: binary.LittleEndian.Uint32(p[8:]), Counter: binary.LittleEndian.Uint64(p[12:])}
	body := p[HeaderSize:]
	if n := binary.LittleEndian.Uint32(p[20:]); int(n) != len(body) {
		d.What = fmt.Sprintf("body length %d in the header, %d in the record", n, len(body))
		return id, d
	}
	s, h := id.seed(), newHasher()
	i := 0
	note := func(off int, got, want uint64, n int) {
		for k := 0; k < n; k++ {
			if byte(got>>(8*k)) != byte(want>>(8*k)) {
				if d.FirstBad < 0 {
					d.FirstBad = HeaderSize + off + k
				}
				d.BadBytes++
			}
		}
	}
	for ; 8*i+8 <= len(body); i++ {
		got := binary.LittleEndian.Uint64(body[8*i:])
		h.add(i, got)
		if want := word(s, i); got != want {
			note(8*i, got, want, 8)
		}
	}
	if r := len(body) - 8*i; r > 0 {
		got := tailWord(body[8*i:])
		h.add(i, got)
		note(8*i, got, word(s, i), r)
	}
	hashBad := h.sum(len(body)) != binary.LittleEndian.Uint64(p[24:])
	switch {
	case d.BadBytes > 0:
		d.What = fmt.Sprintf("%d body bytes differ from the writer's, the first at payload offset %d", d.BadBytes, d.FirstBad)
	case hashBad:
		d.What = "body hash mismatch (the hash field itself is damaged)"
	}
	return id, d
}
