package zone

import (
	"crypto/rand"
	"encoding/hex"
	"path/filepath"
	"strings"
)

// Blob files are named "<zone>.blob-<32 hex digits>" (16 bytes from
// crypto/rand) in the zone's private directory. A name is this zone's only
// if it is exactly that: the prefix, then 32 lowercase hex digits, then
// nothing. That makes the pattern unambiguous among zones sharing the
// directory: a zone file always ends in ".zone", which is not hex, and two
// zones' blob names of equal length have equal prefixes, so a blob of zone
// "x.blob-<hex>" or a zone file "x.zone.blob-1.zone" can never pass for a
// blob of zone "x" (whose sweep would delete it).

// blobIDLen is the number of hex digits after the prefix.
const blobIDLen = 32

// usageSuffix names the zone's blob usage file, "<zone>.blob-usage": the
// lock and the byte count of the quota. It is not a blob name either.
const usageSuffix = ".blob-usage"

func (z *Zone) blobPrefix() string { return z.name + ".blob-" }

// isBlobName reports whether name is one of this zone's blob names.
func (z *Zone) isBlobName(name string) bool {
	id, ok := strings.CutPrefix(name, z.blobPrefix())
	if !ok || len(id) != blobIDLen {
		return false
	}
	for i := 0; i < len(id); i++ {
		if c := id[i]; (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}

// randRead fills blob ids; tests replace it.
var randRead = rand.Read

// newBlobName is a fresh random blob name.
func (z *Zone) newBlobName() string {
	var b [blobIDLen / 2]byte
	_, _ = randRead(b[:]) // never fails (crypto/rand panics rather)
	return z.blobPrefix() + hex.EncodeToString(b[:])
}

// blobPath is the path of the blob named name.
func (z *Zone) blobPath(name string) string { return filepath.Join(filepath.Dir(z.path), name) }
