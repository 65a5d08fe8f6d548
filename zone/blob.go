package zone

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// Blobs carry payloads too large for the ring: the payload goes to a file
// next to the zone file, and the ring record carries the file's name. Blob
// files are named "<zone file>.blob-<pid>-<n>", get the zone file's mode,
// have their space reserved before they are written, and are removed by
// SweepBlobs once they are older than the blob TTL.

var blobCounter atomic.Uint64

func (z *Zone) blobPrefix() string { return filepath.Base(z.path) + ".blob-" }

// PutBlob writes the concatenation of parts to a new blob file and returns
// its name (a base name in the zone's directory).
func (z *Zone) PutBlob(parts ...[]byte) (string, error) {
	var st unix.Stat_t
	if err := unix.Fstat(int(z.f.Fd()), &st); err != nil {
		return "", fmt.Errorf("blob for zone %s: %w", z.path, err)
	}
	name := fmt.Sprintf("%s%d-%d", z.blobPrefix(), os.Getpid(), blobCounter.Add(1))
	path := filepath.Join(filepath.Dir(z.path), name)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL|unix.O_CLOEXEC, os.FileMode(st.Mode&0o777))
	if err != nil {
		return "", fmt.Errorf("creating blob %s: %w", path, err)
	}
	defer f.Close()
	var n int64
	for _, p := range parts {
		n += int64(len(p))
	}
	if n > 0 {
		if err := reserve(f, path, n); err != nil {
			os.Remove(path)
			return "", err
		}
	}
	for _, p := range parts {
		if _, err := f.Write(p); err != nil {
			os.Remove(path)
			return "", fmt.Errorf("writing blob %s: %w", path, err)
		}
	}
	return name, nil
}

// ReadBlob reads the blob named name, refusing names that are not blobs of
// this zone and files larger than max bytes.
func (z *Zone) ReadBlob(name string, max int64) ([]byte, error) {
	if !strings.HasPrefix(name, z.blobPrefix()) || strings.ContainsAny(name, "/\x00") {
		return nil, fmt.Errorf("%q is not a blob of zone %s", name, z.path)
	}
	path := filepath.Join(filepath.Dir(z.path), name)
	// Another process named it: no symlink, no FIFO that would block.
	f, err := os.OpenFile(path, os.O_RDONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("reading blob: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("reading blob: %w", err)
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("blob %s is not a regular file", path)
	}
	if fi.Size() > max {
		return nil, fmt.Errorf("blob %s is %d bytes, more than the limit of %d", path, fi.Size(), max)
	}
	b := make([]byte, fi.Size())
	if _, err := io.ReadFull(f, b); err != nil {
		return nil, fmt.Errorf("reading blob %s: %w", path, err)
	}
	return b, nil
}

// RemoveBlob removes a blob written by PutBlob that will not be used.
func (z *Zone) RemoveBlob(name string) {
	if strings.HasPrefix(name, z.blobPrefix()) && !strings.ContainsAny(name, "/\x00") {
		os.Remove(filepath.Join(filepath.Dir(z.path), name))
	}
}

// SweepBlobs removes this zone's blob files last changed more than ttl ago
// and returns how many it removed.
func (z *Zone) SweepBlobs(ttl time.Duration, now time.Time) int {
	dir := filepath.Dir(z.path)
	ents, err := os.ReadDir(dir)
	if err != nil {
		return 0
	}
	n := 0
	for _, e := range ents {
		if !strings.HasPrefix(e.Name(), z.blobPrefix()) {
			continue
		}
		if fi, err := e.Info(); err == nil && now.Sub(fi.ModTime()) > ttl {
			if os.Remove(filepath.Join(dir, e.Name())) == nil {
				n++
			}
		}
	}
	return n
}
